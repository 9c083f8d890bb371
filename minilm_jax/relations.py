"""Self-attention relations and their KL losses (MiniLMv2, and MiniLM v1 for the ablations).

Everything here is a pure function of arrays: no module state, no axis names, so the losses
compose unchanged with `jax.jit`, `jax.grad`, `jax.vmap`, `jax.shard_map` and `jax.pmap`.
The only global is the relation registry, which maps names to such functions.

Semantics (docs/method.md, "The method"):
  * a projection `[B, T, D]` is split into `R` relation heads `[B, R, T, D/R]`;
  * the relation of a pair (X, Y) is `softmax(X_r Y_r^T / sqrt(D/R))` over the key axis, with
    padded keys excluded (masked with `where`, never an additive constant);
  * the loss of a pair is KL(teacher || student) per query row, averaged over the relation
    heads and the sequence's valid tokens, then over the sequences of the batch, each
    sequence weighing the same. A sequence without any valid token carries no weight: it is
    left out of the batch mean (a batch of only empty sequences has loss 0, not NaN).
  * softmax, log-softmax and KL run in float32 whatever the input dtype.

Two implementations of a pair loss give the same value and gradients:
  * "direct" materialises the `[B, R, T, T]` relations;
  * "blocked" walks over blocks of query rows (`jax.checkpoint` per block, so the backward
    pass recomputes each block), so its memory grows with `T x block` instead of `T x T`.
"auto" picks "blocked" from `AUTO_BLOCKED_MIN_LENGTH` tokens on (see that constant).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

QKV_KINDS = "qkv"  # index of each letter in a (q, k, v) triple
PAIR_NAMES: tuple[str, ...] = tuple(x + y for x in QKV_KINDS for y in QKV_KINDS)
IMPLEMENTATIONS = ("auto", "direct", "blocked")

# Measured with `python -m minilm_jax.bench relations` (R=48, widths 768/384, qq+kk+vv, loss
# and gradient, float32) on a 2-core CPU: the README's table. The blocked walk was never
# slower there (8x128: 0.27 s vs 0.30 s; 8x512: 4.3 s vs 7.4 s; 1x2048: 13.9 s vs 18.5 s)
# because its blocks stay in cache, and its memory is linear in T (1x4096: 0.25 GiB vs 39 GiB).
# Below 256 tokens, though, the direct relations are small (0.28 GiB at 8x128), it compiles
# faster (3.6 s vs 6.4 s at 8x128 on a busy machine) and is one fused pass without a serial
# loop or the recomputation of the forward pass, which is what accelerators favour; from 256
# tokens on the direct memory (about 1.1 GiB at 8x256, 4.5 GiB at 8x512, x4 per doubling) is
# what matters.
AUTO_BLOCKED_MIN_LENGTH = 256
# Query rows per block: 16-64 rows were fastest on CPU at 128-2048 tokens (32 best overall);
# memory grows linearly with it.
DEFAULT_BLOCK_SIZE = 32

# What masked logits are replaced with: exp() of it is exactly 0 next to any real logit, yet
# it stays finite in float32 and bfloat16, so (masked - masked) and 0 * (masked - masked)
# are 0, not NaN, even in a row where every key is padded.
MASKED_LOGIT = -1e30

QKV = tuple[jax.Array, jax.Array, jax.Array]


# --------------------------------------------------------------------------- relation math


def split_relation_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """`[B, T, D]` -> `[B, R, T, D/R]`: the last axis cut into `R` heads of `D/R` features."""
    batch, length, width = x.shape
    num_heads = _positive_int("num_heads R", num_heads)
    if width % num_heads:
        raise ValueError(
            f"cannot split width D={width} into R={num_heads} relation heads: "
            f"D must be a multiple of R (D % R = {width % num_heads})"
        )
    # Reshape keeps tokens in place; only then does the head axis move before the token axis.
    return x.reshape(batch, length, num_heads, width // num_heads).transpose(0, 2, 1, 3)


def relation_logits(
    x: jax.Array, y: jax.Array, attention_mask: jax.Array, num_heads: int
) -> jax.Array:
    """Scaled relation logits `X_r Y_r^T / sqrt(D/R)`, float32 `[B, R, T, T]`, padded keys masked.

    `x` and `y` are `[B, T, D]` (the same D); `attention_mask` is `[B, T]`, nonzero for real
    tokens. Masked key columns hold `MASKED_LOGIT`.
    """
    _check_same_shape("relation_logits", x=x, y=y)
    xr = split_relation_heads(x.astype(jnp.float32), num_heads)
    yr = split_relation_heads(y.astype(jnp.float32), num_heads)
    return _mask_keys(_scaled_scores(xr, yr), attention_mask != 0)


def relation_kl(
    teacher_logits: jax.Array, student_logits: jax.Array, attention_mask: jax.Array
) -> jax.Array:
    """KL(softmax(teacher) || softmax(student)) per query row, averaged (float32 scalar).

    Logits are `[B, R, T, T]` (query axis before key axis). Padded keys are masked here again
    (so raw logits are fine), padded query rows are dropped; each sequence is averaged over its
    `R x valid tokens` rows, then sequences are averaged with equal weight, sequences without
    valid tokens left out. Differentiable in both arguments: callers that treat the teacher as
    a fixed target stop its gradient (the losses below do).
    """
    _check_same_shape("relation_kl", teacher_logits=teacher_logits, student_logits=student_logits)
    valid = attention_mask != 0
    row_kl = _row_kl(teacher_logits.astype(jnp.float32), student_logits.astype(jnp.float32), valid)
    per_sequence_sum = jnp.sum(jnp.where(valid[:, None, :], row_kl, 0.0), axis=(1, 2))
    return sequence_average(per_sequence_sum, attention_mask, teacher_logits.shape[1])


def sequence_average(
    per_sequence_sum: jax.Array, attention_mask: jax.Array, num_heads: int
) -> jax.Array:
    """Per-sequence KL sums `[B]` -> the batch loss of docs/method.md (each sequence weighs the
    same).

    Sequence b is normalised by `num_heads * n_b` (its own valid length). Sequences with
    `n_b = 0` contribute nothing and are not counted in the batch mean, so adding empty
    sequences (or padding) to a batch leaves the loss unchanged and never yields NaN.
    """
    num_valid = jnp.sum(attention_mask != 0, axis=-1).astype(jnp.float32)
    has_tokens = num_valid > 0
    per_sequence = per_sequence_sum / (num_heads * jnp.maximum(num_valid, 1.0))
    per_sequence = jnp.where(has_tokens, per_sequence, 0.0)
    return jnp.sum(per_sequence) / jnp.maximum(jnp.sum(has_tokens.astype(jnp.float32)), 1.0)


def pair_relation_loss(
    teacher_qkv: Sequence[jax.Array],
    student_qkv: Sequence[jax.Array],
    attention_mask: jax.Array,
    pair: str,
    num_heads: int,
    *,
    implementation: str = "auto",
    block_size: int | None = None,
) -> jax.Array:
    """The relation KL of one pair (e.g. "qk": X = q, Y = k) with `num_heads` heads.

    The teacher is a fixed target: its gradient is stopped here.
    """
    ix, iy = pair_indices(pair)
    _check_qkv(teacher_qkv, student_qkv, attention_mask)
    implementation = resolve_implementation(implementation, attention_mask.shape[-1], block_size)
    t_x, t_y = (jax.lax.stop_gradient(teacher_qkv[i]) for i in (ix, iy))
    s_x, s_y = student_qkv[ix], student_qkv[iy]
    if implementation == "direct":
        return relation_kl(
            relation_logits(t_x, t_y, attention_mask, num_heads),
            relation_logits(s_x, s_y, attention_mask, num_heads),
            attention_mask,
        )
    heads = [split_relation_heads(a.astype(jnp.float32), num_heads) for a in (t_x, t_y, s_x, s_y)]
    per_sequence_sum = _blocked_kl_sums(
        *heads, attention_mask != 0, block_size or DEFAULT_BLOCK_SIZE
    )
    return sequence_average(per_sequence_sum, attention_mask, num_heads)


def resolve_implementation(implementation: str, length: int, block_size: int | None = None) -> str:
    """ "auto" -> "direct" or "blocked" for a sequence length; checks the arguments."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not one of {IMPLEMENTATIONS}")
    if block_size is not None:
        _positive_int("block_size", block_size, f" or None (None: {DEFAULT_BLOCK_SIZE} rows)")
    if implementation != "auto":
        return implementation
    return "blocked" if length >= AUTO_BLOCKED_MIN_LENGTH else "direct"


def minilmv2_loss(
    teacher_qkv: Sequence[jax.Array],
    student_qkv: Sequence[jax.Array],
    attention_mask: jax.Array,
    num_relation_heads: int,
    pairs: Sequence[str] = ("qq", "kk", "vv"),
    weights: Sequence[float] | Mapping[str, float] | None = None,
    *,
    implementation: str = "auto",
    block_size: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The MiniLMv2 loss: `(sum_p w_p * KL_p, {pair: KL_p})`.

    `teacher_qkv` / `student_qkv` are `(q, k, v)` triples `[B, T, D_t]` / `[B, T, D_s]` (the
    projection outputs, bias included); both are split into the same `num_relation_heads`.
    `pairs` are two letters of q/k/v ("qq", "qk", ...); `weights` (default 1 each) is a
    sequence aligned with `pairs` or a mapping from pair name to weight. `per_pair` holds the
    unweighted losses.
    """
    for pair in pairs:
        pair_indices(pair)
    losses = {
        pair: pair_relation_loss(
            teacher_qkv,
            student_qkv,
            attention_mask,
            pair,
            num_relation_heads,
            implementation=implementation,
            block_size=block_size,
        )
        for pair in _unique(pairs)
    }
    return _weighted_total(losses, weights), losses


def pair_indices(pair: str) -> tuple[int, int]:
    """A pair name -> the indices of X and Y in a (q, k, v) triple: "vk" -> (2, 1)."""
    if pair not in PAIR_NAMES:
        raise ValueError(
            f"pair {pair!r} must be two letters of q/k/v, one of {', '.join(PAIR_NAMES)}"
        )
    return QKV_KINDS.index(pair[0]), QKV_KINDS.index(pair[1])


def relation_probabilities(
    qkv: Sequence[jax.Array], attention_mask: jax.Array, pair: str, num_heads: int
) -> jax.Array:
    """The relation itself, `softmax(X_r Y_r^T / sqrt(D/R))` per relation head of one model's
    `(q, k, v)`: float32 `[B, R, T, T]`, rows over the keys; padded keys get probability 0."""
    ix, iy = pair_indices(pair)
    logits = relation_logits(qkv[ix], qkv[iy], attention_mask, num_heads)
    return jax.nn.softmax(logits, axis=-1)


# --------------------------------------------------------------------------- kernels
# Shared by both implementations, so "direct" and "blocked" differ only in how rows are walked.


def _scaled_scores(x_heads: jax.Array, y_heads: jax.Array) -> jax.Array:
    """`[B, R, Tq, d]` x `[B, R, Tk, d]` -> `[B, R, Tq, Tk]` float32, divided by sqrt(d)."""
    scale = 1.0 / math.sqrt(x_heads.shape[-1])
    return (
        jnp.einsum("brqd,brkd->brqk", x_heads, y_heads, preferred_element_type=jnp.float32) * scale
    )


def _mask_keys(logits: jax.Array, key_valid: jax.Array) -> jax.Array:
    """Padded key columns (`key_valid` `[B, Tk]` False) -> `MASKED_LOGIT`, by `where`."""
    return jnp.where(key_valid[:, None, None, :], logits, MASKED_LOGIT)


def _row_kl(
    teacher_logits: jax.Array, student_logits: jax.Array, key_valid: jax.Array
) -> jax.Array:
    """KL(teacher || student) of each query row over the valid keys: `[B, R, Tq]` float32."""
    log_p_teacher = jax.nn.log_softmax(_mask_keys(teacher_logits, key_valid), axis=-1)
    log_p_student = jax.nn.log_softmax(_mask_keys(student_logits, key_valid), axis=-1)
    # Masked keys have p_teacher == exp(~MASKED_LOGIT) == 0 exactly and finite log-probabilities
    # on both sides, so they add exactly 0: no extra `where` over the [.., Tq, Tk] product.
    return jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)


def _blocked_kl_sums(
    t_x: jax.Array,
    t_y: jax.Array,
    s_x: jax.Array,
    s_y: jax.Array,
    valid: jax.Array,
    block_size: int,
) -> jax.Array:
    """Per-sequence sums `[B]` of the row KLs of valid query rows, `block_size` rows at a time.

    Inputs are relation heads `[B, R, T, d]` (teacher d_t, student d_s). The query axis is
    zero-padded to a multiple of `block_size`; padded rows count as padding and drop out.
    `jax.checkpoint` keeps only each block's inputs for the backward pass, which recomputes
    the block's `[B, R, block, T]` relations instead of storing them.
    """
    batch, heads, length, _ = t_x.shape
    block_size = min(block_size, length)  # a short sequence is one block, without padding
    num_blocks = -(-length // block_size)
    pad = num_blocks * block_size - length

    def to_blocks(a: jax.Array) -> jax.Array:  # [B, R, T, ...] -> [blocks, B, R, block, ...]
        a = jnp.pad(a, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 3))
        a = a.reshape(batch, heads, num_blocks, block_size, *a.shape[3:])
        return jnp.moveaxis(a, 2, 0)

    query_valid = to_blocks(jnp.broadcast_to(valid[:, None, :], (batch, heads, length)))

    @functools.partial(jax.checkpoint, prevent_cse=False)  # no CSE hazard inside a scan
    def block_sum(t_y, s_y, valid, t_q, s_q, q_valid):
        row_kl = _row_kl(_scaled_scores(t_q, t_y), _scaled_scores(s_q, s_y), valid)
        return jnp.sum(jnp.where(q_valid, row_kl, 0.0), axis=(1, 2))

    sums = jax.lax.map(
        lambda xs: block_sum(t_y, s_y, valid, *xs), (to_blocks(t_x), to_blocks(s_x), query_valid)
    )
    return jnp.sum(sums, axis=0)


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class RelationContext:
    """What a relation may need besides the vectors: head counts and implementation choice."""

    num_relation_heads: int
    teacher_num_heads: int
    student_num_heads: int
    implementation: str = "auto"  # "auto" | "direct" | "blocked"
    block_size: int | None = None  # query rows per block for "blocked"; None: DEFAULT_BLOCK_SIZE

    def __post_init__(self):
        for field in ("num_relation_heads", "teacher_num_heads", "student_num_heads"):
            _positive_int(f"RelationContext.{field}", getattr(self, field))
        resolve_implementation(self.implementation, 0, self.block_size)


# fn(teacher_qkv, student_qkv, attention_mask, ctx) -> float32 scalar
RelationFn = Callable[[QKV, QKV, jax.Array, RelationContext], jax.Array]
# check(ctx, teacher_width, student_width) raises ValueError when the relation cannot apply
RelationCheck = Callable[[RelationContext, int, int], None]


@dataclasses.dataclass(frozen=True)
class _Entry:
    fn: RelationFn
    check: RelationCheck | None


# Kept across `importlib.reload` (notebook autoreload), so user relations survive an edit
# of this file.
_REGISTRY: dict[str, _Entry] = globals().get("_REGISTRY", {})


def register_relation(
    name: str,
    fn: RelationFn | None = None,
    *,
    check: RelationCheck | None = None,
    replace: bool = False,
) -> Any:
    """Registers `fn(teacher_qkv, student_qkv, attention_mask, ctx) -> scalar` under `name`.

    Use as `register_relation("name", fn)` or as a decorator `@register_relation("name")`.
    `fn` must be a pure function of its arguments (it runs under jit/grad/vmap/shard_map) and
    should return a float32 scalar; the teacher triple it receives has its gradient stopped.
    `check(ctx, teacher_width, student_width)`, if given, runs in `validate_relations` and
    should raise ValueError for settings the relation cannot handle. Registering a taken name
    fails unless `replace=True` (e.g. when re-running a notebook cell). Pair names ("qq", "qk",
    ...) are built in and cannot be registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"relation name must be a non-empty str, got {name!r}")
    if name in PAIR_NAMES:
        raise ValueError(
            f"{name!r} is a built-in pair name (any two letters of q/k/v); choose another name"
        )
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"relation {name!r} is already registered; pass replace=True to redefine it"
        )

    def register(f: RelationFn) -> RelationFn:
        if not callable(f):
            raise ValueError(f"relation {name!r}: fn must be callable, got {f!r}")
        _REGISTRY[name] = _Entry(f, check)
        return f

    return register if fn is None else register(fn)


def unregister_relation(name: str) -> None:
    """Removes a registered relation (pair names are built in and cannot be removed)."""
    if name not in _REGISTRY:
        raise ValueError(f"relation {name!r} is not registered; registered: {sorted(_REGISTRY)}")
    del _REGISTRY[name]


def relation_names() -> tuple[str, ...]:
    """Every name `get_relation` accepts: the nine pair names, then the registered ones."""
    return PAIR_NAMES + tuple(sorted(_REGISTRY))


def get_relation(name: str) -> RelationFn:
    """The relation function for a pair name or a registered name."""
    if name in PAIR_NAMES:
        return lambda t, s, mask, ctx: pair_relation_loss(
            t,
            s,
            mask,
            name,
            ctx.num_relation_heads,
            implementation=ctx.implementation,
            block_size=ctx.block_size,
        )
    if name in _REGISTRY:
        return _REGISTRY[name].fn
    raise ValueError(
        f"unknown relation {name!r}. Known relations: {', '.join(relation_names())}. Pair names "
        "are any two letters of q/k/v (X then Y of softmax(X Y^T)); other names must be "
        "registered with minilm_jax.relations.register_relation first."
    )


def validate_relations(
    names: Sequence[str], ctx: RelationContext, teacher_width: int, student_width: int
) -> None:
    """Raises ValueError, before anything is traced, for relations that cannot run."""
    if isinstance(names, str) or not names:
        raise ValueError(f"relations must be a non-empty sequence of names, got {names!r}")
    _unique(names)
    for name in names:
        get_relation(name)
        if name in PAIR_NAMES:
            _check_divisible(
                f"relation {name!r}",
                "num_relation_heads",
                ctx.num_relation_heads,
                teacher_width,
                student_width,
            )
        elif _REGISTRY[name].check is not None:
            _REGISTRY[name].check(ctx, teacher_width, student_width)


def distillation_loss(
    teacher_qkv: Sequence[jax.Array],
    student_qkv: Sequence[jax.Array],
    attention_mask: jax.Array,
    relations: Sequence[str],
    ctx: RelationContext,
    weights: Sequence[float] | Mapping[str, float] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The general loss: `(sum_n w_n * L_n, {name: L_n})` over relation names.

    Names are pair names or registered names (e.g. `MINILM_V1_RELATIONS`). The teacher's
    gradient is stopped before any relation sees it; `per_relation` holds unweighted losses.
    """
    _check_qkv(teacher_qkv, student_qkv, attention_mask)
    validate_relations(relations, ctx, teacher_qkv[0].shape[-1], student_qkv[0].shape[-1])
    teacher_qkv = tuple(jax.lax.stop_gradient(a) for a in teacher_qkv)
    student_qkv = tuple(student_qkv)
    losses = {
        name: jnp.asarray(
            get_relation(name)(teacher_qkv, student_qkv, attention_mask, ctx), jnp.float32
        )
        for name in relations
    }
    for name, value in losses.items():
        if value.shape != ():
            raise ValueError(
                f"relation {name!r} returned shape {value.shape}; it must return a scalar"
            )
    return _weighted_total(losses, weights), losses


# MiniLM (v1): the attention distributions themselves (Q-K per attention head) and the V-V
# relation per attention head, scaled by sqrt(head_dim). They need the same head count in
# teacher and student, since each student head mimics the teacher head of the same index.


def _attention_heads(ctx: RelationContext) -> int:
    if ctx.teacher_num_heads != ctx.student_num_heads:
        raise ValueError(
            "MiniLM v1 relations (attn_qk, attn_vv) compare attention heads one to one: "
            f"teacher_num_heads={ctx.teacher_num_heads} must equal "
            f"student_num_heads={ctx.student_num_heads}"
        )
    return ctx.teacher_num_heads


def _check_attention_heads(ctx: RelationContext, teacher_width: int, student_width: int) -> None:
    _check_divisible(
        "MiniLM v1 relation", "attention heads", _attention_heads(ctx), teacher_width, student_width
    )


def _attention_pair(pair: str) -> RelationFn:
    def relation(teacher_qkv, student_qkv, attention_mask, ctx):
        return pair_relation_loss(
            teacher_qkv,
            student_qkv,
            attention_mask,
            pair,
            _attention_heads(ctx),
            implementation=ctx.implementation,
            block_size=ctx.block_size,
        )

    return relation


register_relation("attn_qk", _attention_pair("qk"), check=_check_attention_heads, replace=True)
register_relation("attn_vv", _attention_pair("vv"), check=_check_attention_heads, replace=True)
MINILM_V1_RELATIONS: tuple[str, ...] = ("attn_qk", "attn_vv")


# --------------------------------------------------------------------------- helpers


def _positive_int(what: str, value: Any, alternatives: str = "") -> int:
    try:
        number = operator.index(value)  # ints and NumPy integers, not floats
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number <= 0:
        raise ValueError(f"{what}={value!r} must be a positive int{alternatives}")
    return number


def _unique(names: Sequence[str]) -> Sequence[str]:
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise ValueError(f"relation names must not repeat; repeated: {duplicates}")
    return names


def _weighted_total(
    losses: dict[str, jax.Array], weights: Sequence[float] | Mapping[str, float] | None
) -> jax.Array:
    names = list(losses)
    if weights is None:
        factors = [1.0] * len(names)
    elif isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"weights name {unknown}, which are not among the relations {names}")
        factors = [weights.get(n, 1.0) for n in names]
    else:
        factors = list(weights)
        if len(factors) != len(names):
            raise ValueError(f"got {len(factors)} weights for {len(names)} relations {names}")
    return sum((f * losses[n] for f, n in zip(factors, names)), jnp.zeros((), jnp.float32))


def _check_divisible(
    what: str, heads_name: str, heads: int, teacher_width: int, student_width: int
) -> None:
    bad = {
        role: width
        for role, width in (("teacher", teacher_width), ("student", student_width))
        if width % heads
    }
    if bad:
        raise ValueError(
            f"{what}: {heads_name}={heads} must divide both the teacher width ({teacher_width}) "
            f"and the student width ({student_width}); it does not divide the "
            + " nor the ".join(
                f"{role} width ({width} % {heads} = {width % heads})" for role, width in bad.items()
            )
        )


def _check_same_shape(where: str, **arrays: jax.Array) -> None:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{where}: shapes must match, got {shapes}")


def _check_qkv(
    teacher_qkv: Sequence[jax.Array], student_qkv: Sequence[jax.Array], attention_mask: jax.Array
) -> None:
    for role, triple in (("teacher_qkv", teacher_qkv), ("student_qkv", student_qkv)):
        if len(triple) != 3:
            raise ValueError(f"{role} must be a (q, k, v) triple, got {len(triple)} arrays")
        shapes = [a.shape for a in triple]
        if len(set(shapes)) != 1 or len(shapes[0]) != 3:
            raise ValueError(f"{role} must hold three [B, T, D] arrays of one shape, got {shapes}")
    batch_length = teacher_qkv[0].shape[:2]
    if student_qkv[0].shape[:2] != batch_length or attention_mask.shape != batch_length:
        raise ValueError(
            f"[B, T] must agree: teacher {teacher_qkv[0].shape[:2]}, student "
            f"{student_qkv[0].shape[:2]}, attention_mask {attention_mask.shape}"
        )
