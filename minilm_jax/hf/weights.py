"""Reading and writing Hugging Face weight files, and filling an NNX model from a key table.

Family modules (`hf/bert.py`, ...) describe their checkpoints as a list of `Entry` rows (HF key
-> path in `nnx.state(model)` + transform); the functions here do the rest for every family:
read safetensors / sharded safetensors / pytorch_model.bin, check that every key is accounted
for, and build the model with `nnx.eval_shape` so nothing is initialised and then overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy so BF16 safetensors load)
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

logger = logging.getLogger("minilm_jax.hf")

SAFETENSORS_FILE = "model.safetensors"
# Looked for in this order; the first present wins (as in transformers).
WEIGHT_FILES = (
    SAFETENSORS_FILE,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class Entry(NamedTuple):
    """One row of a family's weight table.

    `part=(i, n)`: the HF tensor is the concatenation along its axis 0 of `n` equal chunks and
    this entry is chunk `i` (fused projections such as ModernBERT's `Wqkv`); the chunks of one
    key are re-joined in order when saving.
    """

    hf_key: str
    path: tuple[str | int, ...]  # path in nnx.state(model)
    transpose: bool  # torch Linear weight [out, in] <-> flax kernel [in, out]
    part: tuple[int, int] | None = None

    def to_ours(self, array: np.ndarray) -> np.ndarray:
        if self.part is not None:
            i, n = self.part
            size = array.shape[0] // n
            array = array[i * size : (i + 1) * size]
        return array.T if self.transpose else array

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array.T if self.transpose else array)

    def hf_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(reversed(our_shape)) if self.transpose else tuple(our_shape)
        if self.part is not None:
            shape = (shape[0] * self.part[1], *shape[1:])
        return shape


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def read_json(file: str) -> Any:
    """The JSON value in `file`; a file that is not JSON is an error naming it."""
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{file} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{file} is not UTF-8 text, so not a JSON file") from e


def read_json_object(file: str) -> dict[str, Any]:
    value = read_json(file)
    if not isinstance(value, dict):
        raise ValueError(f"{file}: expected a JSON object ({{...}}), got {type(value).__name__}")
    return value


def _damaged(file: str, error: Exception) -> ValueError:
    return ValueError(
        f"{file} cannot be read ({type(error).__name__}: {error}): the file is damaged or "
        f"truncated (an interrupted download or copy?); download or save it again"
    )


def read_safetensors(file: str) -> dict[str, np.ndarray]:
    try:
        with safe_open(file, framework="np") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _damaged(file, e) from e


def read_torch(file: str) -> dict[str, np.ndarray]:
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            f"{file} is a PyTorch checkpoint and reading it needs torch, which is not "
            f"installed: install torch, or re-save the checkpoint as {SAFETENSORS_FILE}"
        ) from e
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... here
        raise _damaged(file, e) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file}: expected a state dict (weight name -> tensor)")
    # NumPy has no torch.bfloat16; float32 holds every bfloat16 value exactly.
    return {
        k: (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy()
        for k, v in state.items()
    }


def _shards(index_file: str) -> list[str]:
    """The shard file names a sharded checkpoint's index maps weights to."""
    weight_map = read_json_object(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(
            f"{index_file}: expected a 'weight_map' object (weight name -> shard file)"
        )
    return sorted(set(weight_map.values()))


def read_weights(path: str) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint folder `path`, by HF key."""
    for name in WEIGHT_FILES:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        read = read_safetensors if "safetensors" in name else read_torch
        if not name.endswith(".index.json"):
            return read(file)
        weights = {}  # sharded checkpoint: the index maps each key to its shard
        for shard in _shards(file):
            shard_file = os.path.join(path, shard)
            if not os.path.isfile(shard_file):
                raise FileNotFoundError(f"{shard_file} not found, but {file} lists it as a shard")
            weights.update(read(shard_file))
        return weights
    raise FileNotFoundError(f"no weights file in {path!r}: looked for {list(WEIGHT_FILES)}")


# Weight files of other frameworks and shards that transformers may have written.
_OTHER_WEIGHT_FILES = ("tf_model.h5", "flax_model.msgpack")
_SHARD_RE = re.compile(r"^(model|pytorch_model|tf_model|flax_model)-\d+-of-\d+\.\w+$")


def weight_files(path: str) -> list[str]:
    """Names of the weight files in the folder `path` (every format, shards and indexes)."""
    names = set(os.listdir(path))
    found = {n for n in names if n in WEIGHT_FILES or n in _OTHER_WEIGHT_FILES}
    found |= {n for n in names if _SHARD_RE.match(n)}
    for index in [n for n in found if n.endswith(".index.json")]:
        try:
            found |= {s for s in _shards(os.path.join(path, index)) if s in names}
        except ValueError:
            pass  # a broken index lists nothing we could trust; it is removed itself
    return sorted(found)


def canonical_weights(
    raw: dict[str, np.ndarray], canonical_key: Callable[[str], str], source: str
) -> dict[str, np.ndarray]:
    """Keys renamed by `canonical_key` (head-model prefixes stripped, old names updated)."""
    weights, origin = {}, {}
    for key, value in raw.items():
        canonical = canonical_key(key)
        if canonical in weights:
            raise ValueError(
                f"{source}: keys {origin[canonical]!r} and {key!r} both give weight {canonical!r}"
            )
        weights[canonical], origin[canonical] = value, key
    return weights


def strip_prefix(key: str, prefixes: Iterable[str]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


# ---------------------------------------------------------------------------------------------
# Tables <-> models
# ---------------------------------------------------------------------------------------------


def check_keys(
    weights: dict[str, np.ndarray],
    table: Sequence[Entry],
    *,
    source: str,
    what: str,
    encoder_prefixes: tuple[str, ...],
    ignored_keys: tuple[str, ...] = (),
) -> None:
    """Every table key must be present; unknown keys under the encoder's prefixes are an
    architecture we do not implement (an error); other unknown keys are heads (logged)."""
    known = {entry.hf_key for entry in table}
    unknown_encoder = sorted(
        k
        for k in weights
        if k not in known and k not in ignored_keys and k.startswith(encoder_prefixes)
    )
    if unknown_encoder:
        raise ValueError(f"{source}: encoder weights that {what} does not have: {unknown_encoder}")
    missing = sorted({entry.hf_key for entry in table if entry.hf_key not in weights})
    if missing:
        raise ValueError(f"{source}: checkpoint lacks weights {missing}")
    dropped = sorted(k for k in weights if k not in known and k not in ignored_keys)
    if dropped:
        logger.info(
            "%s: dropped %d weights that the encoder does not use: %s",
            source,
            len(dropped),
            ", ".join(dropped),
        )


def fill_model(
    build: Callable[[], nnx.Module],
    table: Sequence[Entry],
    weights: dict[str, np.ndarray],
    *,
    source: str,
    param_dtype,
    fresh: dict[tuple, Any] | None = None,
) -> nnx.Module:
    """The model `build()` makes, its parameters taken from `weights` through `table`.

    `build` runs under `nnx.eval_shape` (no initialisation); `fresh` supplies (path -> value)
    for parameters the checkpoint does not have (e.g. a pooler a MLM checkpoint lacks).
    """
    graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
    slots = dict(nnx.to_flat_state(abstract_state))
    filled = dict(fresh or {})
    for entry in table:
        slot, value = slots[entry.path], weights[entry.hf_key]
        if tuple(value.shape) != entry.hf_shape(slot.shape):
            raise ValueError(
                f"{source}: weight {entry.hf_key!r} has shape {tuple(value.shape)} but the "
                f"config needs {entry.hf_shape(slot.shape)}"
            )
        filled[entry.path] = slot.replace(
            jnp.asarray(entry.to_ours(value), dtype=jnp.dtype(param_dtype))
        )
    if set(filled) != set(slots):
        raise AssertionError(  # a bug in a family's table, not a user error
            f"weight table does not cover the model: {sorted(set(slots) ^ set(filled), key=str)}"
        )
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def model_tensors(model: nnx.Module, table: Sequence[Entry]) -> dict[str, np.ndarray]:
    """The HF tensors (float32) of `model` through `table`; fused keys re-joined."""
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    parts: dict[str, list[tuple[int, np.ndarray]]] = {}
    for entry in table:
        value = entry.to_hf(np.asarray(params[entry.path][...], dtype=np.float32))
        index = entry.part[0] if entry.part is not None else 0
        parts.setdefault(entry.hf_key, []).append((index, value))
    return {
        key: chunks[0][1] if len(chunks) == 1 else np.concatenate([c for _, c in sorted(chunks)])
        for key, chunks in parts.items()
    }
