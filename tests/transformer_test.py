"""Tests of minilm_jax.models.transformer that need no checkpoint: config, student specs,
position ids, layer truncation, dropout, bfloat16 compute, init. Parity with transformers'
PyTorch models is in hf_test.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

from hf_fixtures import random_model
from minilm_jax.models import Transformer, TransformerConfig, position_ids, student_config
from minilm_jax.models.attention import attention_mask

# bfloat16 keeps 8 significant bits: unit roundoff 2^-9.
BF16_UNIT_ROUNDOFF = 2.0**-9


def _config(family="bert", **kw):
    base = dict(
        family=family,
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=40 if family == "bert" else 42,
        type_vocab_size=2 if family == "bert" else 1,
        layer_norm_eps=1e-12 if family == "bert" else 1e-5,
        pad_token_id=0 if family == "bert" else 1,
    )
    base.update(kw)
    return TransformerConfig(**base)


def _with_config(model, **changes):
    """The same parameters under a config with other dtype/dropout settings."""
    config = model.config.replace(**changes)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))


def _batch(lengths, seq_len, *, vocab_size=100, pad=0, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), seq_len), pad, np.int32)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(5, vocab_size, n)
        mask[b, :n] = 1
    return ids, mask


# --- config --------------------------------------------------------------------------------


def test_config_properties_and_dict_round_trip():
    bert, roberta = _config("bert"), _config("roberta")
    assert bert.head_dim == 8 and bert.position_offset == 0 and bert.max_sequence_length == 40
    assert roberta.position_offset == 2 and roberta.max_sequence_length == 40
    assert TransformerConfig.from_dict(roberta.to_dict()) == roberta
    assert roberta.replace(dtype="bfloat16").dtype == "bfloat16"


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(family="gpt2"), r"family='gpt2'; allowed: \('bert', 'roberta', 'xlm-roberta'\)"),
        (dict(hidden_size=30), r"hidden_size=30 is not divisible by num_heads=4"),
        (dict(dtype="float16"), r"dtype='float16'; allowed: \('float32', 'bfloat16'\)"),
        (dict(pad_token_id=100), r"pad_token_id=100; must be in \[0, vocab_size=100\)"),
        (dict(hidden_act="relu"), r"hidden_act='relu'; allowed: \('gelu',\)"),
        (dict(hidden_dropout=1.0), r"hidden_dropout=1.0; must be in \[0, 1\)"),
        (dict(num_layers=0), r"num_layers=0; must be a positive int"),
    ],
)
def test_config_rejects_bad_values(change, match):
    with pytest.raises(ValueError, match=match):
        _config(**change)


def test_config_dict_errors():
    d = _config().to_dict()
    with pytest.raises(ValueError, match=r"unknown TransformerConfig field\(s\) \['hidden'\]"):
        TransformerConfig.from_dict({**d, "hidden": 3})
    del d["vocab_size"]
    with pytest.raises(ValueError, match=r"lacks required field\(s\) \['vocab_size'\]"):
        TransformerConfig.from_dict(d)
    with pytest.raises(ValueError, match=r"unknown TransformerConfig field\(s\) \['layers'\]"):
        _config().replace(layers=3)


def test_student_config_from_spec():
    teacher = _config(
        "xlm-roberta",
        hidden_size=64,
        intermediate_size=3072,
        bos_token_id=0,
        eos_token_id=2,
        hidden_dropout=0.2,
    )
    student = student_config("6x384", teacher)
    assert (
        student.num_layers,
        student.hidden_size,
        student.num_heads,
        student.intermediate_size,
    ) == (6, 384, 12, 1536)  # FFN 4 x hidden, not the teacher's
    shared = (
        "family",
        "vocab_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "hidden_dropout",
    )
    assert all(getattr(student, f) == getattr(teacher, f) for f in shared)
    custom = student_config("3X128", teacher, num_heads=4, intermediate_size=100, dtype="bfloat16")
    assert (
        custom.num_layers,
        custom.hidden_size,
        custom.num_heads,
        custom.intermediate_size,
        custom.dtype,
    ) == (3, 128, 4, 100, "bfloat16")


@pytest.mark.parametrize(
    "spec, kw, match",
    [
        ("6-384", {}, r"student spec '6-384' is not of the form 'LAYERSxHIDDEN'"),
        ("L6xH384", {}, r"not of the form 'LAYERSxHIDDEN'"),
        ("0x384", {}, r"layers and hidden size must be positive"),
        ("6x100", {}, r"hidden size 100 is not divisible by num_heads=12"),
        ("6x384", dict(hidden=3), r"unknown TransformerConfig field"),
    ],
)
def test_student_config_errors(spec, kw, match):
    with pytest.raises(ValueError, match=match):
        student_config(spec, _config(), **kw)


# --- position ids ----------------------------------------------------------------------------


def test_position_ids_match_transformers():
    # Pads inside and at the end of rows, and a row that is all padding.
    ids = np.array(
        [
            [0, 7, 8, 9, 2, 1, 1],
            [0, 7, 1, 9, 2, 1, 1],
            [1, 1, 1, 1, 1, 1, 1],
            [0, 5, 6, 7, 8, 9, 2],
        ],
        np.int32,
    )
    roberta = _config("roberta")
    expected = RobertaEmbeddings.create_position_ids_from_input_ids(
        torch.as_tensor(ids, dtype=torch.long), padding_idx=1
    ).numpy()
    np.testing.assert_array_equal(position_ids(roberta, jnp.asarray(ids)), expected)
    np.testing.assert_array_equal(
        position_ids(_config("bert"), jnp.asarray(ids)), np.broadcast_to(np.arange(7), ids.shape)
    )


# --- forward ---------------------------------------------------------------------------------


def test_num_layers_runs_exactly_the_first_layers():
    model = random_model(_config("roberta", num_layers=3))
    ids, mask = _batch([16, 9, 4, 0], 16, pad=1)
    full = model(ids, mask)
    assert len(full.hidden_states) == 4 and len(full.qkv) == 3
    assert full.pooler_output.shape == (4, 32)
    for n in (1, 2):
        part = model(ids, mask, num_layers=n)
        assert len(part.hidden_states) == n + 1 and len(part.qkv) == n
        assert part.pooler_output is None  # the pooler reads the last layer, which did not run
        np.testing.assert_array_equal(part.last_hidden_state, full.hidden_states[n])
        for a, b in zip(part.hidden_states, full.hidden_states):
            np.testing.assert_array_equal(a, b)
        for qkv_a, qkv_b in zip(part.qkv, full.qkv):
            for a, b in zip(qkv_a, qkv_b):
                np.testing.assert_array_equal(a, b)
    for bad in (0, 4):
        with pytest.raises(ValueError, match=rf"num_layers={bad}; must be an int in \[1, 3\]"):
            model(ids, mask, num_layers=bad)


def test_input_errors():
    model = random_model(_config("roberta"))
    ids, mask = _batch([41], 41, pad=1)
    with pytest.raises(ValueError, match=r"input length 41 exceeds the 40 positions"):
        model(ids, mask)
    with pytest.raises(ValueError, match=r"must all be \[batch, length\]"):
        model(ids[:, :5], mask[:, :4])


def test_dropout_uses_call_time_rngs_and_model_holds_only_params():
    model = random_model(_config("bert", hidden_dropout=0.3, attention_dropout=0.3))
    graphdef, state = nnx.split(model)
    assert {type(v) for _, v in nnx.to_flat_state(state)} == {nnx.Param}
    ids, mask = _batch([16, 9, 4, 1], 16)
    eval_out = model(ids, mask).last_hidden_state
    with pytest.raises(ValueError, match=r"deterministic=False applies dropout and needs rngs="):
        model(ids, mask, deterministic=False)
    a = model(ids, mask, deterministic=False, rngs=jax.random.key(1)).last_hidden_state
    b = model(ids, mask, deterministic=False, rngs=nnx.Rngs(dropout=1)).last_hidden_state
    c = model(ids, mask, deterministic=False, rngs=jax.random.key(2)).last_hidden_state
    np.testing.assert_array_equal(a, b)  # a key seeds the same 'dropout' stream as nnx.Rngs
    assert np.abs(a - c).max() > 0.1 and np.abs(a - eval_out).max() > 0.1
    # No RNG state was consumed or stored: the model state is unchanged.
    for (_, v1), (_, v2) in zip(nnx.to_flat_state(state), nnx.to_flat_state(nnx.state(model))):
        np.testing.assert_array_equal(v1[...], v2[...])

    # With both rates 0, training mode is the identity on the eval forward and needs no rngs.
    no_dropout = _with_config(model, hidden_dropout=0.0, attention_dropout=0.0)
    np.testing.assert_array_equal(
        no_dropout(ids, mask, deterministic=False).last_hidden_state, eval_out
    )


@pytest.mark.parametrize("site", ["attention_probs", "attention_output", "feed_forward_output"])
def test_each_dropout_site_is_applied(site):
    """Attention-probability dropout uses attention_dropout; the attention and feed-forward
    outputs use hidden_dropout (the embeddings: test_dropout_rate_on_embeddings)."""
    rates = dict(
        hidden_dropout=0.0 if site == "attention_probs" else 0.3,
        attention_dropout=0.3 if site == "attention_probs" else 0.0,
    )
    layer = random_model(_config("bert", **rates)).layers[0]
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 32)), jnp.float32)
    key_mask = attention_mask(jnp.ones((4, 16), bool))
    if site == "feed_forward_output":
        run = lambda det: layer.feed_forward(x, deterministic=det, rngs=nnx.Rngs(dropout=0))
    else:
        run = lambda det: layer.attention(x, key_mask, deterministic=det, rngs=nnx.Rngs(dropout=0))[
            0
        ]
    assert np.abs(run(False) - run(True)).max() > 0.1


def test_dropout_rate_on_embeddings():
    """Embedding dropout zeroes a `rate` fraction of entries and scales the rest by 1/(1-rate)."""
    config = _config("bert", hidden_dropout=0.25, attention_dropout=0.0)
    model = random_model(config)
    ids, mask = _batch([16] * 4, 16)
    emb = model.embeddings
    clean = emb(jnp.asarray(ids), jnp.zeros_like(ids), deterministic=True, rngs=None)
    noisy = emb(
        jnp.asarray(ids), jnp.zeros_like(ids), deterministic=False, rngs=nnx.Rngs(dropout=0)
    )
    dropped = np.asarray(noisy) == 0
    assert abs(dropped.mean() - 0.25) < 0.04  # 4*16*32 = 2048 entries: 4 sigma ~ 0.038
    np.testing.assert_allclose(
        np.asarray(noisy)[~dropped], np.asarray(clean)[~dropped] / 0.75, rtol=1e-6
    )


def test_fully_padded_rows_stay_finite_and_padding_does_not_leak():
    model = random_model(_config("bert"))
    ids, mask = _batch([12, 0, 5, 16], 16)
    out = model(ids, mask)
    assert all(np.isfinite(h).all() for h in out.hidden_states)
    # Padded keys carry no weight: other tokens at padded positions change nothing real.
    ids2 = ids.copy()
    ids2[0, 12:] = [7, 8, 9, 10]
    out2 = model(ids2, mask)
    np.testing.assert_array_equal(out.last_hidden_state[0, :12], out2.last_hidden_state[0, :12])
    assert np.abs(out.last_hidden_state[0, 12:] - out2.last_hidden_state[0, 12:]).max() > 0.1


def test_bfloat16_compute_close_to_float32():
    """bfloat16 compute with float32 params against float32 compute, same params.

    Tolerance: bfloat16 keeps 8 significant bits (unit roundoff u = 2^-9 ~ 0.002). Each layer
    rounds a few times (matmul inputs, residual sum, LayerNorm output), each a relative error
    <= u of values up to max|h|, and the errors of earlier layers carry over, so after l layers
    (embeddings = layer 0) we allow max|err| <= 4 (l+1) u max|h_l| and a mean |err| <=
    2 (l+1) u rms(h_l). Measured on this model the errors are about half of both bounds (0.047
    vs 0.095 max, 0.006 vs 0.012 mean at the last layer); a reduction or softmax in bfloat16,
    or an unnormalised bf16 residual stream, exceeds them.
    """
    model32 = random_model(_config("bert"))
    model16 = _with_config(model32, dtype="bfloat16")
    assert all(v[...].dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(model16)))
    ids, mask = _batch([16, 11, 3, 0], 16)  # the last row is fully padded
    out32, out16 = model32(ids, mask), model16(ids, mask)
    real = mask[..., None].astype(bool)
    u = BF16_UNIT_ROUNDOFF
    tensors = [(l, a, b) for l, (a, b) in enumerate(zip(out32.hidden_states, out16.hidden_states))]
    tensors += [
        (l + 1, a, b)
        for l, (qa, qb) in enumerate(zip(out32.qkv, out16.qkv))
        for a, b in zip(qa, qb)
    ]
    for l, a32, a16 in tensors:
        assert a16.dtype == jnp.bfloat16 and a32.dtype == jnp.float32
        a16 = np.asarray(a16, np.float32)
        assert np.isfinite(a16).all()  # padded rows included
        a32 = np.asarray(a32)
        err = np.abs(a16 - a32)[np.broadcast_to(real, a32.shape)]
        ref = np.abs(a32)[np.broadcast_to(real, a32.shape)]
        print(
            f"bf16 vs f32, layer {l}: max err {err.max():.4f} (bound "
            f"{4 * (l + 1) * u * ref.max():.4f}), mean err {err.mean():.5f} "
            f"(bound {2 * (l + 1) * u * np.sqrt((ref**2).mean()):.5f})"
        )
        assert err.max() <= 4 * (l + 1) * u * ref.max()
        assert err.mean() <= 2 * (l + 1) * u * np.sqrt((ref**2).mean())
    assert out16.pooler_output.dtype == jnp.bfloat16


def test_init_follows_transformers():
    """HF init: kernels and embeddings N(0, initializer_range), zero biases, unit LayerNorm,
    zero padding rows (word embeddings; RoBERTa position embeddings)."""
    config = _config("roberta", initializer_range=0.05)
    model = Transformer(config, rngs=nnx.Rngs(0))
    word = np.asarray(model.embeddings.word_embeddings.embedding[...])
    pos = np.asarray(model.embeddings.position_embeddings.embedding[...])
    assert not word[1].any() and not pos[1].any() and word[0].any() and pos[2].any()
    kernels = np.concatenate(
        [
            np.asarray(v[...]).ravel()
            for p, v in nnx.to_flat_state(nnx.state(model))
            if p[-1] == "kernel"
        ]
    )
    assert abs(kernels.std() - 0.05) < 0.0015 and abs(kernels.mean()) < 0.0015  # ~17k draws
    for p, v in nnx.to_flat_state(nnx.state(model)):
        if p[-1] == "bias":
            assert not np.asarray(v[...]).any(), p
        if p[-1] == "scale":
            np.testing.assert_array_equal(v[...], 1.0)
    bert = Transformer(_config("bert"), rngs=nnx.Rngs(0))
    assert not np.asarray(bert.embeddings.word_embeddings.embedding[...])[0].any()
    assert np.asarray(bert.embeddings.position_embeddings.embedding[...])[0].any()


def test_pure_jit_step_over_split_state():
    """The train-step pattern: jax.jit over nnx.split state with the graphdef bound outside and
    the dropout key as an argument gives the eager result, and traces once per shape."""
    model = random_model(_config("bert"))
    graphdef, state = nnx.split(model)
    ids, mask = _batch([16, 9, 4, 1], 16)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(state, ids, mask, key):
        model = nnx.merge(graphdef, state)
        return model(ids, mask, deterministic=False, rngs=key).last_hidden_state

    eager = model(ids, mask, deterministic=False, rngs=jax.random.key(5)).last_hidden_state
    jitted = forward(state, ids, mask, jax.random.key(5))
    np.testing.assert_allclose(jitted, eager, atol=1e-5)
    forward(state, ids, mask, jax.random.key(6))  # a new key must not retrace
