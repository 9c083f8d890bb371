"""Tests of the DeBERTa-v2/v3 family (minilm_jax.models.deberta, minilm_jax.hf.deberta): parity
with transformers' PyTorch DebertaV2Model on tiny random models of three layouts (every hidden
state and q/k/v), the tap test (attention probabilities recomputed from the tapped q/k and the
exposed relative-position terms equal transformers' own), export/import round trips, config
translation, errors, the frozen-parameter rule against zero gradients, and the tokenizer."""

import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

from deberta_fixtures import (
    STYLES,
    TINY_TEACHER,
    make_tiny_deberta,
    random_deberta,
    torch_deberta_reference,
    write_tiny_deberta_teacher,
    write_tiny_deberta_tokenizer,
)
from hf_fixtures import ragged_batch
from minilm_jax import hf, relations
from minilm_jax.models import build_model, student_config, unreachable_params
from minilm_jax.models.attention import attention_mask, attention_probs
from minilm_jax.models.deberta import Deberta, DebertaConfig, relative_positions

# Real lengths per row: full, ragged, heavily padded (3 of 16), ragged. 16 tokens exceed every
# style's relative range, so log buckets and clipping are exercised.
LENGTHS, SEQ_LEN = [16, 11, 3, 7], 16
TOL = 1e-5


def _batch(vocab_size, seed=0):
    # DeBERTa pads with id 0 like BERT; two segments (ignored when type_vocab_size is 0).
    return ragged_batch("bert", LENGTHS, SEQ_LEN, vocab_size=vocab_size, seed=seed, type_ids=True)


def _diff(ours, theirs, real):
    """Max abs difference over the real positions (axis 1 of [B, T, ...])."""
    ours = np.asarray(ours, np.float64)
    assert ours.shape == theirs.shape
    sel = np.broadcast_to(real.reshape(real.shape + (1,) * (ours.ndim - 2)), ours.shape)
    return float(np.abs(ours - theirs)[sel].max())


@nnx.jit
def _run(model, ids, mask, types):
    """The model's outputs and each layer's attention probabilities recomputed from what the
    model exposes only (tapped q/k, the family's scale, the relative-position terms, the
    mask), and without the position terms. One compiled program per model config."""
    out = model(ids, mask, types)
    cfg, key_mask = model.config, attention_mask(mask.astype(bool))
    kw = dict(num_heads=cfg.num_heads, scale=cfg.attention_scale)
    probs, plain = [], []
    for i, (q, k, _) in enumerate(out.qkv):
        probs.append(
            attention_probs(q, k, key_mask, bias=model.relative_position_bias(i, q, k), **kw)
        )
        plain.append(attention_probs(q, k, key_mask, **kw))
    return out, probs, plain


def _compare(model, torch_model, label):
    """Max abs differences of every hidden state, q, k, v and attention map (real query rows,
    all keys) between our model and transformers' on the ragged batch; and the largest change
    of an attention probability that the relative-position terms make."""
    ids, mask, types = _batch(model.config.vocab_size)
    ref = torch_deberta_reference(torch_model, ids, mask, types)
    out, probs, plain = _run(model, ids, mask, types)
    real = mask.astype(bool)
    assert len(out.hidden_states) == len(ref["hidden_states"]) == model.config.num_layers + 1
    diffs = {
        "hidden": max(_diff(a, b, real) for a, b in zip(out.hidden_states, ref["hidden_states"]))
    }
    for j, name in enumerate("qkv"):
        diffs[name] = max(_diff(a[j], b[j], real) for a, b in zip(out.qkv, ref["qkv"]))
    # [B, H, Tq, Tk] -> query axis second, so real query rows are compared over all keys.
    diffs["attention_probs"] = max(
        _diff(np.moveaxis(np.asarray(p), 2, 1), np.moveaxis(t, 2, 1), real)
        for p, t in zip(probs, ref["attentions"])
    )
    padded_keys = np.broadcast_to(~real[:, None, None, :], probs[0].shape)
    assert not any(np.asarray(p)[padded_keys].any() for p in probs)  # exactly zero
    print(f"parity {label}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOL, diffs
    bias_effect = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(probs, plain)
    )
    return diffs, bias_effect


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """style -> (checkpoint folder, PyTorch model) of a tiny random DebertaV2Model."""
    out = {}
    for seed, style in enumerate(STYLES):
        path = str(tmp_path_factory.mktemp(f"deberta_{style}"))
        out[style] = (path, make_tiny_deberta(path, style, seed=seed))
    return out


# --- relative positions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "buckets, max_relative, length",
    [(256, 512, 700), (256, -1, 600), (6, 10, 40), (8, -1, 80), (-1, 6, 20), (32, 128, 300)],
)
def test_relative_positions_match_transformers(buckets, max_relative, length):
    config = DebertaConfig(
        vocab_size=10,
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        intermediate_size=16,
        position_buckets=buckets,
        max_relative_positions=max_relative,
    )
    x = torch.zeros(1, length, 1)
    theirs = build_relative_position(
        x, x, bucket_size=buckets, max_position=config.max_relative_distance
    )[0].numpy()
    np.testing.assert_array_equal(relative_positions(config, length), theirs)


# --- parity with transformers and the tap test ----------------------------------------------


@pytest.mark.parametrize("style", list(STYLES))
def test_parity_and_tap_with_transformers(tiny, style):
    path, torch_model = tiny[style]
    config, model = hf.load_pretrained(path)
    assert isinstance(model, Deberta) and config.family == "deberta-v2"
    theirs = torch_model.config
    for ours_name, their_name in [
        ("vocab_size", "vocab_size"),
        ("hidden_size", "hidden_size"),
        ("num_layers", "num_hidden_layers"),
        ("num_heads", "num_attention_heads"),
        ("intermediate_size", "intermediate_size"),
        ("max_position_embeddings", "max_position_embeddings"),
        ("type_vocab_size", "type_vocab_size"),
        ("layer_norm_eps", "layer_norm_eps"),
        ("pad_token_id", "pad_token_id"),
        ("position_buckets", "position_buckets"),
        ("max_relative_positions", "max_relative_positions"),
        ("share_att_key", "share_att_key"),
        ("position_biased_input", "position_biased_input"),
    ]:
        assert getattr(config, ours_name) == getattr(theirs, their_name), ours_name
    assert set(config.pos_att_type) == set(theirs.pos_att_type)
    # The epsilon barely moves outputs at unit variance, so check every LayerNorm carries it.
    norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.LayerNorm)]
    expected = 1 + 2 * config.num_layers + (config.norm_rel_ebd == "layer_norm")
    assert len(norms) == expected + bool(config.conv_kernel_size)
    assert all(m.epsilon == theirs.layer_norm_eps for m in norms)
    _, bias_effect = _compare(model, torch_model, f"{style} base model")
    # The position terms matter: without them the attention is far from transformers'.
    assert bias_effect > 0.05


def test_masked_lm_checkpoint_drops_head_and_unused_positions(tmp_path, caplog):
    torch_model = make_tiny_deberta(tmp_path, "v3", head="masked_lm", seed=7)
    file = os.path.join(tmp_path, "model.safetensors")
    weights = load_file(file)
    # DeBERTa-v3 checkpoints carry an absolute position table the model never reads.
    weights["deberta.embeddings.position_embeddings.weight"] = np.ones((64, 32), np.float32)
    save_file(weights, file, metadata={"format": "pt"})
    caplog.set_level(logging.INFO, logger="minilm_jax.hf")
    _, model = hf.load_pretrained(tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    dropped = [m for m in messages if "dropped" in m and "weights that the encoder" in m]
    assert len(dropped) == 1  # one line naming every dropped head weight
    head_keys = [k for k in weights if not k.startswith("deberta.")]
    assert head_keys and all(k in dropped[0] for k in head_keys)
    assert any(
        "embeddings.position_embeddings.weight" in m and "never reads" in m for m in messages
    )
    _compare(model, torch_model, "v3 masked LM")


# --- export / import -------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["v3", "v2"])
def test_student_round_trip_through_transformers(tiny, tmp_path, style):
    teacher_config = hf.load_config(tiny[style][0])
    config = student_config("2x64", teacher_config, num_heads=4)
    assert isinstance(config, DebertaConfig)
    model = random_deberta(config, seed=3)
    hf.save_pretrained(config, model, tmp_path)

    torch_model = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(torch_model).__name__ == "DebertaV2Model"
    _compare(model, torch_model, f"{style} saved student")

    loaded_config, loaded = hf.load_pretrained(tmp_path)
    assert loaded_config == config
    ours = dict(nnx.to_flat_state(nnx.state(model)))
    theirs = dict(nnx.to_flat_state(nnx.state(loaded)))
    assert ours.keys() == theirs.keys()
    for path in ours:
        np.testing.assert_array_equal(ours[path][...], theirs[path][...], err_msg=str(path))


def test_student_config_from_spec():
    teacher = hf.config_from_hf_dict(DEBERTA_V3_BASE)
    student = student_config("6x384", teacher)
    assert isinstance(student, DebertaConfig)
    assert (student.num_layers, student.hidden_size, student.num_heads) == (6, 384, 12)
    assert (student.intermediate_size, student.head_dim) == (1536, 32)
    shared = [
        f
        for f in teacher.to_dict()
        if f not in ("num_layers", "hidden_size", "num_heads", "intermediate_size")
    ]
    assert all(getattr(student, f) == getattr(teacher, f) for f in shared)
    assert student.attention_scale == (32 * 3) ** -0.5
    assert (student.position_offset, student.max_sequence_length) == (0, 512)
    model = nnx.eval_shape(lambda: build_model(student, rngs=nnx.Rngs(0)))
    assert isinstance(model, Deberta) and len(model.layers) == 6


# --- config ----------------------------------------------------------------------------------

# microsoft/deberta-v3-base's config.json.
DEBERTA_V3_BASE = {
    "model_type": "deberta-v2",
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "relative_attention": True,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": "p2c|c2p",
    "layer_norm_eps": 1e-7,
    "max_relative_positions": -1,
    "position_biased_input": False,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "type_vocab_size": 0,
    "vocab_size": 128100,
}
# microsoft/deberta-v2-xlarge's config.json (the conv layer).
DEBERTA_V2_XLARGE = {
    "model_type": "deberta-v2",
    "attention_head_size": 64,
    "attention_probs_dropout_prob": 0.1,
    "conv_act": "gelu",
    "conv_kernel_size": 3,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "layer_norm_eps": 1e-7,
    "max_position_embeddings": 512,
    "max_relative_positions": -1,
    "norm_rel_ebd": "layer_norm",
    "num_attention_heads": 24,
    "num_hidden_layers": 24,
    "pad_token_id": 0,
    "pos_att_type": "p2c|c2p",
    "position_biased_input": False,
    "position_buckets": 256,
    "relative_attention": True,
    "share_att_key": True,
    "type_vocab_size": 0,
    "vocab_size": 128100,
}


def test_real_configs_translate_both_ways():
    v3 = hf.config_from_hf_dict(DEBERTA_V3_BASE)
    assert (v3.relative_span, v3.max_relative_distance, v3.pad_token_id) == (256, 512, 0)
    assert v3.pos_att_type == ("p2c", "c2p") and v3.norm_rel_ebd == "layer_norm"
    assert v3 == DebertaConfig(
        vocab_size=128100, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
    )  # our defaults are DeBERTa-v3's
    xl = hf.config_from_hf_dict(DEBERTA_V2_XLARGE)
    assert (xl.conv_kernel_size, xl.conv_act, xl.conv_groups) == (3, "gelu", 1)
    for config in (v3, xl):
        d = hf.config_to_hf_dict(config)
        assert hf.config_from_hf_dict(json.loads(json.dumps(d))) == config
        theirs = transformers.DebertaV2Config(**{k: v for k, v in d.items() if k != "model_type"})
        for key in ("position_buckets", "share_att_key", "norm_rel_ebd", "conv_kernel_size"):
            assert getattr(theirs, key, 0) == d.get(key, 0), key
        assert DebertaConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(conv_kernel_size=2), r"conv_kernel_size=2; must be 0 \(no conv layer\) or odd"),
        (
            dict(conv_kernel_size=3, conv_act="relu"),
            r"conv_act='relu'; allowed: \('tanh', 'gelu'\)",
        ),
        (dict(pos_att_type=("c2p", "p2p")), r"pos_att_type=\('c2p', 'p2p'\); must be distinct"),
        (dict(pos_att_type=()), r"relative_attention=True with an empty pos_att_type"),
        (dict(norm_rel_ebd="rms"), r"norm_rel_ebd='rms'; allowed: \('none', 'layer_norm'\)"),
        (dict(position_buckets=1), r"position_buckets=1 needs position_buckets >= 2"),
        (dict(type_vocab_size=-1), r"type_vocab_size=-1; must be an int >= 0"),
        (dict(family="bert"), r"family='bert'; allowed: \('deberta-v2',\)"),
        (dict(hidden_size=30), r"hidden_size=30 is not divisible by num_heads=4"),
    ],
)
def test_config_rejects_bad_values(change, match):
    base = dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    with pytest.raises(ValueError, match=match):
        DebertaConfig(**{**base, **change})


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(embedding_size=128), r"embedding_size 128 differs from hidden_size 768"),
        (dict(conv_kernel_size=4), r"config.json: DebertaConfig.conv_kernel_size=4"),
        (dict(pos_att_type="c2p|p2p"), r"pos_att_type=\('c2p', 'p2p'\)"),
        (dict(norm_rel_ebd="layer_norm|other"), r"norm_rel_ebd 'layer_norm\|other' is not"),
        (dict(attention_head_size=32), r"attention_head_size 32 x num_attention_heads 12"),
    ],
)
def test_hf_config_refusals_name_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        hf.config_from_hf_dict({**DEBERTA_V3_BASE, **change})


def _write_checkpoint(path, weights, config):
    os.makedirs(path)
    save_file(weights, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def test_checkpoint_errors_name_file_and_key(tiny, tmp_path):
    path = tiny["v3"][0]
    weights = load_file(os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    missing = {k: v for k, v in weights.items() if k != "encoder.rel_embeddings.weight"}
    _write_checkpoint(tmp_path / "missing", missing, config)
    with pytest.raises(
        ValueError, match=r"missing: checkpoint lacks weights \['encoder.rel_embeddings.weight'\]"
    ):
        hf.load_pretrained(tmp_path / "missing")
    # A separate position projection in a share_att_key=True model is an architecture we do
    # not implement: an error, not a dropped head.
    extra_key = "encoder.layer.0.attention.self.pos_key_proj.weight"
    extra = dict(weights, **{extra_key: weights["encoder.layer.0.attention.self.key_proj.weight"]})
    _write_checkpoint(tmp_path / "unknown", extra, config)
    with pytest.raises(
        ValueError,
        match=r"unknown: encoder weights that a deberta-v2 encoder of 2 layers does not have: "
        + re.escape(f"['{extra_key}']"),
    ):
        hf.load_pretrained(tmp_path / "unknown")


# --- model behaviour -------------------------------------------------------------------------


def test_truncation_dropout_and_bfloat16(tiny):
    config, model = hf.load_pretrained(tiny["v3"][0])
    ids, mask, types = _batch(config.vocab_size)
    full, _, _ = _run(model, ids, mask, types)
    assert full.pooler_output is None
    bf16_graphdef = nnx.graphdef(
        nnx.eval_shape(lambda: Deberta(config.replace(dtype="bfloat16"), rngs=nnx.Rngs(0)))
    )

    @nnx.jit
    def variants(model, key):
        bf16 = nnx.merge(bf16_graphdef, nnx.state(model))
        return (
            model(ids, mask, types, num_layers=1),
            model(ids, mask, types, deterministic=False, rngs=key),
            bf16(ids, mask, types),
        )

    first, dropped, bf16 = variants(model, jax.random.key(0))
    assert len(first.hidden_states) == 2 and len(first.qkv) == 1
    np.testing.assert_array_equal(first.hidden_states[1], full.hidden_states[1])
    assert np.isfinite(np.asarray(dropped.last_hidden_state)).all()
    assert not np.allclose(dropped.last_hidden_state, full.last_hidden_state)
    # bfloat16 compute, float32 parameters: close to float32 at bfloat16 precision.
    assert bf16.last_hidden_state.dtype == jnp.bfloat16
    real = mask.astype(bool)
    assert _diff(bf16.last_hidden_state, np.asarray(full.last_hidden_state, np.float64), real) < 0.1
    with pytest.raises(ValueError, match=r"num_layers=3; must be an int in \[1, 2\]"):
        model(ids, mask, num_layers=3)
    with pytest.raises(ValueError, match="needs rngs="):
        model(ids, mask, deterministic=False)


# Pair sets: all three (the rule's `used` = q, k, v) and Q-K only (`used` = q, k).
ALL_PAIRS, QK = (frozenset("qkv"), ("qq", "kk", "vv")), (frozenset("qk"), ("qk",))


@pytest.mark.parametrize("num_layers, cases", [(2, (ALL_PAIRS,)), (1, (QK,))])
def test_unreachable_params_match_zero_gradients(num_layers, cases):
    """The family's frozen-set rule equals the parameters whose relation-loss gradient is
    exactly zero, with every optional part present (conv, separate position projections,
    LayerNormed relative table, absolute positions, token types)."""
    config = DebertaConfig(
        vocab_size=40,
        hidden_size=16,
        num_layers=num_layers,
        num_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        type_vocab_size=2,
        position_buckets=4,
        max_relative_positions=8,
        share_att_key=False,
        position_biased_input=True,
        conv_kernel_size=3,
    )
    model = random_deberta(config, seed=1)
    ids, mask, types = ragged_batch("bert", [12, 7], 12, vocab_size=40, type_ids=True)
    rng = np.random.default_rng(0)
    teacher = tuple(jnp.asarray(rng.standard_normal((2, 12, 24)), jnp.float32) for _ in range(3))

    @nnx.jit
    def gradients(model):
        def loss(m, pairs):
            out = m(ids, mask, types)
            return relations.minilmv2_loss(teacher, out.qkv[-1], mask, 4, pairs=pairs)[0]

        return [nnx.grad(loss)(model, pairs) for _, pairs in cases]

    params = nnx.state(model, nnx.Param)
    for (used, _), grads in zip(cases, gradients(model)):
        frozen = dict(nnx.to_flat_state(unreachable_params(config, params, used)))
        zero = {p: not np.any(np.asarray(g[...])) for p, g in nnx.to_flat_state(grads)}
        assert zero.keys() == frozen.keys()
        wrong = sorted((str(p), zero[p]) for p in zero if zero[p] != frozen[p].get_value())
        assert not wrong, (used, wrong)
        names = {"/".join(map(str, p)) for p in zero if zero[p]}
        assert f"layers/{num_layers - 1}/attention/pos_key/kernel" in names
        assert ("rel_embeddings/embedding" in names) == (num_layers == 1)
        assert ("conv/conv/kernel" in names) == (num_layers == 1)


# --- tokenizer and smoke teacher -------------------------------------------------------------


def test_deberta_v3_style_tokenizer_json_loads(tmp_path):
    write_tiny_deberta_tokenizer(tmp_path)
    ours = hf.load_tokenizer(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "DebertaV2Tokenizer"
    for args in (
        ("the cat sat on the mat.",),
        ("Hello  world!\tthis", "is a longer text"),
        ("xyz",),
    ):
        enc = ours.encode(*args)
        ref = theirs(*args)
        assert enc.ids == ref["input_ids"] and enc.type_ids == ref["token_type_ids"], args
    assert ours.encode("a").ids[0] == 1 and ours.encode("a").ids[-1] == 2  # [CLS] ... [SEP]


def test_tiny_smoke_teacher_loads_everywhere(tmp_path):
    texts = ["the cat sat on the mat", "a dog is in the text", "hello world, one sentence"] * 20
    config = write_tiny_deberta_teacher(
        tmp_path,
        texts,
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        intermediate_size=64,
        vocab_size=60,
    )
    assert {k: getattr(config, k) for k in TINY_TEACHER} == TINY_TEACHER
    loaded_config, model = hf.load_pretrained(tmp_path)
    assert loaded_config == config
    tok = hf.load_tokenizer(tmp_path)
    enc = tok.encode("the cat sat on the mat")
    assert enc.ids[0] == tok.token_to_id("[CLS]") == 1 and enc.ids[-1] == 2
    # transformers reads it too (outputs of exported models: test_student_round_trip...).
    assert type(transformers.AutoModel.from_pretrained(tmp_path)).__name__ == "DebertaV2Model"
    assert type(transformers.AutoTokenizer.from_pretrained(tmp_path)).__name__ == (
        "DebertaV2Tokenizer"
    )
    assert isinstance(model, Deberta)
