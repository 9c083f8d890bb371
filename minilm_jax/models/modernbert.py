"""ModernBERT (answerdotai/ModernBERT-base, -large and its derivatives) as a Flax NNX module.

Architecture, as transformers' `ModernBertModel`: token embeddings + LayerNorm (no position
table: positions enter through rotary embeddings); pre-LayerNorm layers (layer 0 has no
attention norm: the embeddings' norm already normalises its input),
x + Wo(attention(rotary(q), rotary(k), v)) then x + Wo(gelu(Wi_in(LN(x))) * Wi_gate(LN(x)));
a final LayerNorm. Linear layers and LayerNorms have no bias unless the config says so. Layer
i attends globally when i % global_attn_every_n_layers == 0, otherwise within a sliding
window; the two kinds use different rotary bases.

Sliding window, exactly as transformers (eager/sdpa masks and flash attention's
`window_size=(w, w)` agree): with w = local_attention // 2, query i sees keys j with
|i - j| <= w, i.e. 2w + 1 keys (129 for local_attention=128), with token positions counted
from the start of the row. Padding must therefore be at the end of each row (right padding:
what our data pipeline and HF tokenizers produce); then a padded batch gives, on the real
tokens, exactly what each sequence gives alone (transformers' unpadded flash-attention path).

Parameter paths are the BERT ones: HF's fused `Wqkv` is stored as three projections
`layers.<i>.attention.{query,key,value}` and HF's fused `Wi` as `feed_forward.intermediate`
(its first half, the GELU input) and `feed_forward.gate` (its second half, the linear gate);
`minilm_jax.hf.modernbert` splits and joins them.

Relation tap (`.qkv`): with `qk_tap="rotary"` (default) q and k after the rotary embedding,
i.e. exactly the vectors whose scaled dot products are the attention scores, and v; with
`qk_tap="projection"` the raw projection outputs before the rotation. Each is [B, T, D], all
heads side by side. On local layers the relations built from them span all valid tokens,
not the attention window: the relation is not the attention.

Outputs follow transformers: `hidden_states[0]` is the normalised embeddings, `hidden_states[i]`
the residual stream after layer i, and when every layer ran the last entry (and
`last_hidden_state`) is passed through the final LayerNorm. A truncated run (`num_layers=`)
returns the raw residual stream of its last layer. There is no pooler (`pooler_output` None).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from minilm_jax.models.attention import attention
from minilm_jax.models.attention import attention_mask as attention_mask_of
from minilm_jax.models.remat import layer_caller
from minilm_jax.models.transformer import (
    DTYPES,
    ConfigMethods,
    TransformerOutput,
    _dropout,
    last_layer_unreachable,
    prepare_inputs,
)

FAMILY = "modernbert"
# HF "gelu" (exact erf GELU): what ModernBERT-base/large use.
ACTIVATIONS = ("gelu",)
QK_TAPS = ("rotary", "projection")


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(ConfigMethods):
    """Architecture of one ModernBERT encoder. Shared field names as `TransformerConfig`;
    `minilm_jax.hf.modernbert` translates them to and from Hugging Face's names."""

    family: str  # "modernbert"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int  # width of the gated feed-forward (HF Wi has twice as many outputs)
    max_position_embeddings: int  # longest input (rotary: there is no position table)
    pad_token_id: int
    local_attention: int = 128  # sliding window: keys within local_attention // 2 of the query
    global_attn_every_n_layers: int = 3  # layer i attends globally when i % n == 0
    global_rope_theta: float = 160_000.0  # rotary base of the global layers
    local_rope_theta: float = 10_000.0  # rotary base of the sliding-window layers
    norm_eps: float = 1e-5
    norm_bias: bool = False  # LayerNorms with a bias
    attention_bias: bool = False  # q/k/v and attention output projections with a bias
    mlp_bias: bool = False  # feed-forward projections with a bias
    hidden_dropout: float = 0.0  # HF mlp_dropout: inside the feed-forward, before its output
    attention_dropout: float = 0.0  # HF attention_dropout: attention probs and attention output
    embedding_dropout: float | None = None  # HF embedding_dropout; None: hidden_dropout
    hidden_act: str = "gelu"  # exact erf GELU as in HF "gelu"
    qk_tap: str = "rotary"  # relation tap of q and k: "rotary" (what attention uses) | "projection"
    dtype: str = "float32"  # compute dtype of activations ("float32" | "bfloat16")
    param_dtype: str = "float32"  # storage dtype of parameters
    initializer_range: float = 0.02  # std of the truncated-normal init (as HF)
    initializer_cutoff_factor: float = 2.0  # init truncated at +-cutoff x std (as HF)
    bos_token_id: int | None = None  # only carried to config.json
    eos_token_id: int | None = None
    cls_token_id: int | None = None
    sep_token_id: int | None = None

    def __post_init__(self):
        cls = type(self).__name__
        if self.family != FAMILY:
            raise ValueError(f"{cls}.family={self.family!r}; allowed: ({FAMILY!r},)")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "local_attention",
            "global_attn_every_n_layers",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{cls}.{name}={value!r}; must be a positive int")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"{cls}.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"{cls}: head size hidden_size / num_heads = {self.head_dim} must be even "
                f"(rotary embeddings rotate pairs of dimensions)"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"{cls}.pad_token_id={self.pad_token_id}; must be in "
                f"[0, vocab_size={self.vocab_size})"
            )
        for name in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"{cls}.{name}={value}; must be None or in [0, vocab_size={self.vocab_size})"
                )
        for name in ("hidden_dropout", "attention_dropout", "embedding_dropout"):
            value = getattr(self, name)
            if value is None and name == "embedding_dropout":
                continue  # follows hidden_dropout
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise ValueError(f"{cls}.{name}={value!r}; must be in [0, 1)")
        for name in (
            "global_rope_theta",
            "local_rope_theta",
            "norm_eps",
            "initializer_range",
            "initializer_cutoff_factor",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{cls}.{name}={getattr(self, name)}; must be > 0")
        for name in ("norm_bias", "attention_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{cls}.{name}={getattr(self, name)!r}; must be a bool")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{cls}.hidden_act={self.hidden_act!r}; allowed: {ACTIVATIONS}")
        if self.qk_tap not in QK_TAPS:
            raise ValueError(f"{cls}.qk_tap={self.qk_tap!r}; allowed: {QK_TAPS}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{cls}.{name}={getattr(self, name)!r}; allowed: {DTYPES}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_offset(self) -> int:
        """Rotary positions count from 0 (no fairseq-style offset)."""
        return 0

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings

    @property
    def layer_types(self) -> tuple[str, ...]:
        """Per layer, "full_attention" or "sliding_attention" (HF's `layer_types` names)."""
        return tuple(
            "full_attention" if i % self.global_attn_every_n_layers == 0 else "sliding_attention"
            for i in range(self.num_layers)
        )

    @property
    def effective_embedding_dropout(self) -> float:
        return self.hidden_dropout if self.embedding_dropout is None else self.embedding_dropout

    def student_intermediate_size(self, hidden_size: int) -> int:
        """A student's feed-forward width: the teacher's width/hidden ratio (1.5 in
        ModernBERT-base, so a 384-wide student gets 576), not BERT's 4x: the gated
        feed-forward already has three matrices."""
        return max(1, round(self.intermediate_size * hidden_size / self.hidden_size))


def _init(config: ModernBertConfig, std: float, zero_row: int | None = None):
    """HF's init: truncated normal N(0, std) cut at +-initializer_cutoff_factor x std."""
    c = config.initializer_cutoff_factor
    normal = nnx.initializers.truncated_normal(std, lower=-c, upper=c)

    def init(key, shape, dtype=jnp.float32):
        value = normal(key, shape, dtype)
        return value if zero_row is None else value.at[zero_row].set(0)

    return init


def _linear(config: ModernBertConfig, d_in: int, d_out: int, *, bias: bool, std: float, rngs):
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=_init(config, std),
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


def _layer_norm(config: ModernBertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.norm_eps,
        use_bias=config.norm_bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        use_fast_variance=False,  # two-pass variance, as torch
        rngs=rngs,
    )


def rotary_tables(theta: float, head_dim: int, length: int) -> tuple[jax.Array, jax.Array]:
    """cos, sin float32 [length, head_dim] of positions 0..length-1 (HF's default RoPE: frequency
    theta^(-2j/head_dim) for pair j, the table repeated for both halves of the head)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array, num_heads: int) -> jax.Array:
    """Rotates each head of x [B, T, D] by its positions' angles (HF `apply_rotary_pos_emb`:
    x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1), computed in float32)."""
    b, t, d = x.shape
    heads = x.reshape(b, t, num_heads, d // num_heads).astype(jnp.float32)
    x1, x2 = jnp.split(heads, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = heads * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.reshape(b, t, d).astype(x.dtype)


class Embeddings(nnx.Module):
    """LayerNorm(token embedding), dropout (HF ModernBertEmbeddings)."""

    def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        pdt = jnp.dtype(config.param_dtype)
        self.word_embeddings = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=pdt,
            param_dtype=pdt,
            embedding_init=_init(config, config.initializer_range, config.pad_token_id),
            rngs=rngs,
        )
        self.layer_norm = _layer_norm(config, rngs)
        self.dropout = nnx.Dropout(config.effective_embedding_dropout)

    def __call__(self, input_ids, *, deterministic: bool, rngs):
        x = self.layer_norm(self.word_embeddings(input_ids))
        return _dropout(self.dropout, x, deterministic=deterministic, rngs=rngs)


class Attention(nnx.Module):
    """x + dropout(Wo(attention(rotary(q), rotary(k), v))) of LayerNorm(x) (no norm in layer 0)
    (HF ModernBertAttention with the encoder layer's attn_norm and residual)."""

    def __init__(self, config: ModernBertConfig, *, first: bool, rngs: nnx.Rngs):
        d, bias = config.hidden_size, config.attention_bias
        std_in = config.initializer_range
        std_out = config.initializer_range / math.sqrt(2.0 * config.num_layers)
        self.num_heads, self.head_dim, self.qk_tap = (
            config.num_heads,
            config.head_dim,
            config.qk_tap,
        )
        self.layer_norm = None if first else _layer_norm(config, rngs)
        self.query = _linear(config, d, d, bias=bias, std=std_in, rngs=rngs)
        self.key = _linear(config, d, d, bias=bias, std=std_in, rngs=rngs)
        self.value = _linear(config, d, d, bias=bias, std=std_in, rngs=rngs)
        self.output = _linear(config, d, d, bias=bias, std=std_out, rngs=rngs)
        # HF uses attention_dropout both on the probabilities and on the output projection.
        self.dropout = nnx.Dropout(config.attention_dropout)

    def __call__(self, x, mask, rotary, *, deterministic: bool, rngs):
        h = x if self.layer_norm is None else self.layer_norm(x)
        q, k, v = self.query(h), self.key(h), self.value(h)
        q_rot = apply_rotary(q, *rotary, self.num_heads)
        k_rot = apply_rotary(k, *rotary, self.num_heads)
        context = attention(
            q_rot,
            k_rot,
            v,
            mask,
            num_heads=self.num_heads,
            scale=self.head_dim**-0.5,
            dropout=None
            if deterministic
            else lambda p: _dropout(self.dropout, p, deterministic=False, rngs=rngs),
        )
        out = _dropout(self.dropout, self.output(context), deterministic=deterministic, rngs=rngs)
        tap = (q_rot, k_rot, v) if self.qk_tap == "rotary" else (q, k, v)
        return x + out, tap


class FeedForward(nnx.Module):
    """x + Wo(dropout(gelu(intermediate(LN(x))) * gate(LN(x)))) (HF ModernBertMLP with mlp_norm
    and residual; `intermediate`/`gate` are the first/second half of HF's Wi)."""

    def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        std_in = config.initializer_range
        std_out = config.initializer_range / math.sqrt(2.0 * config.num_layers)
        self.layer_norm = _layer_norm(config, rngs)
        self.intermediate = _linear(config, d, f, bias=bias, std=std_in, rngs=rngs)
        self.gate = _linear(config, d, f, bias=bias, std=std_in, rngs=rngs)
        self.output = _linear(config, f, d, bias=bias, std=std_out, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, x, *, deterministic: bool, rngs):
        h = self.layer_norm(x)
        h = jax.nn.gelu(self.intermediate(h), approximate=False) * self.gate(h)
        h = _dropout(self.dropout, h, deterministic=deterministic, rngs=rngs)
        return x + self.output(h)


class Layer(nnx.Module):
    def __init__(self, config: ModernBertConfig, *, first: bool, rngs: nnx.Rngs):
        self.attention = Attention(config, first=first, rngs=rngs)
        self.feed_forward = FeedForward(config, rngs=rngs)

    def __call__(self, x, mask, rotary, *, deterministic: bool, rngs):
        x, qkv = self.attention(x, mask, rotary, deterministic=deterministic, rngs=rngs)
        return self.feed_forward(x, deterministic=deterministic, rngs=rngs), qkv


class ModernBert(nnx.Module):
    """The encoder. Holds only parameters: dropout keys come in through `rngs` at call time,
    so `nnx.split(model)` state is exactly the parameters."""

    def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List(
            [Layer(config, first=i == 0, rngs=rngs) for i in range(config.num_layers)]
        )
        self.final_norm = _layer_norm(config, rngs)

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
        """Encodes a right-padded batch.

        Args:
          input_ids, attention_mask: int [B, T]; attention_mask is 1 for real tokens and 0 for
            padding, which must come after a row's real tokens.
          token_type_ids: accepted for the common call protocol and ignored (ModernBERT has no
            token types).
          num_layers: run only the first `num_layers` layers; the final LayerNorm runs only
            when every layer ran.
          deterministic: False applies dropout, drawn from `rngs` (an `nnx.Rngs` with a
            'dropout' stream, or a PRNG key that seeds one).
        """
        cfg = self.config
        input_ids, attention_mask, _, n, rngs = prepare_inputs(
            cfg,
            input_ids,
            attention_mask,
            token_type_ids,
            num_layers=num_layers,
            deterministic=deterministic,
            rngs=rngs,
            max_length=cfg.max_sequence_length,
            dropout_rates=(
                cfg.hidden_dropout,
                cfg.attention_dropout,
                cfg.effective_embedding_dropout,
            ),
        )
        length = input_ids.shape[1]
        key_mask = attention_mask.astype(bool)
        masks = {
            "full_attention": attention_mask_of(key_mask),
            "sliding_attention": attention_mask_of(key_mask, window=cfg.local_attention),
        }
        rotary = {
            "full_attention": rotary_tables(cfg.global_rope_theta, cfg.head_dim, length),
            "sliding_attention": rotary_tables(cfg.local_rope_theta, cfg.head_dim, length),
        }
        h = self.embeddings(input_ids, deterministic=deterministic, rngs=rngs)
        hidden_states, qkv = [h], []
        run = layer_caller(remat, deterministic=deterministic)  # models.remat
        for i, kind in enumerate(cfg.layer_types[:n]):
            h, layer_qkv = run(self.layers[i], h, masks[kind], rotary[kind], rngs=rngs)
            hidden_states.append(h)
            qkv.append(layer_qkv)
        if n == cfg.num_layers:
            h = hidden_states[-1] = self.final_norm(h)
        return TransformerOutput(
            last_hidden_state=h,
            hidden_states=tuple(hidden_states),
            qkv=tuple(qkv),
            pooler_output=None,
        )


def build(config: ModernBertConfig, *, rngs: nnx.Rngs, add_pooler: bool = True) -> ModernBert:
    """A freshly initialised ModernBERT; `add_pooler` is accepted for the common protocol (the
    family has no pooler)."""
    del add_pooler
    return ModernBert(config, rngs=rngs)


def unreachable_param(path: tuple, num_layers: int, used: frozenset[str]) -> bool:
    """Pre-LayerNorm: in the last layer the attention's LayerNorm feeds the projections and is
    reachable (when any is used; layer 0 has none); the rest of that layer after q/k/v, the
    projections not in `used` and the final LayerNorm are not (`last_layer_unreachable`)."""
    return last_layer_unreachable(path, num_layers, used, pre_layer_norm=True)
