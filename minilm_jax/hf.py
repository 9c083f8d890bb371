"""Hugging Face checkpoints <-> our configs and weights; tokenizers.

The only module that knows Hugging Face key and config names. Loading builds the model with
`nnx.eval_shape` (no parameter is initialised and then overwritten) and fills it from one
explicit table, `_weight_table`: HF key -> module path + transform. Weights are read with the
safetensors NumPy API; torch is imported only for a `pytorch_model.bin` checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy so BF16 safetensors load)
import numpy as np
import tokenizers
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minilm_jax.models.transformer import FAMILIES, Pooler, Transformer, TransformerConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
# Looked for in this order; the first present wins (as in transformers).
WEIGHT_FILES = (
    SAFETENSORS_FILE,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)

_ARCHITECTURES = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}
# Prefixes of the base model inside models with heads (BertForMaskedLM, XLMRobertaFor...).
_BASE_PREFIXES = ("bert.", "roberta.")
# Non-persistent buffers that older transformers versions saved; never weights.
_IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")
# Keys under these belong to the encoder; one we do not know means an architecture we do not
# implement, which must not be dropped silently like a head.
_ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.")
# Defaults of transformers' config classes, used where a config.json omits a field.
_HF_DEFAULTS = {
    "bert": dict(
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    ),
    "roberta": dict(
        type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=1, bos_token_id=0, eos_token_id=2
    ),
    "xlm-roberta": dict(
        type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=1, bos_token_id=0, eos_token_id=2
    ),
}
_HF_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)


# ---------------------------------------------------------------------------------------------
# The weight table
# ---------------------------------------------------------------------------------------------


class _Entry(NamedTuple):
    hf_key: str
    path: tuple[str | int, ...]  # path in nnx.state(model)
    transpose: bool  # torch Linear weight [out, in] <-> flax kernel [in, out]

    def to_ours(self, array: np.ndarray) -> np.ndarray:
        return array.T if self.transpose else array

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array.T if self.transpose else array)

    def hf_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(our_shape)) if self.transpose else tuple(our_shape)


def _weight_table(config: TransformerConfig, *, with_pooler: bool) -> list[_Entry]:
    table = []

    def linear(hf: str, path: tuple):
        table.append(_Entry(f"{hf}.weight", (*path, "kernel"), True))
        table.append(_Entry(f"{hf}.bias", (*path, "bias"), False))

    def layer_norm(hf: str, path: tuple):
        table.append(_Entry(f"{hf}.weight", (*path, "scale"), False))
        table.append(_Entry(f"{hf}.bias", (*path, "bias"), False))

    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        table.append(_Entry(f"embeddings.{name}.weight", ("embeddings", name, "embedding"), False))
    layer_norm("embeddings.LayerNorm", ("embeddings", "layer_norm"))
    for i in range(config.num_layers):
        hf, ours = f"encoder.layer.{i}", ("layers", i)
        linear(f"{hf}.attention.self.query", (*ours, "attention", "query"))
        linear(f"{hf}.attention.self.key", (*ours, "attention", "key"))
        linear(f"{hf}.attention.self.value", (*ours, "attention", "value"))
        linear(f"{hf}.attention.output.dense", (*ours, "attention", "output"))
        layer_norm(f"{hf}.attention.output.LayerNorm", (*ours, "attention", "layer_norm"))
        linear(f"{hf}.intermediate.dense", (*ours, "feed_forward", "intermediate"))
        linear(f"{hf}.output.dense", (*ours, "feed_forward", "output"))
        layer_norm(f"{hf}.output.LayerNorm", (*ours, "feed_forward", "layer_norm"))
    if with_pooler:
        linear("pooler.dense", ("pooler", "dense"))
    return table


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def _check_folder(path) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {path!r} does not exist (or is not a folder)")
    return path


def config_from_hf_dict(
    d: dict[str, Any], *, source: str = "config.json", dtype=jnp.float32
) -> TransformerConfig:
    """Our config from a Hugging Face config dict; `source` names it in error messages."""
    family = d.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{source}: model_type {family!r} is not supported; allowed: {FAMILIES}")
    missing = [k for k in _HF_REQUIRED if k not in d]
    if missing:
        raise ValueError(f"{source}: missing field(s) {missing}")
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{source}: position_embedding_type {d['position_embedding_type']!r} is "
            f"not supported; allowed: ['absolute']"
        )
    if d.get("is_decoder") or d.get("add_cross_attention"):
        raise ValueError(
            f"{source}: is_decoder/add_cross_attention models are not supported; "
            f"only bidirectional encoders are"
        )
    get = lambda key, default: default if d.get(key) is None else d[key]
    defaults = _HF_DEFAULTS[family]
    try:
        return TransformerConfig(
            family=family,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            intermediate_size=d["intermediate_size"],
            max_position_embeddings=d["max_position_embeddings"],
            type_vocab_size=get("type_vocab_size", defaults["type_vocab_size"]),
            layer_norm_eps=float(get("layer_norm_eps", defaults["layer_norm_eps"])),
            pad_token_id=get("pad_token_id", defaults["pad_token_id"]),
            hidden_dropout=float(get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(get("attention_probs_dropout_prob", 0.1)),
            hidden_act=get("hidden_act", "gelu"),
            dtype=jnp.dtype(dtype).name,
            initializer_range=float(get("initializer_range", 0.02)),
            bos_token_id=d.get("bos_token_id", defaults["bos_token_id"]),
            eos_token_id=d.get("eos_token_id", defaults["eos_token_id"]),
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def config_to_hf_dict(config: TransformerConfig) -> dict[str, Any]:
    """The config.json transformers needs to build the matching PyTorch model."""
    d = {
        "architectures": [_ARCHITECTURES[config.family]],
        "model_type": config.family,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": config.hidden_act,
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",  # transformers 4.x reads it
        "is_decoder": False,
        "add_cross_attention": False,
        "classifier_dropout": None,
        "use_cache": True,
        "torch_dtype": "float32",  # the weights are always written in float32
    }
    for key in ("bos_token_id", "eos_token_id"):
        if getattr(config, key) is not None:
            d[key] = getattr(config, key)
    return d


def load_config(path, dtype=jnp.float32) -> TransformerConfig:
    """Our config from `path/config.json` only (cheap: for validation before loading)."""
    path = _check_folder(path)
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{file} not found: a Hugging Face checkpoint folder needs a {CONFIG_FILE}"
        )
    with open(file) as f:
        return config_from_hf_dict(json.load(f), source=file, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
    with safe_open(file, framework="np") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def _read_torch(file: str) -> dict[str, np.ndarray]:
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            f"{file} is a PyTorch checkpoint and reading it needs torch, which is not "
            f"installed: install torch, or re-save the checkpoint as "
            f"{SAFETENSORS_FILE}"
        ) from e
    state = torch.load(file, map_location="cpu", weights_only=True)
    # NumPy has no torch.bfloat16; float32 holds every bfloat16 value exactly.
    return {
        k: (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy()
        for k, v in state.items()
    }


def _read_weights(path: str) -> dict[str, np.ndarray]:
    for name in WEIGHT_FILES:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        read = _read_safetensors if "safetensors" in name else _read_torch
        if not name.endswith(".index.json"):
            return read(file)
        with open(file) as f:  # sharded checkpoint: the index maps each key to its shard
            shards = sorted(set(json.load(f)["weight_map"].values()))
        weights = {}
        for shard in shards:
            weights.update(read(os.path.join(path, shard)))
        return weights
    raise FileNotFoundError(f"no weights file in {path!r}: looked for {list(WEIGHT_FILES)}")


def _canonical_key(key: str) -> str:
    """Base-model key: head models' prefix stripped, TF-era LayerNorm gamma/beta renamed."""
    for prefix in _BASE_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if key.endswith("LayerNorm.gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith("LayerNorm.beta"):
        key = key[: -len("beta")] + "bias"
    return key


def _canonical_weights(raw: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    weights, origin = {}, {}
    for key, value in raw.items():
        canonical = _canonical_key(key)
        if canonical in weights:
            raise ValueError(
                f"{source}: keys {origin[canonical]!r} and {key!r} both give weight {canonical!r}"
            )
        weights[canonical], origin[canonical] = value, key
    return weights


def load_pretrained(path, dtype=jnp.float32) -> tuple[TransformerConfig, Transformer]:
    """Loads a local Hugging Face checkpoint of model_type bert, roberta or xlm-roberta.

    Accepts base models and models with heads (BertForMaskedLM, RobertaForMaskedLM, ...): head
    weights are dropped and named in one log line. A checkpoint without a pooler (RoBERTa MLM
    checkpoints) gets a freshly initialised one, which is logged. Parameters are float32;
    `dtype` is the compute dtype.
    """
    config = load_config(path, dtype=dtype)
    path = os.fspath(path)
    weights = _canonical_weights(_read_weights(path), path)
    has_pooler = any(k.startswith("pooler.") for k in weights)
    table = _weight_table(config, with_pooler=has_pooler)

    known = {entry.hf_key for entry in table}
    unknown_encoder = sorted(
        k
        for k in weights
        if k not in known and k not in _IGNORED_KEYS and k.startswith(_ENCODER_PREFIXES)
    )
    if unknown_encoder:
        raise ValueError(
            f"{path}: encoder weights that a {config.family} encoder of "
            f"{config.num_layers} layers does not have: {unknown_encoder}"
        )
    missing = [entry.hf_key for entry in table if entry.hf_key not in weights]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks weights {missing}")
    dropped = sorted(
        k for k in weights if k not in known and k not in _IGNORED_KEYS and k not in unknown_encoder
    )
    if dropped:
        logger.info(
            "%s: dropped %d weights that the encoder does not use: %s",
            path,
            len(dropped),
            ", ".join(dropped),
        )

    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), add_pooler=True))
    graphdef, abstract_state = nnx.split(abstract)
    slots = dict(nnx.to_flat_state(abstract_state))
    param_dtype = jnp.dtype(config.param_dtype)
    filled = {}
    for entry in table:
        slot, value = slots[entry.path], weights[entry.hf_key]
        if tuple(value.shape) != entry.hf_shape(slot.shape):
            raise ValueError(
                f"{path}: weight {entry.hf_key!r} has shape {tuple(value.shape)} but the "
                f"config needs {entry.hf_shape(slot.shape)}"
            )
        filled[entry.path] = slot.replace(jnp.asarray(entry.to_ours(value), dtype=param_dtype))
    if not has_pooler:
        logger.info("%s: checkpoint has no pooler; the pooler is freshly initialised", path)
        fresh = nnx.state(Pooler(config, rngs=nnx.Rngs(0)))
        filled.update({("pooler", *p): v for p, v in nnx.to_flat_state(fresh)})
    assert set(filled) == set(slots), sorted(set(slots) ^ set(filled), key=str)
    return config, nnx.merge(graphdef, nnx.from_flat_state(filled))


def save_pretrained(config: TransformerConfig, model: Transformer, path) -> None:
    """Writes config.json + model.safetensors that `transformers.AutoModel.from_pretrained(path)`
    loads into the matching PyTorch model (BertModel, RobertaModel, XLMRobertaModel) with the same
    outputs. Weights are written in float32 (exact for float32 and bfloat16 parameters). A model
    without a pooler is written without one; transformers then initialises its pooler."""
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
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors = {}
    for entry in _weight_table(config, with_pooler=model.pooler is not None):
        value = np.asarray(params[entry.path][...], dtype=np.float32)
        tensors[entry.hf_key] = entry.to_hf(value)
    save_file(tensors, os.path.join(path, SAFETENSORS_FILE), metadata={"format": "pt"})
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config_to_hf_dict(config), f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


def _token_text(value, default: str) -> str:
    """tokenizer_config.json stores special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content", default)
    return default if value is None else value


def _wordpiece_tokenizer(path: str) -> tokenizers.Tokenizer:
    """A BERT WordPiece tokenizer from vocab.txt, set up as transformers' BertTokenizer:
    tokenizer_config.json decides lowercasing, accent stripping and Chinese-character splitting."""
    settings = {}
    config_file = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            settings = json.load(f)
    special = {
        name: _token_text(settings.get(f"{name}_token"), default)
        for name, default in (
            ("unk", "[UNK]"),
            ("sep", "[SEP]"),
            ("cls", "[CLS]"),
            ("pad", "[PAD]"),
            ("mask", "[MASK]"),
        )
    }
    tok = tokenizers.Tokenizer(
        models.WordPiece.from_file(os.path.join(path, "vocab.txt"), unk_token=special["unk"])
    )
    tok.add_special_tokens([t for t in special.values() if tok.token_to_id(t) is not None])
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True) is not False,
        strip_accents=settings.get("strip_accents"),  # None: follow lowercasing, as BERT does
        lowercase=settings.get("do_lower_case", True) is not False,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = special["cls"], special["sep"]
    for name in (cls, sep):
        if tok.token_to_id(name) is None:
            raise ValueError(f"{path}/vocab.txt lacks the special token {name!r}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def load_tokenizer(path) -> tokenizers.Tokenizer:
    """The checkpoint's tokenizer: tokenizer.json, else a WordPiece tokenizer from vocab.txt.

    Special tokens ([CLS]/[SEP] or <s>/</s>) are added by `encode`. Padding and truncation
    settings stored in tokenizer.json are switched off: the data pipeline decides lengths."""
    path = _check_folder(path)
    file = os.path.join(path, "tokenizer.json")
    if os.path.isfile(file):
        tok = tokenizers.Tokenizer.from_file(file)
    elif os.path.isfile(os.path.join(path, "vocab.txt")):
        tok = _wordpiece_tokenizer(path)
    else:
        raise FileNotFoundError(
            f"no tokenizer in {path!r}: looked for tokenizer.json and vocab.txt "
            f"(re-save other tokenizers with transformers' "
            f"AutoTokenizer.save_pretrained, which writes tokenizer.json)"
        )
    tok.no_padding()
    tok.no_truncation()
    return tok


def copy_tokenizer_files(src_path, dst_path) -> None:
    """Copies the tokenizer files of `src_path` next to an exported student in `dst_path`."""
    src_path = _check_folder(src_path)
    present = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src_path, n))]
    if "tokenizer.json" not in present and "vocab.txt" not in present:
        raise FileNotFoundError(
            f"no tokenizer in {src_path!r}: looked for tokenizer.json and vocab.txt"
        )
    os.makedirs(dst_path, exist_ok=True)
    for name in present:
        shutil.copyfile(os.path.join(src_path, name), os.path.join(dst_path, name))
