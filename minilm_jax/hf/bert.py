"""BERT, RoBERTa and XLM-R checkpoints (transformers' BertModel / RobertaModel /
XLMRobertaModel and their models with heads) <-> `models.Transformer`."""

from __future__ import annotations

import logging
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from minilm_jax.hf import weights as W
from minilm_jax.models.transformer import Pooler, Transformer, TransformerConfig

logger = logging.getLogger("minilm_jax.hf")

MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
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


def weight_table(config: TransformerConfig, *, with_pooler: bool) -> list[W.Entry]:
    table = []

    def linear(hf: str, path: tuple):
        table.append(W.Entry(f"{hf}.weight", (*path, "kernel"), True))
        table.append(W.Entry(f"{hf}.bias", (*path, "bias"), False))

    def layer_norm(hf: str, path: tuple):
        table.append(W.Entry(f"{hf}.weight", (*path, "scale"), False))
        table.append(W.Entry(f"{hf}.bias", (*path, "bias"), False))

    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        table.append(W.Entry(f"embeddings.{name}.weight", ("embeddings", name, "embedding"), False))
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


def config_from_hf(
    d: dict[str, Any],
    *,
    source: str,
    dtype,
    config_cls: type[TransformerConfig] = TransformerConfig,
    defaults: dict[str, Any] | None = None,
) -> TransformerConfig:
    """`config_cls`/`defaults`: for families with BERT's config.json fields (XLM-R XL)."""
    family = d["model_type"]
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
    get = lambda key, default: default if d.get(key) is None else d[key]  # noqa: E731
    defaults = _HF_DEFAULTS[family] if defaults is None else defaults
    try:
        return config_cls(
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


def config_to_hf(config: TransformerConfig, *, architecture: str | None = None) -> dict[str, Any]:
    d = {
        "architectures": [architecture or _ARCHITECTURES[config.family]],
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


def canonical_key(key: str) -> str:
    """Base-model key: head models' prefix stripped, TF-era LayerNorm gamma/beta renamed."""
    key = W.strip_prefix(key, _BASE_PREFIXES)
    if key.endswith("LayerNorm.gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith("LayerNorm.beta"):
        key = key[: -len("beta")] + "bias"
    return key


def load(config: TransformerConfig, weights: dict[str, np.ndarray], source: str) -> Transformer:
    """A checkpoint without a pooler (RoBERTa MLM checkpoints) gets a freshly initialised one,
    which is logged."""
    has_pooler = any(k.startswith("pooler.") for k in weights)
    table = weight_table(config, with_pooler=has_pooler)
    W.check_keys(
        weights,
        table,
        source=source,
        what=f"a {config.family} encoder of {config.num_layers} layers",
        encoder_prefixes=_ENCODER_PREFIXES,
        ignored_keys=_IGNORED_KEYS,
    )
    fresh = None
    if not has_pooler:
        logger.info("%s: checkpoint has no pooler; the pooler is freshly initialised", source)
        pooler = nnx.state(Pooler(config, rngs=nnx.Rngs(0)))
        fresh = {("pooler", *p): v for p, v in nnx.to_flat_state(pooler)}
    return W.fill_model(
        lambda: Transformer(config, rngs=nnx.Rngs(0), add_pooler=True),
        table,
        weights,
        source=source,
        param_dtype=config.param_dtype,
        fresh=fresh,
    )


def tensors(config: TransformerConfig, model: Transformer) -> dict[str, np.ndarray]:
    """A model without a pooler is written without one; transformers then initialises it."""
    return W.model_tensors(model, weight_table(config, with_pooler=model.pooler is not None))
