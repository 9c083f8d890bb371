"""The DeBERTa-v2/v3 encoder (Hugging Face `model_type` "deberta-v2") as a Flax NNX module.

DeBERTa differs from BERT in its attention: besides the content-to-content score q_i·k_j, each
head adds a content-to-position term (c2p: the query against a projected embedding of the
relative position i - j) and a position-to-content term (p2c: the key against a projected
embedding of j - i), and scales all of them by 1/sqrt(head_dim * (1 + number of position
terms)). Relative positions are log-bucketed beyond `position_buckets // 2` and clipped to
the table. The table of relative-position embeddings is shared by all layers (optionally
LayerNormed); each layer projects it with its own key/query projections (`share_att_key`) or
with separate `pos_key`/`pos_query` projections. DeBERTa-v3 has no absolute position
embeddings and no token types; DeBERTa-v2-xlarge adds a convolution after the first layer.
Everything else is BERT: GELU feed-forward, post-LayerNorm, no pooler in the base model. The
embedding output is multiplied by the attention mask (padded positions become zero).

The relation tap (`output.qkv`) is the content query/key/value projection outputs
(`query_proj`, `key_proj`, `value_proj` in transformers, bias included), all heads side by
side. The relative-position terms are not in the relation: they are additive attention
scores, exposed by `Deberta.relative_position_bias(layer, q, k)` so that

    attention_probs(q, k, attention_mask(key_mask), num_heads=H,
                    scale=config.attention_scale, bias=model.relative_position_bias(i, q, k))

is exactly layer i's attention (tests/deberta_test.py checks it against transformers).

Numerics as in `models.attention`: float32 scores (the position terms included) and softmax,
padded keys removed by selection. Padded query rows attend to the real keys (transformers
masks them out entirely, which makes them uniform); real positions are unaffected either way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minilm_jax.models.attention import attention, split_heads
from minilm_jax.models.attention import attention_mask as attention_mask_of
from minilm_jax.models.remat import layer_caller

# Shared private helpers of the BERT-family module: the same init, dtypes, LayerNorm and
# dropout layout for every family.
from minilm_jax.models.transformer import (
    TransformerOutput,
    _dropout,
    _layer_norm,
    _linear,
    _normal_init,
    prepare_inputs,
)

FAMILY = "deberta-v2"
FAMILIES = (FAMILY,)
POS_ATT_TYPES = ("c2p", "p2c")
NORM_REL_EBD = ("none", "layer_norm")
# Only HF's "gelu" (exact erf GELU): what every DeBERTa-v2/v3 checkpoint uses.
ACTIVATIONS = ("gelu",)
CONV_ACTIVATIONS = ("tanh", "gelu")  # transformers' ACT2FN names of the conv layer
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DebertaConfig:
    """Architecture of one DeBERTa-v2/v3 encoder. The shared field names are those of
    `TransformerConfig`; the DeBERTa-specific ones keep transformers' names. Defaults are
    DeBERTa-v3's (microsoft/deberta-v3-base); `minilm_jax.hf` fills absent config.json fields
    with transformers' own defaults instead."""

    family: str = FAMILY
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512  # absolute table rows; default relative distance
    type_vocab_size: int = 0  # 0: no token-type embeddings (v3); token_type_ids are ignored
    layer_norm_eps: float = 1e-7
    pad_token_id: int = 0
    relative_attention: bool = True
    max_relative_positions: int = -1  # < 1: max_position_embeddings
    position_buckets: int = 256  # <= 0: no log buckets (v2-base style)
    share_att_key: bool = True  # position terms use the content query/key projections
    pos_att_type: tuple[str, ...] = ("p2c", "c2p")  # subset of POS_ATT_TYPES
    norm_rel_ebd: str = "layer_norm"  # LayerNorm on the relative-position table
    position_biased_input: bool = False  # add absolute position embeddings (v2: True)
    conv_kernel_size: int = 0  # > 0: convolution after the first layer (v2-xlarge: 3)
    conv_groups: int = 1
    conv_act: str = "tanh"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    hidden_act: str = "gelu"
    dtype: str = "float32"  # compute dtype of activations ("float32" | "bfloat16")
    param_dtype: str = "float32"  # storage dtype of parameters
    initializer_range: float = 0.02
    bos_token_id: int | None = None  # only carried to config.json
    eos_token_id: int | None = None  # only carried to config.json

    def __post_init__(self):
        # JSON gives lists; keep a hashable tuple so configs compare and hash.
        if isinstance(self.pos_att_type, (list, tuple)):
            object.__setattr__(self, "pos_att_type", tuple(self.pos_att_type))
        else:
            raise ValueError(
                f"DebertaConfig.pos_att_type={self.pos_att_type!r}; must be a sequence of "
                f"names from {POS_ATT_TYPES}"
            )
        if self.family != FAMILY:
            raise ValueError(f"DebertaConfig.family={self.family!r}; allowed: {FAMILIES}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("type_vocab_size", self.type_vocab_size, minimum=0)
        _check_int("max_relative_positions", self.max_relative_positions)
        _check_int("position_buckets", self.position_buckets)
        _check_int("conv_kernel_size", self.conv_kernel_size, minimum=0)
        _check_int("conv_groups", self.conv_groups, minimum=1)
        for name in ("relative_attention", "share_att_key", "position_biased_input"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DebertaConfig.{name}={getattr(self, name)!r}; must be a bool")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"DebertaConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        _check_int("pad_token_id", self.pad_token_id, minimum=0)
        if not self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"DebertaConfig.pad_token_id={self.pad_token_id}; must be in "
                f"[0, vocab_size={self.vocab_size})"
            )
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"DebertaConfig.{name}={value}; must be None or in "
                    f"[0, vocab_size={self.vocab_size})"
                )
        bad = [t for t in self.pos_att_type if t not in POS_ATT_TYPES]
        if bad or len(set(self.pos_att_type)) != len(self.pos_att_type):
            raise ValueError(
                f"DebertaConfig.pos_att_type={self.pos_att_type!r}; must be distinct names "
                f"from {POS_ATT_TYPES}"
            )
        if self.relative_attention and not self.pos_att_type:
            # transformers builds the relative table but never uses it: dead parameters.
            raise ValueError(
                "DebertaConfig.relative_attention=True with an empty pos_att_type uses no "
                f"relative-position term; set pos_att_type to names from {POS_ATT_TYPES} "
                "or relative_attention=False"
            )
        if self.norm_rel_ebd not in NORM_REL_EBD:
            raise ValueError(
                f"DebertaConfig.norm_rel_ebd={self.norm_rel_ebd!r}; allowed: {NORM_REL_EBD}"
            )
        if self.norm_rel_ebd == "layer_norm" and not self.relative_attention:
            raise ValueError(
                "DebertaConfig.norm_rel_ebd='layer_norm' needs relative_attention=True "
                "(otherwise the LayerNorm is never used)"
            )
        if self.relative_attention and self.position_buckets > 0:
            mid = self.position_buckets // 2
            if mid < 1 or self.max_relative_distance - 1 <= mid:
                raise ValueError(
                    f"DebertaConfig.position_buckets={self.position_buckets} needs "
                    f"position_buckets >= 2 and max_relative_positions "
                    f"(here {self.max_relative_distance}) > position_buckets // 2 + 1 "
                    f"for the log buckets to be defined"
                )
        if self.conv_kernel_size:
            if self.conv_kernel_size % 2 == 0:
                # transformers pads (k - 1) // 2 on both sides: an even kernel shortens the
                # sequence and the model fails.
                raise ValueError(
                    f"DebertaConfig.conv_kernel_size={self.conv_kernel_size}; must be 0 (no "
                    f"conv layer) or odd"
                )
            if self.hidden_size % self.conv_groups:
                raise ValueError(
                    f"DebertaConfig.conv_groups={self.conv_groups} does not divide "
                    f"hidden_size={self.hidden_size}"
                )
            if self.conv_act not in CONV_ACTIVATIONS:
                raise ValueError(
                    f"DebertaConfig.conv_act={self.conv_act!r}; allowed: {CONV_ACTIVATIONS}"
                )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"DebertaConfig.{name}={getattr(self, name)}; must be in [0, 1)")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"DebertaConfig.layer_norm_eps={self.layer_norm_eps}; must be > 0")
        if not self.initializer_range > 0:
            raise ValueError(
                f"DebertaConfig.initializer_range={self.initializer_range}; must be > 0"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"DebertaConfig.hidden_act={self.hidden_act!r}; allowed: {ACTIVATIONS}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"DebertaConfig.{name}={getattr(self, name)!r}; allowed: {DTYPES}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_offset(self) -> int:
        """First position id of a real token: 0 (positions are 0..T-1, as BERT's)."""
        return 0

    @property
    def max_sequence_length(self) -> int:
        """The longest input the model was trained for (512 for DeBERTa-v3). A hard limit only
        with absolute positions (`position_biased_input`); relative positions saturate."""
        return self.max_position_embeddings

    @property
    def max_relative_distance(self) -> int:
        """transformers' effective `max_relative_positions` (< 1 means the absolute table)."""
        if self.max_relative_positions < 1:
            return self.max_position_embeddings
        return self.max_relative_positions

    @property
    def relative_span(self) -> int:
        """`att_span` of transformers: the relative table has 2 * relative_span rows."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_distance

    @property
    def attention_scale(self) -> float:
        """Factor of every attention score term: 1/sqrt(head_dim * (1 + #position terms)).
        transformers counts `pos_att_type` even when relative_attention is off; so do we."""
        return float(self.head_dim * (1 + len(self.pos_att_type))) ** -0.5

    def replace(self, **changes) -> DebertaConfig:
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise ValueError(f"unknown DebertaConfig field(s) {unknown}; allowed: {names}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DebertaConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown DebertaConfig field(s) {unknown}; allowed: {names}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in d
        ]
        if required:
            raise ValueError(f"DebertaConfig dict lacks required field(s) {required}")
        return cls(**d)


def _check_int(name: str, value, minimum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"DebertaConfig.{name}={value!r}; must be an int")
    if minimum is not None and value < minimum:
        raise ValueError(f"DebertaConfig.{name}={value!r}; must be an int >= {minimum}")


def relative_positions(config: DebertaConfig, length: int) -> np.ndarray:
    """Bucketed relative positions [T, T] (query i, key j: i - j), as transformers'
    `build_relative_position`: identity for |i - j| < position_buckets // 2, log-spaced
    beyond, reaching ±(position_buckets - 1) at max_relative_positions - 1. Static NumPy: it
    depends only on the length (float64 as the original DeBERTa code; transformers' float32
    gives the same integers, checked in the tests)."""
    pos = np.arange(length)
    rel = pos[:, None] - pos[None, :]
    if config.position_buckets <= 0:
        return rel.astype(np.int32)
    mid = config.position_buckets // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float64)
    log_pos = (
        np.ceil(
            np.log(abs_pos / mid) / np.log((config.max_relative_distance - 1) / mid) * (mid - 1)
        )
        + mid
    )
    return np.where(abs_pos <= mid, rel, log_pos * np.sign(rel)).astype(np.int32)


class Embeddings(nnx.Module):
    """Word (+ absolute position) (+ token-type) embeddings, LayerNorm, mask, dropout
    (HF DebertaV2Embeddings)."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        std, pdt = config.initializer_range, jnp.dtype(config.param_dtype)

        def embed(rows: int, zero_row: int | None = None) -> nnx.Embed:
            # Lookups stay in param_dtype so the sum is exact before the LayerNorm casts.
            return nnx.Embed(
                rows,
                config.hidden_size,
                dtype=pdt,
                param_dtype=pdt,
                embedding_init=_normal_init(std, zero_row),
                rngs=rngs,
            )

        self.word_embeddings = embed(config.vocab_size, config.pad_token_id)
        self.position_embeddings = (
            embed(config.max_position_embeddings) if config.position_biased_input else None
        )
        self.token_type_embeddings = (
            embed(config.type_vocab_size) if config.type_vocab_size > 0 else None
        )
        self.layer_norm = _layer_norm(config, rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, input_ids, token_type_ids, key_mask, *, deterministic: bool, rngs):
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(jnp.arange(input_ids.shape[1]))[None]
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.layer_norm(x)
        x = x * key_mask[..., None].astype(x.dtype)  # as transformers: padding becomes zero
        return _dropout(self.dropout, x, deterministic=deterministic, rngs=rngs)


class SelfAttention(nnx.Module):
    """Disentangled multi-head self-attention + output projection + residual + post-LayerNorm
    (HF DisentangledSelfAttention + DebertaV2SelfOutput)."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.config = config
        self.query = _linear(config, d, d, rngs)
        self.key = _linear(config, d, d, rngs)
        self.value = _linear(config, d, d, rngs)
        separate = config.relative_attention and not config.share_att_key
        self.pos_key = (
            _linear(config, d, d, rngs) if separate and "c2p" in config.pos_att_type else None
        )
        self.pos_query = (
            _linear(config, d, d, rngs) if separate and "p2c" in config.pos_att_type else None
        )
        self.output = _linear(config, d, d, rngs)
        self.layer_norm = _layer_norm(config, rngs)
        self.attention_dropout = nnx.Dropout(config.attention_dropout)
        self.pos_dropout = nnx.Dropout(config.hidden_dropout)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def position_bias(self, q, k, rel_embeddings, rel_pos) -> jax.Array:
        """c2p + p2c score terms, float32 [B, H, T, T], already scaled.

        `q`, `k`: content projections [B, T, D]; `rel_embeddings`: the relative table
        [2S, D] (after its LayerNorm and dropout); `rel_pos`: `relative_positions` [T, T].
        """
        cfg = self.config
        h, span = cfg.num_heads, cfg.relative_span
        scale = jnp.float32(cfg.attention_scale)
        bias = jnp.zeros((q.shape[0], h, q.shape[1], k.shape[1]), jnp.float32)
        if "c2p" in cfg.pos_att_type:
            pos_k = (self.key if cfg.share_att_key else self.pos_key)(rel_embeddings)
            # c2p[b, h, i, j] = q_i · pos_k[clip(rel(i, j) + S)]
            scores = jnp.einsum(
                "bqhd,rhd->bhqr",
                split_heads(q, h),
                pos_k.reshape(2 * span, h, -1),
                preferred_element_type=jnp.float32,
            )
            index = np.clip(rel_pos + span, 0, 2 * span - 1)
            bias = bias + _gather_last(scores, index) * scale
        if "p2c" in cfg.pos_att_type:
            pos_q = (self.query if cfg.share_att_key else self.pos_query)(rel_embeddings)
            # p2c[b, h, i, j] = k_j · pos_q[clip(-rel(j, i) + S)]
            scores = jnp.einsum(
                "bkhd,rhd->bhkr",
                split_heads(k, h),
                pos_q.reshape(2 * span, h, -1),
                preferred_element_type=jnp.float32,
            )
            index = np.clip(-rel_pos + span, 0, 2 * span - 1)  # [key j, query i]
            bias = bias + jnp.swapaxes(_gather_last(scores, index), -1, -2) * scale
        return bias

    def __call__(self, x, mask, rel_embeddings, rel_pos, *, deterministic: bool, rngs):
        cfg = self.config
        q, k, v = self.query(x), self.key(x), self.value(x)
        bias = None
        if cfg.relative_attention:
            rel = _dropout(self.pos_dropout, rel_embeddings, deterministic=deterministic, rngs=rngs)
            bias = self.position_bias(q, k, rel, rel_pos)
        context = attention(
            q,
            k,
            v,
            mask,
            num_heads=cfg.num_heads,
            scale=cfg.attention_scale,
            bias=bias,
            dropout=None
            if deterministic
            else lambda p: _dropout(self.attention_dropout, p, deterministic=False, rngs=rngs),
        )
        out = _dropout(self.dropout, self.output(context), deterministic=deterministic, rngs=rngs)
        return self.layer_norm(out + x), (q, k, v)


def _gather_last(scores: jax.Array, index: np.ndarray) -> jax.Array:
    """scores [B, H, T, R], index [T, T'] -> [B, H, T, T'] with out[..., t, u] =
    scores[..., t, index[t, u]] (torch.gather along the last axis)."""
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), (*scores.shape[:2], *index.shape))
    return jnp.take_along_axis(scores, index, axis=-1)


class FeedForward(nnx.Module):
    """GELU feed-forward + residual + post-LayerNorm (HF DebertaV2Intermediate + Output)."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.intermediate = _linear(config, config.hidden_size, config.intermediate_size, rngs)
        self.output = _linear(config, config.intermediate_size, config.hidden_size, rngs)
        self.layer_norm = _layer_norm(config, rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, x, *, deterministic: bool, rngs):
        h = jax.nn.gelu(self.intermediate(x), approximate=False)
        out = _dropout(self.dropout, self.output(h), deterministic=deterministic, rngs=rngs)
        return self.layer_norm(out + x)


class DebertaLayer(nnx.Module):
    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(config, rngs=rngs)
        self.feed_forward = FeedForward(config, rngs=rngs)

    def __call__(self, x, mask, rel_embeddings, rel_pos, *, deterministic: bool, rngs):
        x, qkv = self.attention(
            x, mask, rel_embeddings, rel_pos, deterministic=deterministic, rngs=rngs
        )
        return self.feed_forward(x, deterministic=deterministic, rngs=rngs), qkv


class ConvLayer(nnx.Module):
    """DeBERTa-v2-xlarge's convolution over the embedding output, added to the first layer's
    output: LayerNorm(layer_0 + act(conv(embeddings))) * mask (HF ConvLayer)."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        k, pad = config.conv_kernel_size, (config.conv_kernel_size - 1) // 2
        self.activation = config.conv_act
        self.conv = nnx.Conv(
            config.hidden_size,
            config.hidden_size,
            kernel_size=(k,),
            padding=[(pad, pad)],
            feature_group_count=config.conv_groups,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            kernel_init=_normal_init(config.initializer_range),
            bias_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )
        self.layer_norm = _layer_norm(config, rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, embeddings, residual, key_mask, *, deterministic: bool, rngs):
        real = key_mask[..., None]
        out = jnp.where(real, self.conv(embeddings), 0)
        out = _dropout(self.dropout, out, deterministic=deterministic, rngs=rngs)
        out = jnp.tanh(out) if self.activation == "tanh" else jax.nn.gelu(out, approximate=False)
        y = self.layer_norm(residual + out)
        return y * real.astype(y.dtype)


class Deberta(nnx.Module):
    """The DeBERTa-v2/v3 encoder (HF DebertaV2Model). Holds only parameters: dropout keys come
    in through `rngs` at call time. Paths: `embeddings.*`, `layers.<i>.attention.{query,key,
    value,pos_key,pos_query,output,layer_norm}`, `layers.<i>.feed_forward.*`, and the shared
    `rel_embeddings`, `rel_layer_norm` and `conv` (v2-xlarge)."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([DebertaLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        pdt = jnp.dtype(config.param_dtype)
        self.rel_embeddings = (
            nnx.Embed(
                2 * config.relative_span,
                config.hidden_size,
                dtype=pdt,
                param_dtype=pdt,
                embedding_init=_normal_init(config.initializer_range),
                rngs=rngs,
            )
            if config.relative_attention
            else None
        )
        self.rel_layer_norm = (
            _layer_norm(config, rngs) if config.norm_rel_ebd == "layer_norm" else None
        )
        self.conv = ConvLayer(config, rngs=rngs) if config.conv_kernel_size else None

    def relative_table(self) -> jax.Array | None:
        """The relative-position embeddings [2S, D] every layer projects (LayerNormed when
        `norm_rel_ebd` says so), in the compute dtype; None without relative attention."""
        if self.rel_embeddings is None:
            return None
        table = self.rel_embeddings.embedding[...]
        if self.rel_layer_norm is not None:
            return self.rel_layer_norm(table)
        return table.astype(jnp.dtype(self.config.dtype))

    def relative_position_bias(self, layer: int, q: jax.Array, k: jax.Array) -> jax.Array | None:
        """The c2p + p2c attention score terms of layer `layer` (0-based), float32
        [B, H, T, T], for that layer's content projections `q`, `k` (`output.qkv[layer]`):
        what the model adds to q·kᵀ·`config.attention_scale` before the softmax (inference
        mode: no dropout). None when the model has no relative attention."""
        if not self.config.relative_attention:
            return None
        rel_pos = relative_positions(self.config, q.shape[1])
        return self.layers[layer].attention.position_bias(q, k, self.relative_table(), rel_pos)

    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        *,
        num_layers: int | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
        remat: str = "none",
    ) -> TransformerOutput:
        """Encodes a batch (the call protocol of `models.Transformer`).

        Args:
          input_ids, attention_mask, token_type_ids: int [B, T]; attention_mask is 1 for real
            tokens and 0 for padding; token_type_ids default to zeros and are ignored when the
            model has no token types (type_vocab_size 0, DeBERTa-v3), as in transformers.
          num_layers: run only the first `num_layers` layers.
          deterministic: False applies dropout, drawn from `rngs` (an `nnx.Rngs` with a
            'dropout' stream, or a PRNG key that seeds one).

        Returns a `TransformerOutput` with `pooler_output` None (the base model has none).
        """
        cfg = self.config
        # Only an absolute position table (position_biased_input) bounds the length.
        input_ids, attention_mask, token_type_ids, n, rngs = prepare_inputs(
            cfg,
            input_ids,
            attention_mask,
            token_type_ids,
            num_layers=num_layers,
            deterministic=deterministic,
            rngs=rngs,
            max_length=cfg.max_position_embeddings if cfg.position_biased_input else None,
            dropout_rates=(cfg.hidden_dropout, cfg.attention_dropout),
        )
        key_mask = attention_mask.astype(bool)
        mask = attention_mask_of(key_mask)
        rel_table = self.relative_table()
        rel_pos = relative_positions(cfg, input_ids.shape[1]) if cfg.relative_attention else None
        embedded = self.embeddings(
            input_ids, token_type_ids, key_mask, deterministic=deterministic, rngs=rngs
        )
        h, hidden_states, qkv = embedded, [embedded], []
        # models.remat; rel_pos is a numpy table the layer indexes with, not an array to trace.
        run = layer_caller(remat, deterministic=deterministic, rel_pos=rel_pos)
        for i in range(n):
            h, layer_qkv = run(self.layers[i], h, mask, rel_table, rngs=rngs)
            if i == 0 and self.conv is not None:
                h = self.conv(embedded, h, key_mask, deterministic=deterministic, rngs=rngs)
            hidden_states.append(h)
            qkv.append(layer_qkv)
        return TransformerOutput(
            last_hidden_state=h,
            hidden_states=tuple(hidden_states),
            qkv=tuple(qkv),
            pooler_output=None,
        )


def build(config: DebertaConfig, *, rngs: nnx.Rngs, add_pooler: bool = True) -> Deberta:
    """A freshly initialised encoder (`models.build_model`). `add_pooler` is accepted for the
    common signature; DeBERTa's base model has no pooler (its ContextPooler belongs to the
    classification head)."""
    del add_pooler
    return Deberta(config, rngs=rngs)


def unreachable_param(path: tuple, num_layers: int, used: frozenset[str]) -> bool:
    """True for a parameter that a relation loss reading only the content projections `used`
    (a subset of {"q", "k", "v"}) of the last layer cannot reach: in that layer everything
    but those projections (its position projections and position terms only shape its own
    attention output, which feeds nothing the loss reads); and in a one-layer model the
    relative-position table, its LayerNorm and the conv layer (used after layer 0's q/k/v)."""
    if path[0] in ("rel_embeddings", "rel_layer_norm", "conv"):
        return num_layers < 2
    if path[0] != "layers" or path[1] != num_layers - 1:
        return False
    if path[2] == "feed_forward":
        return True
    projection = {"query": "q", "key": "k", "value": "v"}.get(path[3])
    return projection is None or projection not in used
