"""DeBERTa-v2/v3 checkpoints (transformers' DebertaV2Model and its models with heads,
`model_type` "deberta-v2") <-> `models.deberta.Deberta`."""

from __future__ import annotations

import logging
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from minilm_jax.hf import weights as W
from minilm_jax.models.deberta import FAMILY, Deberta, DebertaConfig

logger = logging.getLogger("minilm_jax.hf")

MODEL_TYPES = (FAMILY,)
# Prefix of the base model inside models with heads (DebertaV2ForMaskedLM, ...). Their heads
# (cls., lm_predictions., mask_predictions., pooler., classifier., qa_outputs.) are dropped.
_BASE_PREFIXES = ("deberta.",)
# A non-persistent buffer that older transformers versions saved; never a weight.
_IGNORED_KEYS = ("embeddings.position_ids",)
# Keys under these belong to the encoder; one we do not know means an architecture we do not
# implement, which must not be dropped silently like a head.
_ENCODER_PREFIXES = ("embeddings.", "encoder.")
# DeBERTa-v3 checkpoints carry an absolute position table that position_biased_input=False
# never reads (transformers ignores it on load too).
_UNUSED_POSITIONS = "embeddings.position_embeddings.weight"
_HF_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)


def weight_table(config: DebertaConfig) -> list[W.Entry]:
    table = []

    def linear(hf: str, path: tuple):
        table.append(W.Entry(f"{hf}.weight", (*path, "kernel"), True))
        table.append(W.Entry(f"{hf}.bias", (*path, "bias"), False))

    def layer_norm(hf: str, path: tuple):
        table.append(W.Entry(f"{hf}.weight", (*path, "scale"), False))
        table.append(W.Entry(f"{hf}.bias", (*path, "bias"), False))

    def embedding(hf: str, path: tuple):
        table.append(W.Entry(f"{hf}.weight", (*path, "embedding"), False))

    embedding("embeddings.word_embeddings", ("embeddings", "word_embeddings"))
    if config.position_biased_input:
        embedding("embeddings.position_embeddings", ("embeddings", "position_embeddings"))
    if config.type_vocab_size > 0:
        embedding("embeddings.token_type_embeddings", ("embeddings", "token_type_embeddings"))
    layer_norm("embeddings.LayerNorm", ("embeddings", "layer_norm"))
    separate = config.relative_attention and not config.share_att_key
    for i in range(config.num_layers):
        hf, ours = f"encoder.layer.{i}", ("layers", i)
        linear(f"{hf}.attention.self.query_proj", (*ours, "attention", "query"))
        linear(f"{hf}.attention.self.key_proj", (*ours, "attention", "key"))
        linear(f"{hf}.attention.self.value_proj", (*ours, "attention", "value"))
        if separate and "c2p" in config.pos_att_type:
            linear(f"{hf}.attention.self.pos_key_proj", (*ours, "attention", "pos_key"))
        if separate and "p2c" in config.pos_att_type:
            linear(f"{hf}.attention.self.pos_query_proj", (*ours, "attention", "pos_query"))
        linear(f"{hf}.attention.output.dense", (*ours, "attention", "output"))
        layer_norm(f"{hf}.attention.output.LayerNorm", (*ours, "attention", "layer_norm"))
        linear(f"{hf}.intermediate.dense", (*ours, "feed_forward", "intermediate"))
        linear(f"{hf}.output.dense", (*ours, "feed_forward", "output"))
        layer_norm(f"{hf}.output.LayerNorm", (*ours, "feed_forward", "layer_norm"))
    if config.relative_attention:
        embedding("encoder.rel_embeddings", ("rel_embeddings",))
    if config.norm_rel_ebd == "layer_norm":
        layer_norm("encoder.LayerNorm", ("rel_layer_norm",))
    if config.conv_kernel_size:
        # torch Conv1d weight [out, in/groups, k]; flax kernel [k, in/groups, out]: `.T`.
        linear("encoder.conv.conv", ("conv", "conv"))
        layer_norm("encoder.conv.LayerNorm", ("conv", "layer_norm"))
    return table


def _norm_rel_ebd(value: Any, source: str) -> str:
    """transformers reads `norm_rel_ebd` as '|'-separated names and only acts on
    'layer_norm'."""
    names = {x.strip() for x in str(value).lower().split("|")} - {""}
    if names <= {"none"}:
        return "none"
    if names == {"layer_norm"}:
        return "layer_norm"
    raise ValueError(
        f"{source}: norm_rel_ebd {value!r} is not supported; allowed: 'none', 'layer_norm'"
    )


def _pos_att_type(value: Any, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # "p2c|c2p" in DeBERTa-v2/v3 config files
        value = [x.strip() for x in value.lower().split("|")]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{source}: pos_att_type {value!r} must be a list or a '|'-joined str")
    return tuple(x for x in value if x)


def config_from_hf(d: dict[str, Any], *, source: str, dtype) -> DebertaConfig:
    missing = [k for k in _HF_REQUIRED if k not in d]
    if missing:
        raise ValueError(f"{source}: missing field(s) {missing}")
    get = lambda key, default: default if d.get(key) is None else d[key]  # noqa: E731
    hidden, heads = d["hidden_size"], d["num_attention_heads"]
    if get("embedding_size", hidden) != hidden:
        raise ValueError(
            f"{source}: embedding_size {d['embedding_size']} differs from hidden_size {hidden} "
            f"(an embed_proj layer); not supported: embedding_size must equal hidden_size"
        )
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        if get("attention_head_size", hidden // heads) * heads != hidden:
            raise ValueError(
                f"{source}: attention_head_size {d['attention_head_size']} x num_attention_heads "
                f"{heads} != hidden_size {hidden}; not supported: heads must split hidden_size"
            )
    try:
        return DebertaConfig(
            vocab_size=d["vocab_size"],
            hidden_size=hidden,
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            intermediate_size=d["intermediate_size"],
            max_position_embeddings=d["max_position_embeddings"],
            # transformers' defaults (DebertaV2Config and the getattr defaults of the model).
            type_vocab_size=get("type_vocab_size", 0),
            layer_norm_eps=float(get("layer_norm_eps", 1e-7)),
            pad_token_id=get("pad_token_id", 0),
            relative_attention=get("relative_attention", False),
            max_relative_positions=get("max_relative_positions", -1),
            position_buckets=get("position_buckets", -1),
            share_att_key=get("share_att_key", False),
            pos_att_type=_pos_att_type(d.get("pos_att_type"), source),
            norm_rel_ebd=_norm_rel_ebd(get("norm_rel_ebd", "none"), source),
            position_biased_input=get("position_biased_input", True),
            conv_kernel_size=get("conv_kernel_size", 0),
            conv_groups=get("conv_groups", 1),
            conv_act=get("conv_act", "tanh"),
            hidden_dropout=float(get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(get("attention_probs_dropout_prob", 0.1)),
            hidden_act=get("hidden_act", "gelu"),
            dtype=jnp.dtype(dtype).name,
            initializer_range=float(get("initializer_range", 0.02)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def config_to_hf(config: DebertaConfig) -> dict[str, Any]:
    d = {
        "architectures": ["DebertaV2Model"],
        "model_type": FAMILY,
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
        "relative_attention": config.relative_attention,
        "max_relative_positions": config.max_relative_positions,
        "position_buckets": config.position_buckets,
        "share_att_key": config.share_att_key,
        "pos_att_type": list(config.pos_att_type),
        "norm_rel_ebd": config.norm_rel_ebd,
        "position_biased_input": config.position_biased_input,
        "torch_dtype": "float32",  # the weights are always written in float32
    }
    if config.conv_kernel_size:
        d.update(
            conv_kernel_size=config.conv_kernel_size,
            conv_groups=config.conv_groups,
            conv_act=config.conv_act,
        )
    for key in ("bos_token_id", "eos_token_id"):
        if getattr(config, key) is not None:
            d[key] = getattr(config, key)
    return d


def canonical_key(key: str) -> str:
    """Base-model key: the `deberta.` prefix of models with heads stripped."""
    return W.strip_prefix(key, _BASE_PREFIXES)


def load(config: DebertaConfig, weights: dict[str, np.ndarray], source: str) -> Deberta:
    table = weight_table(config)
    ignored = _IGNORED_KEYS
    if not config.position_biased_input and _UNUSED_POSITIONS in weights:
        logger.info(
            "%s: dropped %s (position_biased_input is false: the model never reads it)",
            source,
            _UNUSED_POSITIONS,
        )
        ignored = (*ignored, _UNUSED_POSITIONS)
    W.check_keys(
        weights,
        table,
        source=source,
        what=f"a {config.family} encoder of {config.num_layers} layers",
        encoder_prefixes=_ENCODER_PREFIXES,
        ignored_keys=ignored,
    )
    return W.fill_model(
        lambda: Deberta(config, rngs=nnx.Rngs(0)),
        table,
        weights,
        source=source,
        param_dtype=config.param_dtype,
    )


def tensors(config: DebertaConfig, model: Deberta) -> dict[str, np.ndarray]:
    return W.model_tensors(model, weight_table(config))
