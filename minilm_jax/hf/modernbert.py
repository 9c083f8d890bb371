"""ModernBERT checkpoints (transformers' ModernBertModel and its models with heads, e.g.
ModernBertForMaskedLM with the base model under "model.") <-> `models.modernbert.ModernBert`.

config.json comes in two spellings, both read: transformers 5 writes `layer_types` (one
"full_attention"/"sliding_attention" per layer) and `rope_parameters` (per layer type:
`rope_type`, `rope_theta`); released checkpoints (and transformers 4) write
`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`. We write both, so
either version reads our students. Only every-n-th-layer global patterns and the default
(unscaled) rotary embedding are supported; anything else is refused with the field named.

Weights: the fused `attn.Wqkv` [3D, D] is split into our query/key/value projections (rows
q, then k, then v, each with the heads side by side) and the fused `mlp.Wi` [2F, D] into
`feed_forward.intermediate` (first half, the GELU input) and `feed_forward.gate` (second
half), through `Entry.part`; both are re-joined on export.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from minilm_jax.hf import weights as W
from minilm_jax.models.modernbert import FAMILY, ModernBert, ModernBertConfig

MODEL_TYPES = (FAMILY,)
_ARCHITECTURE = "ModernBertModel"
_BASE_PREFIXES = ("model.",)  # the base model inside ModernBertFor*
_ENCODER_PREFIXES = ("embeddings.", "layers.", "final_norm.")
_HF_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
# transformers' ModernBertConfig defaults, used where a config.json omits a field.
_HF_DEFAULTS = dict(
    hidden_activation="gelu",
    initializer_range=0.02,
    initializer_cutoff_factor=2.0,
    norm_eps=1e-5,
    norm_bias=False,
    pad_token_id=50283,
    eos_token_id=50282,
    bos_token_id=50281,
    cls_token_id=50281,
    sep_token_id=50282,
    attention_bias=False,
    attention_dropout=0.0,
    local_attention=128,
    embedding_dropout=0.0,
    mlp_bias=False,
    mlp_dropout=0.0,
    global_attn_every_n_layers=3,
    global_rope_theta=160_000.0,
    local_rope_theta=10_000.0,
)
_LAYER_TYPES = ("full_attention", "sliding_attention")


def weight_table(config: ModernBertConfig) -> list[W.Entry]:
    table = []

    def linear(hf: str, path: tuple, bias: bool, part=None):
        table.append(W.Entry(f"{hf}.weight", (*path, "kernel"), True, part))
        if bias:
            table.append(W.Entry(f"{hf}.bias", (*path, "bias"), False, part))

    def layer_norm(hf: str, path: tuple):
        table.append(W.Entry(f"{hf}.weight", (*path, "scale"), False))
        if config.norm_bias:
            table.append(W.Entry(f"{hf}.bias", (*path, "bias"), False))

    table.append(
        W.Entry(
            "embeddings.tok_embeddings.weight",
            ("embeddings", "word_embeddings", "embedding"),
            False,
        )
    )
    layer_norm("embeddings.norm", ("embeddings", "layer_norm"))
    for i in range(config.num_layers):
        hf, attn, ffn = f"layers.{i}", ("layers", i, "attention"), ("layers", i, "feed_forward")
        if i > 0:  # HF's first layer has no attention norm (nn.Identity)
            layer_norm(f"{hf}.attn_norm", (*attn, "layer_norm"))
        for j, name in enumerate(("query", "key", "value")):
            linear(f"{hf}.attn.Wqkv", (*attn, name), config.attention_bias, part=(j, 3))
        linear(f"{hf}.attn.Wo", (*attn, "output"), config.attention_bias)
        layer_norm(f"{hf}.mlp_norm", (*ffn, "layer_norm"))
        linear(f"{hf}.mlp.Wi", (*ffn, "intermediate"), config.mlp_bias, part=(0, 2))
        linear(f"{hf}.mlp.Wi", (*ffn, "gate"), config.mlp_bias, part=(1, 2))
        linear(f"{hf}.mlp.Wo", (*ffn, "output"), config.mlp_bias)
    layer_norm("final_norm", ("final_norm",))
    return table


def _global_every(d: dict[str, Any], num_layers: int, source: str) -> int:
    """The n of 'layer i is global when i % n == 0', from `layer_types` or the legacy field."""
    layer_types = d.get("layer_types")
    if layer_types is None:
        return d.get("global_attn_every_n_layers") or _HF_DEFAULTS["global_attn_every_n_layers"]
    bad = sorted({t for t in layer_types if t not in _LAYER_TYPES})
    if bad or len(layer_types) != num_layers:
        raise ValueError(
            f"{source}: layer_types must list one of {list(_LAYER_TYPES)} per layer "
            f"({num_layers}); got {layer_types}"
        )
    # Several n can give the same list (2 layers: any n >= 2); the legacy field, when it agrees,
    # decides, so that our exports read back with the n they were written with.
    stated = d.get("global_attn_every_n_layers")
    first = (
        [stated] if isinstance(stated, int) and not isinstance(stated, bool) and stated > 0 else []
    )
    for n in first + list(range(1, num_layers + 1)):
        pattern = [
            "full_attention" if i % n == 0 else "sliding_attention" for i in range(num_layers)
        ]
        if list(layer_types) == pattern:
            return n
    raise ValueError(
        f"{source}: layer_types {layer_types} is not supported; allowed: global attention every "
        f"n-th layer from layer 0 (the global_attn_every_n_layers pattern)"
    )


def _rope_thetas(d: dict[str, Any], source: str) -> tuple[float, float]:
    """(global, local) rotary bases from `rope_parameters` or the legacy fields."""
    if d.get("rope_scaling"):
        raise ValueError(
            f"{source}: rope_scaling {d['rope_scaling']!r} is not supported; only the default "
            f"(unscaled) rotary embedding is"
        )
    thetas = {
        "full_attention": d.get("global_rope_theta") or _HF_DEFAULTS["global_rope_theta"],
        "sliding_attention": d.get("local_rope_theta") or _HF_DEFAULTS["local_rope_theta"],
    }
    for kind, params in (d.get("rope_parameters") or {}).items():
        if kind not in _LAYER_TYPES:
            raise ValueError(
                f"{source}: rope_parameters has key {kind!r}; allowed: {list(_LAYER_TYPES)}"
            )
        params = params or {}
        if params.get("rope_type", "default") != "default":
            raise ValueError(
                f"{source}: rope_parameters[{kind!r}].rope_type={params['rope_type']!r} is not "
                f"supported; allowed: ['default']"
            )
        thetas[kind] = params.get("rope_theta", thetas[kind])
    return float(thetas["full_attention"]), float(thetas["sliding_attention"])


def config_from_hf(d: dict[str, Any], *, source: str, dtype) -> ModernBertConfig:
    missing = [k for k in _HF_REQUIRED if k not in d]
    if missing:
        raise ValueError(f"{source}: missing field(s) {missing}")
    if d.get("is_decoder") or d.get("is_causal"):
        raise ValueError(
            f"{source}: is_decoder/is_causal models are not supported; only bidirectional "
            f"encoders are"
        )
    # A field given as null means None (the special-token ids); a missing one, HF's default.
    get = lambda key: d[key] if key in d else _HF_DEFAULTS[key]  # noqa: E731
    global_theta, local_theta = _rope_thetas(d, source)
    mlp_dropout, embedding_dropout = float(get("mlp_dropout")), float(get("embedding_dropout"))
    try:
        return ModernBertConfig(
            family=FAMILY,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            intermediate_size=d["intermediate_size"],
            max_position_embeddings=d["max_position_embeddings"],
            pad_token_id=get("pad_token_id"),
            local_attention=get("local_attention"),
            global_attn_every_n_layers=_global_every(d, d["num_hidden_layers"], source),
            global_rope_theta=global_theta,
            local_rope_theta=local_theta,
            norm_eps=float(get("norm_eps")),
            norm_bias=get("norm_bias"),
            attention_bias=get("attention_bias"),
            mlp_bias=get("mlp_bias"),
            hidden_dropout=mlp_dropout,
            attention_dropout=float(get("attention_dropout")),
            embedding_dropout=None if embedding_dropout == mlp_dropout else embedding_dropout,
            hidden_act=get("hidden_activation"),
            dtype=jnp.dtype(dtype).name,
            initializer_range=float(get("initializer_range")),
            initializer_cutoff_factor=float(get("initializer_cutoff_factor") or 3.0),
            bos_token_id=get("bos_token_id"),
            eos_token_id=get("eos_token_id"),
            cls_token_id=get("cls_token_id"),
            sep_token_id=get("sep_token_id"),
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def config_to_hf(config: ModernBertConfig) -> dict[str, Any]:
    return {
        "architectures": [_ARCHITECTURE],
        "model_type": FAMILY,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_activation": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "initializer_cutoff_factor": config.initializer_cutoff_factor,
        "norm_eps": config.norm_eps,
        "norm_bias": config.norm_bias,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "cls_token_id": config.cls_token_id,
        "sep_token_id": config.sep_token_id,
        "attention_bias": config.attention_bias,
        "attention_dropout": config.attention_dropout,
        "mlp_bias": config.mlp_bias,
        "mlp_dropout": config.hidden_dropout,
        "embedding_dropout": config.effective_embedding_dropout,
        "local_attention": config.local_attention,
        # transformers 5 reads these two ...
        "layer_types": list(config.layer_types),
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": config.global_rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": config.local_rope_theta},
        },
        # ... transformers 4 these three.
        "global_attn_every_n_layers": config.global_attn_every_n_layers,
        "global_rope_theta": config.global_rope_theta,
        "local_rope_theta": config.local_rope_theta,
        "torch_dtype": "float32",  # the weights are always written in float32
    }


def canonical_key(key: str) -> str:
    """Base-model key: the heads' "model." prefix stripped."""
    return W.strip_prefix(key, _BASE_PREFIXES)


def load(config: ModernBertConfig, weights: dict[str, np.ndarray], source: str) -> ModernBert:
    table = weight_table(config)
    W.check_keys(
        weights,
        table,
        source=source,
        what=f"a {config.family} encoder of {config.num_layers} layers",
        encoder_prefixes=_ENCODER_PREFIXES,
    )
    return W.fill_model(
        lambda: ModernBert(config, rngs=nnx.Rngs(0)),
        table,
        weights,
        source=source,
        param_dtype=config.param_dtype,
    )


def tensors(config: ModernBertConfig, model: ModernBert) -> dict[str, np.ndarray]:
    return W.model_tensors(model, weight_table(config))
