"""Hugging Face checkpoints <-> our configs and weights; tokenizers.

The only package that knows Hugging Face key and config names. One module per family holds
its config translation and its weight table (HF key -> module path + transform):
`hf/bert.py` (BERT, RoBERTa, XLM-R). `FAMILIES` maps each supported `model_type` to its
module; everything else (reading weight files, checking keys, building the model with
`nnx.eval_shape`) is shared (`hf/weights.py`). Weights are read with the safetensors NumPy
API; torch is imported only for a `pytorch_model.bin` checkpoint.

`export_student` writes a distilled student: weights, the teacher's tokenizer and, when the
teacher is a sentence-transformers model, the files that make the student one too
(`hf/sentence_transformers.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from types import ModuleType
from typing import Any

import jax.numpy as jnp
from safetensors.numpy import save_file

from minilm_jax.hf import bert, deberta, modernbert, xlmr_xl
from minilm_jax.hf.sentence_transformers import (
    SentenceEmbeddingConfig,
    read_sentence_transformers,
    sentence_transformers_files,
    write_sentence_transformers,
)
from minilm_jax.hf.tokenizer import (
    TOKENIZER_FILES,
    as_path,
    check_folder,
    copy_tokenizer_files,
    load_tokenizer,
    tokenizer_files,
)
from minilm_jax.hf.weights import (
    SAFETENSORS_FILE,
    WEIGHT_FILES,
    canonical_weights,
    read_json_object,
    read_weights,
    weight_files,
)

CONFIG_FILE = "config.json"

# model_type -> the module that translates it. A family module provides:
#   MODEL_TYPES, config_from_hf(d, source=, dtype=), config_to_hf(config), canonical_key(key),
#   load(config, weights, source) -> model, tensors(config, model) -> {hf_key: array}.
FAMILIES: dict[str, ModuleType] = {model_type: bert for model_type in bert.MODEL_TYPES}
FAMILIES.update({t: m for m in (deberta, modernbert, xlmr_xl) for t in m.MODEL_TYPES})

__all__ = [
    "CONFIG_FILE",
    "FAMILIES",
    "SAFETENSORS_FILE",
    "TOKENIZER_FILES",
    "WEIGHT_FILES",
    "SentenceEmbeddingConfig",
    "config_from_hf_dict",
    "config_to_hf_dict",
    "copy_tokenizer_files",
    "export_student",
    "load_config",
    "load_pretrained",
    "load_tokenizer",
    "read_sentence_transformers",
    "save_pretrained",
]


def _family(model_type: Any, source: str) -> ModuleType:
    if model_type not in FAMILIES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; allowed: {tuple(FAMILIES)}"
        )
    return FAMILIES[model_type]


def config_from_hf_dict(d: dict[str, Any], *, source: str = CONFIG_FILE, dtype=jnp.float32):
    """Our config from a Hugging Face config dict; `source` names it in error messages."""
    return _family(d.get("model_type"), source).config_from_hf(d, source=source, dtype=dtype)


def config_to_hf_dict(config) -> dict[str, Any]:
    """The config.json transformers needs to build the matching PyTorch model."""
    return _family(config.family, "config").config_to_hf(config)


def load_config(path, dtype=jnp.float32):
    """Our config from `path/config.json` only (cheap: for validation before loading)."""
    path = check_folder(path)
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{file} not found: a Hugging Face checkpoint folder needs a {CONFIG_FILE}"
        )
    return config_from_hf_dict(read_json_object(file), source=file, dtype=dtype)


def load_pretrained(path, dtype=jnp.float32):
    """Loads a local Hugging Face checkpoint folder: `(config, model)`.

    Accepts base models and models with heads (BertForMaskedLM, RobertaForMaskedLM, ...): head
    weights are dropped and named in one log line. Parameters are float32; `dtype` is the
    compute dtype. Supported model types: `FAMILIES`.
    """
    config = load_config(path, dtype=dtype)
    path = os.fspath(path)
    family = FAMILIES[config.family]
    weights = canonical_weights(read_weights(path), family.canonical_key, path)
    return config, family.load(config, weights, path)


def _output_folder(path, *, overwrite: bool, caller: str) -> str:
    """`path` as a folder that may be written: missing or empty, or (with `overwrite`) any
    folder. Refusing changes nothing on disk."""
    path = as_path(path, f"{caller}: path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{caller}: {path!r} is a file, not a folder")
    entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    if entries and not overwrite:
        shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
        raise FileExistsError(
            f"{caller}: folder {path!r} is not empty (it holds {shown}); choose a new folder, "
            f"or pass overwrite=True to replace the model in it"
        )
    return path


def _remove_stale_model_files(path: str) -> None:
    """Removes the weights (every format, shards and indexes) and sentence-transformers files of
    a model saved earlier in `path`, so what is written next is the folder's one model. Other
    files (a README, notes, a tokenizer) are kept."""
    if not os.path.isdir(path):
        return
    for name in weight_files(path) + sentence_transformers_files(path):
        target = os.path.join(path, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            os.remove(target)


def save_pretrained(config, model, path, *, overwrite: bool = False) -> None:
    """Writes config.json + model.safetensors that `transformers.AutoModel.from_pretrained(path)`
    loads into the matching PyTorch model with the same outputs. Weights are written in
    float32 (exact for float32 and bfloat16 parameters).

    `path` must be missing or empty: a folder with anything in it (another model, a teacher)
    is refused and left untouched, unless `overwrite=True`, which first removes the weight
    files of any earlier model (pytorch_model.bin, shards and their index...) and its
    sentence-transformers files, so the folder holds one consistent model.
    """
    # Compute dtypes do not change the weights; every other field must describe this model.
    differing = [
        f
        for f, v in config.to_dict().items()
        if f not in ("dtype", "param_dtype") and getattr(model.config, f) != v
    ]
    if differing:
        raise ValueError(
            f"save_pretrained: config differs from the model's in {differing}: "
            f"{[(getattr(config, f), getattr(model.config, f)) for f in differing]}"
        )
    family = _family(config.family, "config")
    path = _output_folder(path, overwrite=overwrite, caller="save_pretrained")
    tensors = family.tensors(config, model)  # before anything on disk changes
    hf_config = config_to_hf_dict(config)
    _remove_stale_model_files(path)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, SAFETENSORS_FILE), metadata={"format": "pt"})
    # config.json last: a folder with one has complete weights beside it.
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
        f.write("\n")


def export_student(config, model, teacher_path, path, *, overwrite: bool = False) -> str:
    """Writes a distilled student to the folder `path` and returns `path`: its weights and
    config (`save_pretrained`), the teacher's tokenizer files and, when the teacher folder is
    a sentence-transformers model, the same embedding pipeline (pooling, normalisation, max
    length, prompts) around the student, with the student's width, so that
    `SentenceTransformer(path)` loads it.

    The teacher's pipeline is checked before anything is written: an unsupported one (see
    `hf/sentence_transformers.py`) is a ValueError and `path` is not touched; so is a
    non-empty `path` unless `overwrite=True` (see `save_pretrained`). The max length is the
    teacher's, capped at the positions the student has.
    """
    teacher_path = check_folder(teacher_path)
    path = as_path(path, "export_student: path")
    if os.path.exists(path) and os.path.samefile(teacher_path, path):
        raise ValueError(f"export_student: {path!r} is the teacher's folder; choose another")
    st_config = read_sentence_transformers(teacher_path)
    tokenizer_files(teacher_path)  # the teacher has a tokenizer to copy
    path = _output_folder(path, overwrite=overwrite, caller="export_student")
    save_pretrained(config, model, path, overwrite=True)  # the folder was checked just above
    for name in TOKENIZER_FILES:  # an earlier model's tokenizer, whether replaced or not
        if os.path.isfile(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    copy_tokenizer_files(teacher_path, path)
    if st_config is not None:
        positions = getattr(config, "max_sequence_length", None)
        if positions is not None and (
            st_config.max_seq_length is None or st_config.max_seq_length > positions
        ):
            st_config = dataclasses.replace(st_config, max_seq_length=positions)
        write_sentence_transformers(path, st_config, embedding_dimension=config.hidden_size)
    return path
