"""Relation losses against an independent float64 NumPy reference, plus properties,
composition with jit/vmap/pmap/shard_map, the blocked implementation and the registry."""

import contextlib
import functools
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import reference
from minilm_jax import relations as rel
from minilm_jax.bench import __main__ as bench_main
from minilm_jax.bench import relations as bench_relations

B, T, D_T, D_S, R = 4, 21, 48, 24, 4  # T = 21: not a multiple of the block sizes used
HEADS = 3  # attention heads of both models for MiniLM v1 (48/3 and 24/3 per head)
TOL = 1e-5


# The reference is tests/reference.py: float64, padded tokens deleted rather than masked.


def _rel_err(value, expected):
    return abs(float(value) - expected) / max(abs(expected), 1e-12)


# --------------------------------------------------------------------------- inputs


def _triple(rng, batch, length, width, scale=2.0):
    return tuple(
        jnp.asarray(scale * rng.standard_normal((batch, length, width)), jnp.float32)
        for _ in range(3)
    )


def _mask(lengths, length, left_padded=()):
    mask = np.zeros((len(lengths), length), np.int32)
    for b, n in enumerate(lengths):
        if b in left_padded:
            mask[b, length - n :] = 1
        else:
            mask[b, :n] = 1
    return jnp.asarray(mask)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    # Ragged: full, right-padded, left-padded, one token.
    return (
        _triple(rng, B, T, D_T),
        _triple(rng, B, T, D_S),
        _mask([T, 13, 8, 1], T, left_padded={2}),
    )


@pytest.fixture(scope="module")
def all_pairs_jit():
    return jax.jit(
        lambda t, s, m, impl: rel.minilmv2_loss(
            t, s, m, R, rel.PAIR_NAMES, implementation=impl, block_size=8
        ),
        static_argnums=3,
    )


PAIRS = ("qq", "kv", "vv")  # a same-kind and a cross pair, plus the value relation


def _loss(t, s, m, implementation="direct", block_size=8, pairs=PAIRS):
    return rel.minilmv2_loss(
        t, s, m, R, pairs, implementation=implementation, block_size=block_size
    )[0]


# Shared across tests so equal shapes and settings compile once.
_STATIC = ("implementation", "block_size", "pairs")
_jit_loss = jax.jit(_loss, static_argnames=_STATIC)
# Gradients w.r.t. (teacher, student): the teacher's must come back as zeros.
_jit_value_and_grad = jax.jit(jax.value_and_grad(_loss, argnums=(0, 1)), static_argnames=_STATIC)


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("implementation", ["direct", "blocked"])
def test_all_nine_pairs_match_float64_reference(batch, all_pairs_jit, implementation):
    teacher, student, mask = batch
    total, per_pair = all_pairs_jit(teacher, student, mask, implementation)
    errors = {}
    for pair in rel.PAIR_NAMES:
        expected = reference.relation_loss(teacher, student, np.asarray(mask), pair, R)
        assert expected > 0.05  # random inputs: a real, non-trivial KL
        errors[pair] = _rel_err(per_pair[pair], expected)
        assert per_pair[pair].dtype == jnp.float32
    print(f"max relative error vs float64 ({implementation}): {max(errors.values()):.2e}")
    assert max(errors.values()) <= TOL, errors
    assert _rel_err(total, sum(float(v) for v in per_pair.values())) <= TOL


def test_split_relation_heads_keeps_tokens_in_place():
    x = np.arange(2 * 5 * 12, dtype=np.float32).reshape(2, 5, 12)
    heads = np.asarray(rel.split_relation_heads(jnp.asarray(x), 3))
    assert heads.shape == (2, 3, 5, 4)
    for b, r, t in np.ndindex(2, 3, 5):
        np.testing.assert_array_equal(heads[b, r, t], x[b, t, 4 * r : 4 * r + 4])


def test_relation_logits_scaled_and_masked_with_finite_value(batch):
    teacher, _, mask = batch
    q, k = teacher[0], teacher[1]
    logits = np.asarray(
        rel.relation_logits(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), mask, R)
    )
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    qn = np.asarray(q.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    kn = np.asarray(k.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    for b, a in ((0, 0), (1, 3)):
        expected = reference.head_logits(qn[b], kn[b], a, R)
        keys = np.asarray(mask[b]) != 0
        np.testing.assert_allclose(logits[b, a][:, keys], expected[:, keys], rtol=1e-5, atol=1e-5)
        assert (logits[b, a][:, ~keys] == rel.MASKED_LOGIT).all()
    assert float(jnp.asarray(rel.MASKED_LOGIT, jnp.bfloat16)) > -np.inf


def test_relation_kl_matches_reference_on_raw_logits(batch):
    teacher, student, mask = batch
    # Unmasked logits: relation_kl must exclude padded keys itself.
    logits = [
        jnp.einsum(
            "brqd,brkd->brqk",
            rel.split_relation_heads(qkv[0], R),
            rel.split_relation_heads(qkv[1], R),
        )
        / math.sqrt(qkv[0].shape[-1] // R)
        for qkv in (teacher, student)
    ]
    value = jax.jit(rel.relation_kl)(logits[0], logits[1], mask)
    assert (
        _rel_err(value, reference.relation_loss(teacher, student, np.asarray(mask), "qk", R)) <= TOL
    )


# --------------------------------------------------------------------------- properties


def test_kl_is_zero_when_student_equals_teacher(batch):
    teacher, _, mask = batch
    loss, per_pair = rel.minilmv2_loss(teacher, teacher, mask, R)
    assert abs(float(loss)) < 1e-6 and all(abs(float(v)) < 1e-6 for v in per_pair.values())


def test_extra_padding_and_empty_sequences_do_not_change_loss(batch):
    teacher, student, mask = batch
    rng = np.random.default_rng(1)
    extra = 5

    def grow(qkv, width):
        """Padding appended to every sequence, filled with junk, plus one fully padded sequence."""
        junk = lambda *shape: jnp.asarray(9 * rng.standard_normal(shape), jnp.float32)
        return tuple(
            jnp.concatenate(
                [jnp.concatenate([a, junk(B, extra, width)], 1), junk(1, T + extra, width)], 0
            )
            for a in qkv
        )

    padded_mask = jnp.concatenate(
        [jnp.pad(mask, ((0, 0), (0, extra))), jnp.zeros((1, T + extra), mask.dtype)], 0
    )
    for implementation in ("direct", "blocked"):
        base = float(_jit_loss(teacher, student, mask, implementation=implementation))
        grown = _jit_loss(
            grow(teacher, D_T), grow(student, D_S), padded_mask, implementation=implementation
        )
        assert _rel_err(grown, base) <= 1e-6


def test_permuting_sequences_does_not_change_loss(batch):
    teacher, student, mask = batch
    perm = np.array([2, 0, 3, 1])
    shuffle = lambda qkv: tuple(a[perm] for a in qkv)
    base = float(_jit_loss(teacher, student, mask))
    assert _rel_err(_jit_loss(shuffle(teacher), shuffle(student), mask[perm]), base) <= 1e-6


def test_batch_of_only_empty_sequences_gives_zero_not_nan(batch):
    teacher, student, mask = batch
    empty = jnp.zeros_like(mask)
    for implementation in ("direct", "blocked"):
        value, (_, grads) = _jit_value_and_grad(
            teacher, student, empty, implementation=implementation
        )
        assert float(value) == 0.0
        assert all(bool(jnp.all(g == 0)) for g in grads)


@pytest.mark.parametrize("implementation", ["direct", "blocked"])
def test_gradients_reach_student_only_and_not_its_padding(batch, implementation):
    teacher, student, mask = batch
    _, (grad_t, grad_s) = _jit_value_and_grad(teacher, student, mask, implementation=implementation)
    assert all(bool(jnp.all(g == 0)) for g in grad_t)
    padding = np.asarray(mask) == 0
    for g in grad_s:
        g = np.asarray(g)
        assert np.isfinite(g).all() and np.abs(g[~padding]).max() > 1e-4
        assert (g[padding] == 0).all()  # padded tokens are neither keys nor queries


def test_bfloat16_inputs_give_finite_float32_losses_computed_in_float32(batch):
    teacher, student, mask = batch
    big = lambda qkv: tuple((30 * a).astype(jnp.bfloat16) for a in qkv)  # large logits
    mask = mask.at[3].set(0)  # and a fully padded sequence
    for implementation in ("direct", "blocked"):
        value, (_, grads) = _jit_value_and_grad(
            big(teacher), big(student), mask, implementation=implementation
        )
        assert value.dtype == jnp.float32 and bool(jnp.isfinite(value)) and float(value) > 0
        assert all(bool(jnp.all(jnp.isfinite(g.astype(jnp.float32)))) for g in grads)
        # The inputs are upcast before any arithmetic: same as the float32 copies of bf16 values.
        upcast = lambda qkv: tuple(a.astype(jnp.float32) for a in qkv)
        assert (
            _rel_err(
                value,
                float(
                    _jit_loss(
                        upcast(big(teacher)),
                        upcast(big(student)),
                        mask,
                        implementation=implementation,
                    )
                ),
            )
            <= 1e-6
        )


def test_weights_give_weighted_sum(batch):
    teacher, student, mask = batch
    _, per_pair = rel.minilmv2_loss(teacher, student, mask, R, ("qq", "vv"))
    expected = 0.5 * float(per_pair["qq"]) + 2.0 * float(per_pair["vv"])
    for weights in ((0.5, 2.0), {"qq": 0.5, "vv": 2.0}):
        total, _ = rel.minilmv2_loss(teacher, student, mask, R, ("qq", "vv"), weights)
        assert _rel_err(total, expected) <= 1e-6


def test_error_messages(batch):
    teacher, student, mask = batch
    with pytest.raises(ValueError, match=r"D=24 .*R=5"):
        rel.split_relation_heads(student[0], 5)
    ctx = rel.RelationContext(num_relation_heads=5, teacher_num_heads=3, student_num_heads=3)
    with pytest.raises(
        ValueError, match=r"num_relation_heads=5 .*teacher width \(48\).*" r"student width \(24\)"
    ):
        rel.validate_relations(("qq",), ctx, 48, 24)
    with pytest.raises(ValueError, match=r"num_relation_heads=5"):
        rel.distillation_loss(teacher, student, mask, ("vv",), ctx)
    with pytest.raises(ValueError, match=r"implementation='fast' is not one of .*'blocked'"):
        rel.minilmv2_loss(teacher, student, mask, R, implementation="fast")
    with pytest.raises(ValueError, match=r"implementation='fast'"):
        rel.RelationContext(4, 3, 3, implementation="fast")
    with pytest.raises(ValueError, match=r"block_size=0"):
        rel.minilmv2_loss(teacher, student, mask, R, block_size=0)
    with pytest.raises(ValueError, match=r"pair 'qx' must be two letters of q/k/v"):
        rel.minilmv2_loss(teacher, student, mask, R, pairs=("qx",))
    with pytest.raises(ValueError, match=r"repeated: \['qq'\]"):
        rel.minilmv2_loss(teacher, student, mask, R, pairs=("qq", "qq"))
    with pytest.raises(ValueError, match=r"got 1 weights for 2 relations"):
        rel.minilmv2_loss(teacher, student, mask, R, pairs=("qq", "kk"), weights=(1.0,))
    with pytest.raises(ValueError, match=r"attention_mask \(4, 20\)"):
        rel.minilmv2_loss(teacher, student, mask[:, 1:], R)
    with pytest.raises(ValueError, match=r"teacher_num_heads=0"):
        rel.RelationContext(4, 0, 3)


# --------------------------------------------------------------------------- composition


@pytest.fixture(scope="module")
def batches():
    """Eight batches of the same shapes, with their float64 reference losses (sum of PAIRS)."""
    rng = np.random.default_rng(2)
    n = 8
    teacher, student = _triple(rng, n * 2, 12, D_T), _triple(rng, n * 2, 12, D_S)
    # Batch 1 holds one empty sequence, batch 3 only empty ones (its loss is 0).
    lengths = [12, 7, 0, 8, 4, 12, 0, 0, 7, 1, 11, 8, 3, 12, 9, 1]
    mask = _mask(lengths, 12, left_padded={4, 9})
    stack = lambda a: a.reshape(n, 2, *a.shape[1:])
    refs = []
    for i in range(n):
        rows = slice(2 * i, 2 * i + 2)
        t, s = tuple(a[rows] for a in teacher), tuple(a[rows] for a in student)
        refs.append(sum(reference.relation_loss(t, s, np.asarray(mask[rows]), p, R) for p in PAIRS))
    return (tuple(map(stack, teacher)), tuple(map(stack, student)), stack(mask), np.asarray(refs))


@pytest.mark.parametrize("implementation", ["direct", "blocked"])
def test_jit_vmap_pmap_give_the_reference_numbers(batches, implementation):
    teacher, student, mask, refs = batches
    loss = functools.partial(_loss, implementation=implementation, block_size=5)
    for transformed in (jax.jit(jax.vmap(loss)), jax.pmap(loss)):
        values = np.asarray(transformed(teacher, student, mask))
        np.testing.assert_allclose(values, refs, rtol=TOL)


@pytest.mark.parametrize("implementation", ["direct", "blocked"])
def test_shard_map_pmean_equals_mean_of_per_shard_losses(batches, implementation):
    teacher, student, mask, refs = batches
    mesh = jax.make_mesh((8,), ("data",))
    flat = lambda a: a.reshape(-1, *a.shape[2:])  # 8 shards of 2 sequences each
    loss = functools.partial(_loss, implementation=implementation, block_size=5)
    sharded = jax.jit(
        jax.shard_map(
            lambda t, s, m: jax.lax.pmean(loss(t, s, m), "data"),
            mesh=mesh,
            in_specs=(P("data"), P("data"), P("data")),
            out_specs=P(),
        )
    )
    # Batches arrive sharded over `data`, as the train step feeds them.
    shard = lambda a: jax.device_put(flat(a), jax.sharding.NamedSharding(mesh, P("data")))
    value = sharded(jax.tree.map(shard, teacher), jax.tree.map(shard, student), shard(mask))
    assert _rel_err(value, float(np.mean(refs))) <= TOL


# --------------------------------------------------------------------------- blocked


def test_blocked_equals_direct_values_and_gradients(batch):
    teacher, student, mask = batch
    direct_value, (_, direct_grads) = _jit_value_and_grad(teacher, student, mask)
    for block_size in (5, 8, 64):  # 21 = 4x5+1, 2x8+5, one block larger than T
        value, (_, grads) = _jit_value_and_grad(
            teacher, student, mask, implementation="blocked", block_size=block_size
        )
        assert _rel_err(value, float(direct_value)) <= TOL
        for g, g_ref in zip(grads, direct_grads):
            scale = float(jnp.max(jnp.abs(g_ref)))
            assert float(jnp.max(jnp.abs(g - g_ref))) <= TOL * scale


def test_blocked_memory_grows_with_t_times_block_not_t_squared():
    def temp_bytes(implementation, length):
        shapes = lambda w: tuple(
            jax.ShapeDtypeStruct((1, length, w), jnp.float32) for _ in range(3)
        )
        fn = jax.jit(
            jax.grad(
                functools.partial(
                    _loss, implementation=implementation, block_size=16, pairs=("qq",)
                ),
                argnums=1,
            )
        )
        compiled = fn.lower(
            shapes(D_T), shapes(D_S), jax.ShapeDtypeStruct((1, length), jnp.int32)
        ).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    direct = [temp_bytes("direct", n) for n in (256, 512)]
    blocked = [temp_bytes("blocked", n) for n in (256, 512)]
    assert direct[1] > 3.5 * direct[0]  # quadratic
    assert blocked[1] < 2.5 * blocked[0]  # linear (plus small constants)
    assert blocked[1] * 8 < direct[1]


def test_auto_picks_by_sequence_length():
    assert rel.resolve_implementation("auto", rel.AUTO_BLOCKED_MIN_LENGTH - 1) == "direct"
    assert rel.resolve_implementation("auto", rel.AUTO_BLOCKED_MIN_LENGTH) == "blocked"
    assert rel.resolve_implementation("direct", 10_000) == "direct"


# --------------------------------------------------------------------------- registry


@pytest.fixture
def custom_relation():
    names = []

    def register(name, fn, **kwargs):
        rel.register_relation(name, fn, **kwargs)
        names.append(name)

    yield register
    for name in names:
        rel.unregister_relation(name)


def test_custom_relation_is_used_through_distillation_loss(batch, custom_relation):
    teacher, student, mask = batch

    def mean_value_norm_gap(teacher_qkv, student_qkv, attention_mask, ctx):
        del ctx  # a pure function of the vectors and the mask
        w = attention_mask.astype(jnp.float32)[..., None]
        norm = lambda v: jnp.sum(jnp.linalg.norm(v, axis=-1, keepdims=True) * w) / jnp.sum(w)
        return (norm(teacher_qkv[2]) - norm(student_qkv[2])) ** 2

    custom_relation("value_norm_gap", mean_value_norm_gap)
    assert "value_norm_gap" in rel.relation_names()
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        rel.register_relation("value_norm_gap", mean_value_norm_gap)
    rel.register_relation("value_norm_gap", mean_value_norm_gap, replace=True)

    ctx = rel.RelationContext(R, HEADS, HEADS)
    total, per = jax.jit(
        lambda t, s: rel.distillation_loss(
            t, s, mask, ("vv", "value_norm_gap"), ctx, {"value_norm_gap": 3.0}
        )
    )(teacher, student)
    m = np.asarray(mask, np.float64)[..., None]
    norm = lambda v: (
        np.sum(np.linalg.norm(np.asarray(v, np.float64), axis=-1, keepdims=True) * m) / m.sum()
    )
    expected_gap = (norm(teacher[2]) - norm(student[2])) ** 2
    expected_vv = reference.relation_loss(teacher, student, np.asarray(mask), "vv", R)
    assert _rel_err(per["value_norm_gap"], expected_gap) <= TOL
    assert _rel_err(total, expected_vv + 3.0 * expected_gap) <= TOL
    # distillation_loss stops the teacher's gradient for user relations too.
    grad_t, grad_s = jax.jit(
        jax.grad(
            lambda t, s: rel.distillation_loss(t, s, mask, ("value_norm_gap",), ctx)[0],
            argnums=(0, 1),
        )
    )(teacher, student)
    assert all(bool(jnp.all(g == 0)) for g in grad_t) and float(jnp.abs(grad_s[2]).max()) > 0


def test_custom_relation_check_runs_in_validate(custom_relation):
    def needs_even_width(ctx, teacher_width, student_width):
        if student_width % 2:
            raise ValueError(f"student width {student_width} must be even")

    custom_relation("even", lambda t, s, m, c: jnp.zeros(()), check=needs_even_width)
    ctx = rel.RelationContext(1, 1, 1)
    rel.validate_relations(("even",), ctx, 48, 24)
    with pytest.raises(ValueError, match="student width 25 must be even"):
        rel.validate_relations(("even",), ctx, 48, 25)


def test_unknown_and_reserved_names():
    with pytest.raises(
        ValueError,
        match=r"unknown relation 'qqq'.*qq, qk, qv.*attn_qk, attn_vv"
        r".*two letters of q/k/v.*register_relation",
    ):
        rel.get_relation("qqq")
    with pytest.raises(ValueError, match=r"'kq' is a built-in pair name"):
        rel.register_relation("kq", lambda t, s, m, c: 0.0)
    with pytest.raises(ValueError, match=r"unknown relation 'nope'"):
        rel.validate_relations(("qq", "nope"), rel.RelationContext(R, 3, 3), D_T, D_S)


def test_minilm_v1_relations_match_reference(batch):
    teacher, student, mask = batch
    assert rel.MINILM_V1_RELATIONS == ("attn_qk", "attn_vv")
    for implementation in ("direct", "blocked"):
        # num_relation_heads=5 divides neither width: v1 relations must not use it.
        ctx = rel.RelationContext(5, HEADS, HEADS, implementation=implementation, block_size=8)
        total, per = rel.distillation_loss(teacher, student, mask, rel.MINILM_V1_RELATIONS, ctx)
        for name, pair in (("attn_qk", "qk"), ("attn_vv", "vv")):
            assert (
                _rel_err(
                    per[name],
                    reference.relation_loss(teacher, student, np.asarray(mask), pair, HEADS),
                )
                <= TOL
            )
        assert _rel_err(total, float(per["attn_qk"]) + float(per["attn_vv"])) <= 1e-6


def test_minilm_v1_requires_equal_head_counts(batch):
    teacher, student, mask = batch
    ctx = rel.RelationContext(R, teacher_num_heads=12, student_num_heads=6)
    with pytest.raises(ValueError, match=r"teacher_num_heads=12 must equal student_num_heads=6"):
        rel.validate_relations(rel.MINILM_V1_RELATIONS, ctx, 768, 384)
    with pytest.raises(ValueError, match=r"teacher_num_heads=12 must equal student_num_heads=6"):
        rel.distillation_loss(teacher, student, mask, ("attn_qk",), ctx)
    with pytest.raises(ValueError, match=r"attention heads=5 must divide .*\(48\).*\(24\)"):
        rel.validate_relations(("attn_vv",), rel.RelationContext(R, 5, 5), D_T, D_S)


# --------------------------------------------------------------------------- benchmark CLI


def test_bench_dispatcher_lists_names_for_unknown_benchmark(capsys):
    assert bench_main.main(["nope"]) == 2
    assert "relations, step" in capsys.readouterr().err


def test_relations_benchmark_prints_one_json_line_per_case():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench_relations.main(["--sizes", "1x8", "--repeats", "1"])
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["implementation"] for r in records] == ["direct", "blocked"]
    assert all(
        r["measured"] and r["temp_bytes"] > 0 and r["auto_picks"] == "direct" for r in records
    )
    assert abs(records[0]["loss"] - records[1]["loss"]) <= TOL * records[0]["loss"]
