"""The attention kernel every encoder family calls.

One function so that the numerics (float32 scores and softmax under bfloat16, padded keys
removed by selection, never by a large additive constant) are written once, and so that a
faster kernel can replace the implementation for every family at once. The relation taps and
their tests recompute attention probabilities with `attention_probs`.

Without attention dropout (the frozen teacher, evaluation, inference) the context goes
through `jax.nn.dot_product_attention`, JAX's one entry point to fused attention kernels
(XLA's, cuDNN's): it has the same semantics (float32 scores and softmax whatever the inputs'
dtype, masked keys replaced by a large negative number by selection, so their weight is
exactly 0 and a fully masked row is uniform), checked equal to `attention_probs` in the
tests. Dropout on the probabilities needs them materialised: that path stays ours.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """[B, T, D] -> [B, T, H, D/H]."""
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads)


def attention_mask(key_mask: jax.Array, window: int | None = None) -> jax.Array:
    """Boolean [B, 1, Tq, Tk] (or [B, 1, 1, Tk]): True where a query may attend a key.

    `key_mask` [B, T] is True for real tokens. `window`: sliding-window (local) attention in
    which query i sees keys j with |i - j| <= window // 2 (ModernBERT's local layers).
    """
    mask = key_mask[:, None, None, :]
    if window is not None:
        t = key_mask.shape[1]
        pos = jnp.arange(t)
        local = jnp.abs(pos[:, None] - pos[None, :]) <= window // 2
        mask = mask & local[None, None]
    return mask


def attention_probs(
    q: jax.Array,
    k: jax.Array,
    mask: jax.Array,
    *,
    num_heads: int,
    scale: float,
    bias: jax.Array | None = None,
) -> jax.Array:
    """softmax(q·kᵀ·scale + bias) per head, float32 [B, H, Tq, Tk].

    `q`, `k`: [B, T, D] projection outputs (all heads side by side); `mask`: boolean,
    broadcastable to [B, H, Tq, Tk] (see `attention_mask`); `bias`: float additive scores
    (DeBERTa's relative-position terms), broadcastable likewise.
    """
    scores = jnp.einsum(
        "bqhd,bkhd->bhqk",
        split_heads(q, num_heads),
        split_heads(k, num_heads),
        preferred_element_type=jnp.float32,
    ) * jnp.float32(scale)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    # Masked scores get the float32 minimum by selection (no addition, so no overflow); their
    # exp underflows to exactly 0. A fully masked row becomes uniform and stays finite.
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    *,
    num_heads: int,
    scale: float,
    bias: jax.Array | None = None,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Multi-head attention context [B, T, D] (in v's dtype) of projection outputs q, k, v.

    `dropout`, when given, is applied to the attention probabilities (training).
    """
    b, t, _ = v.shape
    if dropout is None and q.dtype == k.dtype == v.dtype:
        # Its scores and softmax are float32 and its probabilities are cast to v's dtype
        # before the context product, as below.
        context = jax.nn.dot_product_attention(
            split_heads(q, num_heads),
            split_heads(k, num_heads),
            split_heads(v, num_heads),
            bias=None if bias is None else bias.astype(jnp.float32),
            mask=mask,
            scale=scale,
        )
        return context.reshape(b, t, -1)
    probs = attention_probs(q, k, mask, num_heads=num_heads, scale=scale, bias=bias)
    if dropout is not None:
        probs = dropout(probs)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), split_heads(v, num_heads))
    return context.reshape(b, t, -1)
