"""Hugging Face checkpoints <-> our configs and weights; tokenizers.

The only package that knows Hugging Face key and config names. One module per family holds
its config translation and its weight table (HF key -> module path + transform):
`hf/bert.py` (BERT, RoBERTa, XLM-R). `FAMILIES` maps each supported `model_type` to its
module; everything else (reading weight files, checking keys, building the model with
`nnx.eval_shape`) is shared (`hf/weights.py`). Weights are read with the safetensors NumPy
API; torch is imported only for a `pytorch_model.bin` checkpoint.
"""

from __future__ import annotations

import json
import os
from types import ModuleType
from typing import Any

import jax.numpy as jnp
from safetensors.numpy import save_file

from minilm_jax.hf import bert, deberta, modernbert, xlmr_xl
from minilm_jax.hf.tokenizer import (
    TOKENIZER_FILES,
    check_folder,
    copy_tokenizer_files,
    load_tokenizer,
)
from minilm_jax.hf.weights import SAFETENSORS_FILE, WEIGHT_FILES, canonical_weights, read_weights

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
    "config_from_hf_dict",
    "config_to_hf_dict",
    "copy_tokenizer_files",
    "load_config",
    "load_pretrained",
    "load_tokenizer",
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
    with open(file) as f:
        return config_from_hf_dict(json.load(f), source=file, dtype=dtype)


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


def save_pretrained(config, model, path) -> None:
    """Writes config.json + model.safetensors that `transformers.AutoModel.from_pretrained(path)`
    loads into the matching PyTorch model with the same outputs. Weights are written in
    float32 (exact for float32 and bfloat16 parameters)."""
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
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = family.tensors(config, model)
    save_file(tensors, os.path.join(path, SAFETENSORS_FILE), metadata={"format": "pt"})
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config_to_hf_dict(config), f, indent=2, sort_keys=True)
        f.write("\n")
