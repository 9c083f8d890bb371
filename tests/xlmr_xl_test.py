"""XLM-R XL/XXL (models/xlmr_xl.py, hf/xlmr_xl.py) against transformers' PyTorch
XLMRobertaXLModel on tiny random checkpoints: every layer's hidden states, q/k/v and the pooler,
the relation tap vs the teacher's own attention probabilities, an MLM checkpoint without a
pooler, export -> AutoModel -> import, the frozen-set rule vs zero gradients, student specs."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from family_fixtures import (
    flat_bools,
    forward,
    gradient_is_zero,
    make_tiny_family_model,
    random_family_model,
    ragged_batch,
    real_max_diff,
    real_query_max_diff,
    torch_attentions,
)
from hf_fixtures import torch_reference
from minilm_jax import hf
from minilm_jax.models import TransformerConfig, student_config, unreachable_params
from minilm_jax.models.attention import attention_mask, attention_probs
from minilm_jax.models.xlmr_xl import XLMRobertaXLConfig

LENGTHS, SEQ_LEN = [16, 11, 3, 7], 16
TOL = 1e-5


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_xlmr_xl"))
    torch_model = make_tiny_family_model("xlm-roberta-xl", path, seed=0)
    config, model = hf.load_pretrained(path)
    ids, mask = ragged_batch(
        LENGTHS, SEQ_LEN, family="xlm-roberta-xl", vocab_size=config.vocab_size
    )
    return dict(
        path=path,
        torch=torch_model,
        config=config,
        model=model,
        batch=(ids, mask),
        ref=torch_reference(torch_model, ids, mask),
        out=forward(model, ids, mask),
    )


def _parity(out, ref, mask):
    assert len(out.hidden_states) == len(ref["hidden_states"])
    diffs = {
        "hidden": max(
            real_max_diff(a, b, mask) for a, b in zip(out.hidden_states, ref["hidden_states"])
        )
    }
    for j, name in enumerate("qkv"):
        diffs[name] = max(real_max_diff(o[j], r[j], mask) for o, r in zip(out.qkv, ref["qkv"]))
    if ref["pooler_output"] is not None:
        diffs["pooler"] = float(np.abs(np.asarray(out.pooler_output) - ref["pooler_output"]).max())
    return diffs


def test_parity_with_transformers(teacher):
    config, theirs = teacher["config"], teacher["torch"].config
    assert isinstance(config, XLMRobertaXLConfig) and config.family == "xlm-roberta-xl"
    assert (config.num_layers, config.layer_norm_eps, config.pad_token_id) == (
        theirs.num_hidden_layers,
        theirs.layer_norm_eps,
        theirs.pad_token_id,
    )
    ids, mask = teacher["batch"]
    diffs = _parity(teacher["out"], teacher["ref"], mask)
    print("parity xlm-roberta-xl: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert "pooler" in diffs and max(diffs.values()) <= TOL, diffs
    # The final LayerNorm is in the last hidden state, as in transformers.
    np.testing.assert_array_equal(
        teacher["out"].last_hidden_state, teacher["out"].hidden_states[-1]
    )


def test_tap_reproduces_teacher_attention(teacher):
    """softmax(q k^T / sqrt(d)) of the tapped projections (after the pre-attention LayerNorm),
    masked with the padding, equals transformers' eager attention probabilities."""
    config, (ids, mask) = teacher["config"], teacher["batch"]
    theirs = torch_attentions(teacher["torch"], ids, mask)
    key_mask = attention_mask(jnp.asarray(mask, bool))
    diffs = [
        real_query_max_diff(
            attention_probs(
                q, k, key_mask, num_heads=config.num_heads, scale=config.head_dim**-0.5
            ),
            a,
            mask,
        )
        for (q, k, _), a in zip(teacher["out"].qkv, theirs)
    ]
    print(
        "xlm-roberta-xl tap probabilities: max diff per layer "
        + ", ".join(f"{d:.2e}" for d in diffs)
    )
    assert max(diffs) <= TOL


def test_masked_lm_checkpoint(tmp_path, caplog):
    """XLMRobertaXLForMaskedLM (how facebook/xlm-roberta-xl is published): the "roberta."
    prefix is stripped, the LM head dropped and logged, the missing pooler initialised."""
    torch_model = make_tiny_family_model("xlm-roberta-xl", tmp_path, head="masked_lm", seed=2)
    caplog.set_level(logging.INFO, logger="minilm_jax.hf")
    config, model = hf.load_pretrained(tmp_path)
    assert "lm_head.dense.weight" in caplog.text and "freshly initialised" in caplog.text
    ids, mask = ragged_batch(
        LENGTHS, SEQ_LEN, family="xlm-roberta-xl", vocab_size=config.vocab_size
    )
    diffs = _parity(forward(model, ids, mask), torch_reference(torch_model, ids, mask), mask)
    print(
        "parity xlm-roberta-xl masked-LM checkpoint: "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    )
    assert max(diffs.values()) <= TOL, diffs


def test_student_round_trip_through_transformers(teacher, tmp_path):
    config = student_config("2x64", teacher["config"], num_heads=4)
    assert isinstance(config, XLMRobertaXLConfig) and config.intermediate_size == 256
    model = random_family_model(config, seed=3)
    hf.save_pretrained(config, model, tmp_path)
    torch_model = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(torch_model).__name__ == "XLMRobertaXLModel"
    ids, mask = teacher["batch"]
    diffs = _parity(forward(model, ids, mask), torch_reference(torch_model, ids, mask), mask)
    print(
        "parity xlm-roberta-xl saved student: "
        + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    )
    assert "pooler" in diffs and max(diffs.values()) <= TOL, diffs

    loaded_config, loaded = hf.load_pretrained(tmp_path)
    assert loaded_config == config
    ours = dict(nnx.to_flat_state(nnx.state(model)))
    theirs = dict(nnx.to_flat_state(nnx.state(loaded)))
    assert ours.keys() == theirs.keys()
    for path in ours:
        np.testing.assert_array_equal(ours[path][...], theirs[path][...], err_msg=str(path))


PAIR_SETS = [("qq", "kk", "vv"), ("qk",), ("vv",)]


def test_frozen_set_is_exactly_the_zero_gradients(teacher):
    """Pre-LayerNorm: the last layer's attention LayerNorm is reachable (unlike BERT's
    post-LayerNorm); its attention output, feed-forward (with its LayerNorm), unused
    projections, the final LayerNorm and the pooler get no gradient."""
    config = student_config("2x64", teacher["config"], num_heads=4)
    ids, mask = teacher["batch"]
    model = random_family_model(config, seed=5)
    params, zeros = gradient_is_zero(model, ids, mask, teacher["out"].qkv[-1], PAIR_SETS, 4)
    for pairs, zero in zip(PAIR_SETS, zeros):
        frozen = flat_bools(unreachable_params(config, params, frozenset("".join(pairs))))
        assert frozen.keys() == zero.keys()
        assert {p for p, f in frozen.items() if f} == {p for p, z in zero.items() if z}, pairs
        assert not frozen[("layers", 1, "attention", "layer_norm", "scale")]
        assert frozen[("final_norm", "scale")] and frozen[("pooler", "dense", "kernel")]


def test_truncated_run_and_config():
    config = XLMRobertaXLConfig(
        family="xlm-roberta-xl",
        vocab_size=100,
        hidden_size=32,
        num_layers=3,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=42,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
    )
    model = random_family_model(config)
    ids, mask = ragged_batch(LENGTHS, SEQ_LEN, family="xlm-roberta-xl", vocab_size=100)
    full, part = forward(model, ids, mask), forward(model, ids, mask, num_layers=2)
    assert len(part.hidden_states) == 3 and part.pooler_output is None
    for a, b in zip(part.hidden_states, full.hidden_states[:3]):
        np.testing.assert_array_equal(a, b)  # layer 2's raw residual stream: no final norm
    assert full.pooler_output.shape == (4, 32)
    assert XLMRobertaXLConfig.from_dict(config.to_dict()) == config
    with pytest.raises(
        ValueError, match=r"XLMRobertaXLConfig.family='xlm-roberta'; allowed: \('xlm-roberta-xl',\)"
    ):
        config.replace(family="xlm-roberta")
    with pytest.raises(ValueError, match=r"TransformerConfig.family='xlm-roberta-xl'; allowed"):
        TransformerConfig(**{**config.to_dict(), "family": "xlm-roberta-xl"})
