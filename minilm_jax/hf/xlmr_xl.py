"""XLM-R XL/XXL checkpoints (transformers' XLMRobertaXLModel and its models with heads, e.g.
facebook/xlm-roberta-xl, an XLMRobertaXLForMaskedLM) <-> `models.xlmr_xl.XLMRobertaXL`.

config.json has BERT's fields (translated by `hf.bert`); the weights differ from XLM-R's in the
pre-LayerNorms: `attention.self_attn_layer_norm` (before q/k/v), the layer's `LayerNorm`
(before the feed-forward) and the encoder's final `encoder.LayerNorm`; the embeddings have none.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flax import nnx

from minilm_jax.hf import bert
from minilm_jax.hf import weights as W
from minilm_jax.models.transformer import Pooler
from minilm_jax.models.xlmr_xl import XLMRobertaXL, XLMRobertaXLConfig

logger = logging.getLogger("minilm_jax.hf")

MODEL_TYPES = ("xlm-roberta-xl",)
_ARCHITECTURE = "XLMRobertaXLModel"
# transformers' XLMRobertaXLConfig defaults, used where a config.json omits a field.
_HF_DEFAULTS = dict(
    type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2
)
# Non-persistent buffers that older transformers versions saved; never weights.
_IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")
_ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.")


def weight_table(config: XLMRobertaXLConfig, *, with_pooler: bool) -> list[W.Entry]:
    table = []

    def linear(hf: str, path: tuple):
        table.append(W.Entry(f"{hf}.weight", (*path, "kernel"), True))
        table.append(W.Entry(f"{hf}.bias", (*path, "bias"), False))

    def layer_norm(hf: str, path: tuple):
        table.append(W.Entry(f"{hf}.weight", (*path, "scale"), False))
        table.append(W.Entry(f"{hf}.bias", (*path, "bias"), False))

    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        table.append(W.Entry(f"embeddings.{name}.weight", ("embeddings", name, "embedding"), False))
    for i in range(config.num_layers):
        hf, ours = f"encoder.layer.{i}", ("layers", i)
        layer_norm(f"{hf}.attention.self_attn_layer_norm", (*ours, "attention", "layer_norm"))
        linear(f"{hf}.attention.self.query", (*ours, "attention", "query"))
        linear(f"{hf}.attention.self.key", (*ours, "attention", "key"))
        linear(f"{hf}.attention.self.value", (*ours, "attention", "value"))
        linear(f"{hf}.attention.output.dense", (*ours, "attention", "output"))
        layer_norm(f"{hf}.LayerNorm", (*ours, "feed_forward", "layer_norm"))
        linear(f"{hf}.intermediate.dense", (*ours, "feed_forward", "intermediate"))
        linear(f"{hf}.output.dense", (*ours, "feed_forward", "output"))
    layer_norm("encoder.LayerNorm", ("final_norm",))
    if with_pooler:
        linear("pooler.dense", ("pooler", "dense"))
    return table


def config_from_hf(d: dict[str, Any], *, source: str, dtype) -> XLMRobertaXLConfig:
    return bert.config_from_hf(
        d, source=source, dtype=dtype, config_cls=XLMRobertaXLConfig, defaults=_HF_DEFAULTS
    )


def config_to_hf(config: XLMRobertaXLConfig) -> dict[str, Any]:
    return bert.config_to_hf(config, architecture=_ARCHITECTURE)


canonical_key = bert.canonical_key  # strips the heads' "roberta." prefix


def load(config: XLMRobertaXLConfig, weights: dict[str, np.ndarray], source: str) -> XLMRobertaXL:
    """A checkpoint without a pooler (the released MLM checkpoints) gets a freshly initialised
    one, which is logged."""
    has_pooler = any(k.startswith("pooler.") for k in weights)
    table = weight_table(config, with_pooler=has_pooler)
    W.check_keys(
        weights,
        table,
        source=source,
        what=f"an {config.family} encoder of {config.num_layers} layers",
        encoder_prefixes=_ENCODER_PREFIXES,
        ignored_keys=_IGNORED_KEYS,
    )
    fresh = None
    if not has_pooler:
        logger.info("%s: checkpoint has no pooler; the pooler is freshly initialised", source)
        pooler = nnx.state(Pooler(config, rngs=nnx.Rngs(0)))
        fresh = {("pooler", *p): v for p, v in nnx.to_flat_state(pooler)}
    return W.fill_model(
        lambda: XLMRobertaXL(config, rngs=nnx.Rngs(0), add_pooler=True),
        table,
        weights,
        source=source,
        param_dtype=config.param_dtype,
        fresh=fresh,
    )


def tensors(config: XLMRobertaXLConfig, model: XLMRobertaXL) -> dict[str, np.ndarray]:
    """A model without a pooler is written without one; transformers then initialises it."""
    return W.model_tensors(model, weight_table(config, with_pooler=model.pooler is not None))
