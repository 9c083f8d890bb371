"""Task heads against transformers: ``SpanClassifier`` vs ``*ForQuestionAnswering`` and
``SequenceClassifier`` vs ``*ForSequenceClassification`` for BERT, RoBERTa and XLM-R, on a
ragged batch (ours padded, theirs on each unpadded example), with our head weights copied into
theirs; and ``span_loss`` vs PyTorch's cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import hf_fixtures
from minilm_jax import hf
from minilm_jax.models import heads

FAMILIES = ("bert", "roberta", "xlm-roberta")
LENGTHS = [9, 4, 12, 1]
TOLERANCE = 1e-5  # float32, absolute


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    family = request.param
    path = str(tmp_path_factory.mktemp(family))
    hf_fixtures.make_tiny_hf_model(family, path, seed=3)
    config, encoder = hf.load_pretrained(path)
    batch = hf_fixtures.ragged_batch(
        family, LENGTHS, max(LENGTHS) + 2, vocab_size=config.vocab_size, seed=1,
        type_ids=family == "bert",
    )  # fmt: skip
    return family, path, encoder, batch


def _params(model) -> dict:
    return {path: np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _copy_linear(params, ours: tuple, theirs: torch.nn.Linear) -> None:
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(params[(*ours, "kernel")].T.copy()))
        theirs.bias.copy_(torch.from_numpy(params[(*ours, "bias")]))


def _per_example(reference, batch, output):
    """Runs ``reference`` on each unpadded example; returns the named outputs per row."""
    ids, mask, types = batch
    rows = []
    with torch.no_grad():
        for b, n in enumerate(mask.sum(axis=1)):
            out = reference(
                input_ids=torch.as_tensor(ids[b : b + 1, :n], dtype=torch.long),
                token_type_ids=torch.as_tensor(types[b : b + 1, :n], dtype=torch.long),
            )
            rows.append([getattr(out, name)[0].double().numpy() for name in output])
    return rows


def test_span_classifier_matches_question_answering(checkpoint):
    family, path, encoder, batch = checkpoint
    model = heads.SpanClassifier(encoder, rngs=nnx.Rngs(0))
    reference = transformers.AutoModelForQuestionAnswering.from_pretrained(path).eval()
    expected_class = {
        "bert": "BertForQuestionAnswering",
        "roberta": "RobertaForQuestionAnswering",
        "xlm-roberta": "XLMRobertaForQuestionAnswering",
    }[family]
    assert type(reference).__name__ == expected_class
    _copy_linear(_params(model), ("qa_outputs",), reference.qa_outputs)
    start, end = model(*batch)
    assert start.dtype == end.dtype == np.float32 and start.shape == batch[0].shape
    worst = 0.0
    for b, (want_start, want_end) in enumerate(
        _per_example(reference, batch, ("start_logits", "end_logits"))
    ):
        n = len(want_start)
        for got, want in ((start[b, :n], want_start), (end[b, :n], want_end)):
            worst = max(worst, float(np.max(np.abs(np.asarray(got, np.float64) - want))))
    print(f"{family} span logits: max |ours - transformers| = {worst:.2e}")
    assert worst < TOLERANCE


def test_sequence_classifier_matches_sequence_classification(checkpoint):
    family, path, encoder, batch = checkpoint
    head = heads.resolve_head("auto", family)
    assert head == ("pooler" if family == "bert" else "cls")
    model = heads.SequenceClassifier(encoder, 3, head=head, dropout=0.1, rngs=nnx.Rngs(1))
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=3
    ).eval()
    params = _params(model)
    if head == "pooler":
        _copy_linear(params, ("out",), reference.classifier)
    else:
        _copy_linear(params, ("dense",), reference.classifier.dense)
        _copy_linear(params, ("out",), reference.classifier.out_proj)
    logits = np.asarray(model(*batch), np.float64)
    assert logits.shape == (len(LENGTHS), 3)
    want = np.stack([row[0] for row in _per_example(reference, batch, ("logits",))])
    worst = float(np.max(np.abs(logits - want)))
    print(f"{family} classifier logits ({head}): max |ours - transformers| = {worst:.2e}")
    assert worst < TOLERANCE
    # Dropout is live when not deterministic.
    noisy = model(*batch, deterministic=False, rngs=nnx.Rngs(dropout=0))
    assert not np.allclose(np.asarray(noisy), logits, atol=1e-4)


def test_span_loss_matches_cross_entropy():
    rng = np.random.default_rng(0)
    mask = np.zeros((4, 7), np.int32)
    for b, n in enumerate([7, 3, 5, 0]):  # the last row is a filler row (all padding)
        mask[b, :n] = 1
    start = rng.normal(size=(4, 7)).astype(np.float32) * 3
    end = rng.normal(size=(4, 7)).astype(np.float32) * 3
    start_pos, end_pos = np.array([6, 0, 2, 0]), np.array([6, 2, 4, 0])
    got = np.asarray(heads.span_loss(start, end, start_pos, end_pos, mask))
    ce = torch.nn.functional.cross_entropy
    for b, n in enumerate([7, 3, 5]):
        want = (
            ce(torch.from_numpy(start[b : b + 1, :n]).double(), torch.tensor([start_pos[b]]))
            + ce(torch.from_numpy(end[b : b + 1, :n]).double(), torch.tensor([end_pos[b]]))
        ) / 2
        np.testing.assert_allclose(got[b], want.item(), rtol=1e-6)
    assert np.isfinite(got[3])  # a filler row must not put NaN into a weighted mean


def test_head_errors(checkpoint):
    family, path, encoder, batch = checkpoint
    with pytest.raises(ValueError, match=r"config.head='mean'; allowed"):
        heads.resolve_head("mean", family)
    with pytest.raises(ValueError, match="head='first'; allowed"):
        heads.SequenceClassifier(encoder, 2, head="first", dropout=0.0, rngs=nnx.Rngs(0))
