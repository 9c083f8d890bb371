"""ModernBERT (models/modernbert.py, hf/modernbert.py) against transformers' PyTorch
ModernBertModel on tiny random checkpoints whose sequences are longer than the local window:
every layer's hidden states and q/k/v, padded batches vs each sequence alone, the relation tap
vs the teacher's own attention probabilities, checkpoints with heads, export -> AutoModel ->
import, the frozen-set rule vs zero gradients, configs and student specs."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from family_fixtures import (
    SMOKE_TEACHERS,
    flat_bools,
    forward,
    gradient_is_zero,
    make_tiny_family_model,
    modernbert_reference,
    random_family_model,
    ragged_batch,
    real_max_diff,
    real_query_max_diff,
)
from minilm_jax import hf
from minilm_jax.models import build_model, student_config, unreachable_params
from minilm_jax.models.attention import attention_mask, attention_probs
from minilm_jax.models.modernbert import ModernBert, ModernBertConfig

# Real lengths per row: full, ragged, shorter than the window (9 keys), ragged; all but one
# row are longer than the local window of the tiny config (local_attention=8: |i - j| <= 4).
LENGTHS, SEQ_LEN = [24, 17, 5, 11], 24
TOL = 1e-5


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """(folder, PyTorch model, our config, our model, batch, reference outputs)."""
    path = str(tmp_path_factory.mktemp("tiny_modernbert"))
    torch_model = make_tiny_family_model("modernbert", path, seed=0)
    config, model = hf.load_pretrained(path)
    ids, mask = ragged_batch(LENGTHS, SEQ_LEN, family="modernbert", vocab_size=config.vocab_size)
    ref = modernbert_reference(torch_model, ids, mask)
    out = forward(model, ids, mask)
    return dict(
        path=path,
        torch=torch_model,
        config=config,
        model=model,
        batch=(ids, mask),
        ref=ref,
        out=out,
    )


def _with_config(model, **changes):
    """The same parameters under a config with other tap/dtype/dropout settings."""
    config = model.config.replace(**changes)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))


def _parity(out, ref, mask, *, qk="rotary"):
    """Max abs differences over real tokens: hidden states (all layers) and q, k, v."""
    assert len(out.hidden_states) == len(ref["hidden_states"])
    diffs = {
        "hidden": max(
            real_max_diff(a, b, mask) for a, b in zip(out.hidden_states, ref["hidden_states"])
        )
    }
    qk_ref = ref["rotary"] if qk == "rotary" else [p[:2] for p in ref["projections"]]
    for j, name in enumerate("qk"):
        diffs[name] = max(real_max_diff(o[j], r[j], mask) for o, r in zip(out.qkv, qk_ref))
    diffs["v"] = max(real_max_diff(o[2], r[2], mask) for o, r in zip(out.qkv, ref["projections"]))
    return diffs


# --- parity with transformers ----------------------------------------------------------------


def test_config_read_from_checkpoint(teacher):
    config, theirs = teacher["config"], teacher["torch"].config
    assert isinstance(config, ModernBertConfig)
    assert (
        config.vocab_size,
        config.hidden_size,
        config.num_layers,
        config.num_heads,
        config.intermediate_size,
        config.max_position_embeddings,
        config.pad_token_id,
        config.local_attention,
        config.norm_eps,
        config.global_rope_theta,
        config.local_rope_theta,
    ) == (
        theirs.vocab_size,
        theirs.hidden_size,
        theirs.num_hidden_layers,
        theirs.num_attention_heads,
        theirs.intermediate_size,
        theirs.max_position_embeddings,
        theirs.pad_token_id,
        theirs.local_attention,
        theirs.norm_eps,
        theirs.rope_parameters["full_attention"]["rope_theta"],
        theirs.rope_parameters["sliding_attention"]["rope_theta"],
    )
    assert (
        list(config.layer_types)
        == theirs.layer_types
        == [
            "full_attention",
            "sliding_attention",
            "sliding_attention",
        ]
    )


@pytest.mark.parametrize("qk_tap", ["rotary", "projection"])
def test_parity_with_transformers(teacher, qk_tap):
    """Every hidden state and, per layer, q and k (after HF's rotary embedding, or HF's raw Wqkv
    chunks with qk_tap='projection') and v, on a ragged batch longer than the window."""
    ids, mask = teacher["batch"]
    model = (
        teacher["model"] if qk_tap == "rotary" else _with_config(teacher["model"], qk_tap=qk_tap)
    )
    out = forward(model, ids, mask)
    diffs = _parity(out, teacher["ref"], mask, qk=qk_tap)
    print(
        f"parity modernbert (qk_tap={qk_tap}): "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    )
    assert max(diffs.values()) <= TOL, diffs
    assert out.pooler_output is None
    # The final norm is in the last hidden state, as in transformers.
    np.testing.assert_array_equal(out.last_hidden_state, out.hidden_states[-1])


def test_padded_batch_equals_each_sequence_alone(teacher):
    """Right-padded rows give on their real tokens what the sequence gives unpadded (the
    unpadded model: transformers run on the row alone, no mask)."""
    ids, mask = teacher["batch"]
    out = teacher["out"]
    worst = 0.0
    for row, n in enumerate(LENGTHS):
        alone = modernbert_reference(
            teacher["torch"], ids[row : row + 1, :n], mask[row : row + 1, :n]
        )
        ones = np.ones((1, n), np.int32)
        for ours, theirs in zip(out.hidden_states, alone["hidden_states"]):
            worst = max(worst, real_max_diff(ours[row : row + 1, :n], theirs, ones))
        for layer, theirs in zip(out.qkv, alone["rotary"]):
            for j in range(2):
                worst = max(worst, real_max_diff(layer[j][row : row + 1, :n], theirs[j], ones))
    print(f"modernbert padded vs alone: max diff {worst:.2e}")
    assert worst <= TOL


def _recomputed_probs(config, q, k, mask, layer):
    """Attention probabilities from the tapped q/k with the family's scale, window and mask."""
    window = config.local_attention if config.layer_types[layer] == "sliding_attention" else None
    key_mask = attention_mask(jnp.asarray(mask, bool), window=window)
    return attention_probs(q, k, key_mask, num_heads=config.num_heads, scale=config.head_dim**-0.5)


def test_tap_reproduces_teacher_attention(teacher):
    """The tap test: softmax(q k^T / sqrt(d)) of the tapped (rotary) q and k, masked with the
    padding and, on local layers, the window, equals transformers' own eager attention
    probabilities on real query rows. Without the window, or from the pre-rotary projections,
    it does not (so the test can tell)."""
    config, (ids, mask) = teacher["config"], teacher["batch"]
    out = teacher["out"]
    projection = forward(_with_config(teacher["model"], qk_tap="projection"), ids, mask)
    diffs = []
    for layer, theirs in enumerate(teacher["ref"]["attentions"]):
        q, k, _ = out.qkv[layer]
        diffs.append(
            real_query_max_diff(_recomputed_probs(config, q, k, mask, layer), theirs, mask)
        )
        pq, pk, _ = projection.qkv[layer]
        unrotated = _recomputed_probs(config, pq, pk, mask, layer)
        assert real_query_max_diff(unrotated, theirs, mask) > 0.01
        if config.layer_types[layer] == "sliding_attention":
            no_window = attention_probs(
                q,
                k,
                attention_mask(jnp.asarray(mask, bool)),
                num_heads=config.num_heads,
                scale=config.head_dim**-0.5,
            )
            assert real_query_max_diff(no_window, theirs, mask) > 0.01
    print(
        "modernbert tap probabilities: max diff per layer " + ", ".join(f"{d:.2e}" for d in diffs)
    )
    assert max(diffs) <= TOL


def test_parity_with_biases_odd_window_and_other_pattern(tmp_path, caplog):
    """Config variants: biases everywhere, an odd window (7: |i - j| <= 3), global attention
    every second layer, other rotary bases, a ModernBertForMaskedLM checkpoint whose head
    weights are dropped and named in the log."""
    torch_model = make_tiny_family_model(
        "modernbert",
        tmp_path,
        head="masked_lm",
        seed=1,
        attention_bias=True,
        mlp_bias=True,
        norm_bias=True,
        local_attention=7,
        global_attn_every_n_layers=2,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 5000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 300.0},
        },
    )
    caplog.set_level(logging.INFO, logger="minilm_jax.hf")
    config, model = hf.load_pretrained(tmp_path)
    assert config.layer_types == ("full_attention", "sliding_attention", "full_attention")
    assert (config.local_attention, config.global_rope_theta, config.local_rope_theta) == (
        7,
        5000.0,
        300.0,
    )
    messages = caplog.text
    assert "dropped" in messages and "head.dense.weight" in messages and "decoder.bias" in messages
    ids, mask = ragged_batch(
        LENGTHS, SEQ_LEN, family="modernbert", vocab_size=config.vocab_size, seed=1
    )
    ref = modernbert_reference(torch_model, ids, mask)
    out = forward(model, ids, mask)
    diffs = _parity(out, ref, mask)
    diffs["tap"] = max(
        real_query_max_diff(_recomputed_probs(config, *out.qkv[i][:2], mask, i), a, mask)
        for i, a in enumerate(ref["attentions"])
    )
    print(
        "parity modernbert (biases, window 7, global every 2): "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    )
    assert max(diffs.values()) <= TOL, diffs


# --- export --------------------------------------------------------------------------------


def test_student_round_trip_through_transformers(teacher, tmp_path):
    """A ModernBERT student from a spec, saved, loads in transformers.AutoModel (its default
    sdpa attention) with the same outputs, and loads back bit-identical."""
    config = student_config("2x64", teacher["config"], num_heads=4)
    model = random_family_model(config, seed=3)
    hf.save_pretrained(config, model, tmp_path)
    torch_model = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(torch_model).__name__ == "ModernBertModel"
    ids, mask = teacher["batch"]
    ref = modernbert_reference(torch_model, ids, mask, attentions=False)
    diffs = _parity(forward(model, ids, mask), ref, mask)
    print(
        "parity modernbert saved student (sdpa): "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    )
    assert max(diffs.values()) <= TOL, diffs

    loaded_config, loaded = hf.load_pretrained(tmp_path)
    assert loaded_config == config
    ours = dict(nnx.to_flat_state(nnx.state(model)))
    theirs = dict(nnx.to_flat_state(nnx.state(loaded)))
    assert ours.keys() == theirs.keys()
    for path in ours:
        np.testing.assert_array_equal(ours[path][...], theirs[path][...], err_msg=str(path))


# --- frozen set ----------------------------------------------------------------------------


PAIR_SETS = [("qq", "kk", "vv"), ("qk",), ("vv",), ("qq",)]


def test_frozen_set_is_exactly_the_zero_gradients(teacher):
    """unreachable_params names exactly the parameters whose gradient of a relation loss on the
    last layer is all zero (for relations over q, k, v; q, k; v; q): the last layer's attention
    output and feed-forward, its unused projections, the final norm. The last layer's
    pre-attention norm is reachable."""
    config = student_config("2x64", teacher["config"], num_heads=4)
    ids, mask = teacher["batch"]
    model = random_family_model(config, seed=5)
    params, zeros = gradient_is_zero(model, ids, mask, teacher["out"].qkv[-1], PAIR_SETS, 4)
    for pairs, zero in zip(PAIR_SETS, zeros):
        frozen = flat_bools(unreachable_params(config, params, frozenset("".join(pairs))))
        assert frozen.keys() == zero.keys()
        assert {p for p, f in frozen.items() if f} == {p for p, z in zero.items() if z}, pairs
        assert not frozen[("layers", 1, "attention", "layer_norm", "scale")]
        assert (
            frozen[("final_norm", "scale")]
            and frozen[("layers", 1, "attention", "output", "kernel")]
        )
    assert sum(flat_bools(unreachable_params(config, params, frozenset("q"))).values()) == 8


# --- configs --------------------------------------------------------------------------------


def test_student_config_is_a_modernbert():
    teacher = ModernBertConfig(
        family="modernbert",
        vocab_size=100,
        hidden_size=768,
        num_layers=22,
        num_heads=12,
        intermediate_size=1152,
        max_position_embeddings=8192,
        pad_token_id=98,
        local_attention=128,
        local_rope_theta=20000.0,
        cls_token_id=96,
        qk_tap="projection",
    )
    student = student_config("6x384", teacher)
    assert isinstance(student, ModernBertConfig)
    assert (
        student.num_layers,
        student.hidden_size,
        student.num_heads,
        student.intermediate_size,
    ) == (
        6,
        384,
        12,
        576,  # the teacher's 1.5 ratio of its gated feed-forward, not 4 x hidden
    )
    shared = (
        "family",
        "vocab_size",
        "max_position_embeddings",
        "pad_token_id",
        "local_attention",
        "global_attn_every_n_layers",
        "global_rope_theta",
        "local_rope_theta",
        "norm_eps",
        "cls_token_id",
        "qk_tap",
    )
    assert all(getattr(student, f) == getattr(teacher, f) for f in shared)
    assert (
        student_config("2x64", teacher, num_heads=4, intermediate_size=100).intermediate_size == 100
    )
    assert ModernBertConfig.from_dict(student.to_dict()) == student
    with pytest.raises(ValueError, match=r"unknown ModernBertConfig field\(s\) \['hidden'\]"):
        student_config("6x384", teacher, hidden=3)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(family="bert"), r"ModernBertConfig.family='bert'; allowed: \('modernbert',\)"),
        (dict(num_heads=8, hidden_size=40), r"head size hidden_size / num_heads = 5 must be even"),
        (dict(qk_tap="pre"), r"qk_tap='pre'; allowed: \('rotary', 'projection'\)"),
        (dict(local_attention=0), r"local_attention=0; must be a positive int"),
        (dict(hidden_act="silu"), r"hidden_act='silu'; allowed: \('gelu',\)"),
        (dict(embedding_dropout=1.0), r"embedding_dropout=1.0; must be in \[0, 1\)"),
        (dict(pad_token_id=100), r"pad_token_id=100; must be in \[0, vocab_size=100\)"),
    ],
)
def test_config_rejects_bad_values(change, match):
    base = dict(
        family="modernbert",
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    with pytest.raises(ValueError, match=match):
        ModernBertConfig(**{**base, **change})


LEGACY = dict(  # the config.json spelling of released checkpoints (answerdotai/ModernBERT-base)
    model_type="modernbert",
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    global_attn_every_n_layers=2,
    global_rope_theta=80000.0,
    local_rope_theta=5000.0,
    local_attention=16,
    pad_token_id=3,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
    norm_eps=1e-6,
    hidden_activation="gelu",
)


def test_hf_config_spellings_agree_with_transformers():
    """Legacy keys, transformers 5's own re-spelling of them, and our export all give the same
    config; transformers reads our export with the same layer types and rotary bases."""
    ours = hf.config_from_hf_dict(LEGACY)
    assert ours.layer_types == ("full_attention", "sliding_attention") * 2
    assert (ours.global_rope_theta, ours.local_rope_theta) == (80000.0, 5000.0)
    respelled = transformers.ModernBertConfig(**LEGACY).to_dict()
    assert "global_rope_theta" not in respelled and respelled["layer_types"]
    assert hf.config_from_hf_dict(respelled) == ours
    exported = hf.config_to_hf_dict(ours)
    assert hf.config_from_hf_dict(exported) == ours
    theirs = transformers.ModernBertConfig(**exported)
    assert theirs.layer_types == list(ours.layer_types)
    assert theirs.rope_parameters["full_attention"]["rope_theta"] == 80000.0
    assert theirs.rope_parameters["sliding_attention"]["rope_theta"] == 5000.0
    assert (theirs.local_attention, theirs.norm_eps, theirs.pad_token_id) == (16, 1e-6, 3)
    json.dumps(exported)  # plain JSON


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            dict(
                layer_types=[
                    "full_attention",
                    "full_attention",
                    "sliding_attention",
                    "full_attention",
                ]
            ),
            r"layer_types .* is not supported; allowed: global attention every n-th layer",
        ),
        (
            dict(rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 2.0}}),
            r"rope_parameters\['full_attention'\]\.rope_type='yarn' is not supported; "
            r"allowed: \['default'\]",
        ),
        (dict(hidden_activation="silu"), r"config\.json: ModernBertConfig\.hidden_act='silu'"),
        (
            dict(num_hidden_layers=None),
            r"ModernBertConfig\.num_layers=None; must be a positive int",
        ),
    ],
)
def test_hf_config_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        hf.config_from_hf_dict({**LEGACY, **changes}, source="config.json")


# --- forward ------------------------------------------------------------------------------


def test_truncation_dropout_and_bfloat16(teacher):
    model, (ids, mask) = teacher["model"], teacher["batch"]
    full = teacher["out"]
    part = forward(model, ids, mask, num_layers=2)
    assert len(part.hidden_states) == 3 and len(part.qkv) == 2
    for a, b in zip(part.hidden_states, full.hidden_states[:3]):
        np.testing.assert_array_equal(a, b)
    # No final norm on a truncated run (it normalises the last layer's output only).
    np.testing.assert_array_equal(part.last_hidden_state, part.hidden_states[-1])
    with pytest.raises(ValueError, match=r"num_layers=4; must be an int in \[1, 3\]"):
        model(ids, mask, num_layers=4)
    with pytest.raises(ValueError, match=r"input length 65 exceeds the 64 positions"):
        model(np.zeros((1, 65), np.int32), np.ones((1, 65), np.int32))

    noisy = _with_config(model, hidden_dropout=0.2, attention_dropout=0.2)
    graphdef, state = nnx.split(noisy)
    assert {type(v) for _, v in nnx.to_flat_state(state)} == {nnx.Param}
    with pytest.raises(ValueError, match=r"deterministic=False applies dropout and needs rngs="):
        noisy(ids, mask, deterministic=False)
    a = forward(noisy, ids, mask, rngs=jax.random.key(1)).last_hidden_state
    b = forward(noisy, ids, mask, rngs=jax.random.key(1)).last_hidden_state
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(full.last_hidden_state)).max() > 0.1

    half = forward(_with_config(model, dtype="bfloat16"), ids, mask)
    assert half.last_hidden_state.dtype == jnp.bfloat16 and half.qkv[-1][0].dtype == jnp.bfloat16
    err = real_max_diff(
        np.asarray(half.last_hidden_state, np.float32), full.last_hidden_state, mask
    )
    assert err < 0.1 * np.abs(np.asarray(full.last_hidden_state)).max()


def test_init_follows_transformers():
    """HF's init: truncated normal (cut at 2 std) N(0, initializer_range) for the input
    projections and embeddings, std / sqrt(2 num_layers) for the output projections, unit
    norms, zero padding row."""
    config = ModernBertConfig(
        family="modernbert",
        vocab_size=100,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        pad_token_id=98,
        initializer_range=0.05,
    )
    state = jax.jit(lambda: nnx.state(ModernBert(config, rngs=nnx.Rngs(0))))()  # one compile
    flat = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}
    assert not flat[("embeddings", "word_embeddings", "embedding")][98].any()
    inputs = np.concatenate(
        [v.ravel() for p, v in flat.items() if p[-1] == "kernel" and p[-2] != "output"]
    )
    outputs = np.concatenate(
        [v.ravel() for p, v in flat.items() if p[-1] == "kernel" and p[-2] == "output"]
    )
    trunc_std = 0.05 * 0.8796  # std of a standard normal truncated at +-2
    assert abs(inputs.std() - trunc_std) < 0.002 and np.abs(inputs).max() <= 0.1
    assert abs(outputs.std() - trunc_std / 2) < 0.002 and np.abs(outputs).max() <= 0.05
    assert all(np.all(v == 1) for p, v in flat.items() if p[-1] == "scale")
    assert not any(p[-1] == "bias" for p in flat)  # no biases by default


@pytest.mark.parametrize("family", ["modernbert", "xlm-roberta-xl"])
def test_smoke_teacher_fixture_loads_with_its_tokenizer(tmp_path, family):
    """The recommended tiny smoke teachers load, and their tokenizers fit them."""
    make_tiny_family_model(family, tmp_path, **SMOKE_TEACHERS[family])
    config, _ = hf.load_pretrained(tmp_path)
    assert (config.family, config.num_layers, config.hidden_size) == (family, 4, 64)
    ids = hf.load_tokenizer(tmp_path).encode("hello world, the cat sat").ids
    assert max(ids) < config.vocab_size and len(ids) == 8
    if family == "modernbert":
        assert config.layer_types == ("full_attention", "sliding_attention") + (
            "sliding_attention",
            "full_attention",
        )
        assert (ids[0], ids[-1]) == (config.cls_token_id, config.sep_token_id)
    else:
        assert (ids[0], ids[-1]) == (config.bos_token_id, config.eos_token_id)


def test_checkpoint_errors_name_the_file_and_key(teacher, tmp_path):
    """Fused tensors are checked whole: a missing or mis-shaped Wqkv/Wi, and encoder weights the
    config does not describe, are errors naming the key."""
    src = teacher["path"]
    weights = load_file(os.path.join(src, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        hf_config = json.load(f)

    def write(name, weights, **changes):
        path = tmp_path / name
        path.mkdir()
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps({**hf_config, **changes}))
        return path

    missing = {k: v for k, v in weights.items() if k != "layers.1.attn.Wqkv.weight"}
    with pytest.raises(
        ValueError, match=r"checkpoint lacks weights \['layers\.1\.attn\.Wqkv\.weight'\]"
    ):
        hf.load_pretrained(write("missing", missing))
    with pytest.raises(
        ValueError,
        match=r"shape.*: weight 'layers\.0\.mlp\.Wi\.weight' has shape \(96, 32\) but the config "
        r"needs \(80, 32\)",
    ):
        hf.load_pretrained(write("shape", weights, intermediate_size=40))
    with pytest.raises(
        ValueError,
        match=r"encoder weights that a modernbert encoder of 3 layers does not have: "
        r"\['embeddings\.norm\.bias'\]",
    ):
        hf.load_pretrained(
            write("bias", {**weights, "embeddings.norm.bias": weights["embeddings.norm.weight"]})
        )
