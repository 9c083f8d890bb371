"""Extractive question answering (SQuAD 1.1, SQuAD 2.0, MLQA): examples, windows, decoding and
the official SQuAD metrics. NumPy and the ``tokenizers`` library only; a fine-tuning loop feeds
``make_batch`` dicts to a span head (``minilm_jax.models.heads.SpanClassifier``) and hands the
logits back to ``decode``. ``docs/evaluation.md`` states every rule below with its source.

- ``QAExample`` and the readers: TFDS ``squad/v1.1`` / ``squad/v2.0`` (``read_squad``) and the
  official SQuAD-format JSON files (``read_squad_json``); ``minilm_jax.mlqa`` reads MLQA.
- ``QAEncoder.windows``: question + context windows (BERT ``[CLS] q [SEP] c [SEP]``, types 0/1;
  RoBERTa/XLM-R ``<s> q </s></s> c </s>``, types 0) of at most ``max_len`` tokens, consecutive
  windows starting ``doc_stride`` context tokens apart, the question cut to
  ``max_question_len`` tokens; start/end labels on the answer's tokens, or on token 0 when the
  question is unanswerable or the answer is not wholly inside the window.
- ``decode``: n-best span search per window, null score from token 0 (minimum over an
  example's windows), the null-vs-span threshold.
- Metrics: ``squad_v2_scores`` and ``squad_v2_best_thresholds`` (``evaluate-v2.0.py``),
  ``squad_v1_scores`` (``evaluate-v1.1.py``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import re
import string
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import tokenizers

from minilm_jax.data.packing import FAIRSEQ_FAMILIES, special_token_ids
from minilm_jax.data.sources import as_text
from minilm_jax.tfds_source import open_source

# ---------------------------------------------------------------------------------------------
# Examples and readers
# ---------------------------------------------------------------------------------------------

SQUAD_VERSIONS = ("1.1", "2.0")


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One question about one context. ``answers`` are the gold texts (empty: unanswerable);
    ``answer_starts`` their character offsets in ``context`` where known (training uses the
    first answer and its start)."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()


def golds(examples: Iterable[QAExample]) -> dict[str, list[str]]:
    """id -> gold answer texts, the first argument of the metrics."""
    return {example.id: list(example.answers) for example in examples}


def squad_dataset(version: str) -> str:
    """The TFDS name of a SQuAD version ("2.0" -> "squad/v2.0")."""
    version = str(version).lstrip("v")
    if version not in SQUAD_VERSIONS:
        raise ValueError(f"SQuAD version {version!r}; allowed: {SQUAD_VERSIONS}")
    return f"squad/v{version}"


def read_squad(
    version: str, split: str, data_dir: str | None = None, limit: int = 0
) -> list[QAExample]:
    """The examples of TFDS ``squad/v<version>`` split "train" or "validation" (the first
    ``limit`` ones when ``limit`` > 0); never downloads."""
    name = squad_dataset(version)
    return examples_from_source(
        open_source(name, split, data_dir), f"{name} split {split!r}", limit
    )


def examples_from_source(source: Sequence[Any], what: str, limit: int = 0) -> list[QAExample]:
    """QA examples from a random-access sequence of TFDS squad-like dicts (id, question,
    context, answers {text, answer_start}; SQuAD 2.0 adds is_impossible). ``what`` names the
    data in errors."""
    n = len(source) if limit <= 0 else min(limit, len(source))
    if n == 0:
        raise ValueError(f"{what} has no examples")
    examples = []
    for i in range(n):
        row = source[i]
        if i == 0:
            missing = [f for f in ("id", "question", "context", "answers") if f not in row]
            if missing:
                raise ValueError(
                    f"{what}: examples lack feature(s) {missing}; they have {sorted(row)}"
                )
        impossible = bool(np.asarray(row.get("is_impossible", False)))
        texts = () if impossible else tuple(as_text(t) for t in row["answers"]["text"])
        starts = () if impossible else tuple(int(s) for s in row["answers"]["answer_start"])
        examples.append(
            QAExample(
                as_text(row["id"]), as_text(row["question"]), as_text(row["context"]), texts, starts
            )
        )
    return _check_unique(examples, what)


def read_squad_json(path: str, limit: int = 0) -> list[QAExample]:
    """Examples of an official SQuAD-format file (``{"data": [{"paragraphs": [{"context",
    "qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}``;
    train-v1.1.json, dev-v2.0.json, MLQA's dev/test files)."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)["data"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path} is not a SQuAD-format JSON file ({{'data': [...]}}): {e}"
            ) from e
    examples = []
    try:
        for article in data:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers = [] if qa.get("is_impossible", False) else qa["answers"]
                    examples.append(
                        QAExample(
                            str(qa["id"]),
                            qa["question"],
                            context,
                            tuple(a["text"] for a in answers),
                            tuple(int(a["answer_start"]) for a in answers),
                        )
                    )
                    if 0 < limit <= len(examples):
                        return _check_unique(examples, path)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not SQuAD format, missing field {e}") from e
    if not examples:
        raise ValueError(f"{path} has no questions")
    return _check_unique(examples, path)


def _check_unique(examples: list[QAExample], what: str) -> list[QAExample]:
    counts = collections.Counter(example.id for example in examples)
    repeated = [i for i, c in counts.items() if c > 1]
    if repeated:
        raise ValueError(f"{what}: {len(repeated)} question id(s) occur twice, e.g. {repeated[:3]}")
    return examples


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """How examples are cut into model inputs (run_squad's defaults)."""

    max_len: int = 384  # tokens per window, special tokens included
    doc_stride: int = 128  # context tokens between the starts of consecutive windows
    max_question_len: int = 64  # longer questions keep their first tokens

    def __post_init__(self):
        for name in ("max_len", "doc_stride", "max_question_len"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"config.{name}={value!r}: must be a positive integer")


@dataclasses.dataclass(frozen=True)
class WindowStats:
    """What windowing did: counts to report before training."""

    examples: int
    windows: int
    unanswerable: int  # examples without a gold answer
    answer_in_no_window: int  # answerable examples whose first answer no window holds whole
    answer_text_mismatch: int  # context[start:start+len(text)] != text (still labelled by chars)
    questions_truncated: int  # questions cut to max_question_len tokens


@dataclasses.dataclass(frozen=True)
class Windows:
    """The model inputs of a list of examples; window w belongs to example
    ``example_index[w]`` and holds its context tokens ``context_begin[w]`` ..
    ``context_begin[w] + context_length[w] - 1`` at positions ``context_position[w]`` .. of the
    window. ``offsets[i]`` are the character spans of example i's context tokens, with the
    whitespace that some tokenizers include (SentencePiece's "▁") trimmed."""

    input_ids: tuple[np.ndarray, ...]  # int32, unpadded
    token_type_ids: tuple[np.ndarray, ...]
    example_index: np.ndarray  # int32 [W]
    context_position: np.ndarray  # int32 [W]
    context_begin: np.ndarray  # int32 [W]
    context_length: np.ndarray  # int32 [W]
    start_positions: np.ndarray  # int32 [W], 0 = no answer in this window
    end_positions: np.ndarray  # int32 [W]
    lengths: np.ndarray  # int32 [W], tokens per window
    offsets: tuple[np.ndarray, ...]  # int32 [context tokens, 2] per example
    stats: WindowStats

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows: Sequence[int], length: int, pad_id: int) -> dict[str, np.ndarray]:
        """``make_batch`` of these windows (the fine-tuning trainer's Features protocol)."""
        return make_batch(self, rows, length, pad_id)


@functools.cache
def _whitespace_codes() -> np.ndarray:
    """Every code point whose character str.isspace() calls whitespace (29 of them)."""
    return np.asarray([c for c in range(0x110000) if chr(c).isspace()], np.uint32)


def token_offsets(text: str, encoding: tokenizers.Encoding) -> np.ndarray:
    """int32 [tokens, 2] character spans of an encoding's tokens in ``text``, without leading
    or trailing whitespace: SentencePiece tokens ("▁word") span the space before the word, and
    an answer cut by offsets must not start with it. A token of only whitespace gets an empty
    span at its end."""
    spans = np.asarray(encoding.offsets, np.int64).reshape(-1, 2)
    n = len(text)
    # str.isspace of every character at once: its code point among the whitespace ones.
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    solid = ~np.isin(codes, _whitespace_codes())
    positions = np.arange(n + 1)
    # next_solid[i]: the first non-space character at or after i (n if none);
    # solid_end[j]: one past the last non-space character before j (0 if none).
    next_solid = np.minimum.accumulate(np.where(np.append(solid, True), positions, n)[::-1])[::-1]
    solid_end = np.maximum.accumulate(np.where(np.insert(solid, 0, False), positions, 0))
    start = np.minimum(next_solid[spans[:, 0]], spans[:, 1])
    end = np.maximum(solid_end[spans[:, 1]], start)
    return np.stack([start, end], axis=1).astype(np.int32)


def answer_token_span(
    offsets: np.ndarray, start_char: int, end_char: int
) -> tuple[int, int] | None:
    """First and last context token overlapping the characters [start_char, end_char), or
    None when no token does."""
    overlap = np.flatnonzero((offsets[:, 0] < end_char) & (offsets[:, 1] > start_char))
    if not len(overlap):
        return None
    return int(overlap[0]), int(overlap[-1])


@dataclasses.dataclass(frozen=True)
class QAEncoder:
    """Examples -> ``Windows`` for one tokenizer and model family."""

    tokenizer: tokenizers.Tokenizer
    family: str
    cls_id: int
    sep_id: int
    pad_id: int
    config: WindowConfig

    @classmethod
    def for_tokenizer(
        cls, tokenizer: tokenizers.Tokenizer, family: str, config: WindowConfig = WindowConfig()
    ) -> QAEncoder:
        special = special_token_ids(tokenizer, family)
        # A copy without the tokenizer's own truncation/padding (an inference tokenizer.json
        # may cut at 128 tokens).
        tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        tok.no_truncation()
        tok.no_padding()
        encoder = cls(tok, family, special.cls_id, special.sep_id, special.pad_id, config)
        room = config.max_len - config.max_question_len - encoder.num_special
        if room < 1:
            raise ValueError(
                f"config.max_len={config.max_len} leaves no room for a context token after "
                f"config.max_question_len={config.max_question_len} question tokens and the "
                f"{encoder.num_special} special tokens of family {family!r}: raise max_len or "
                f"lower max_question_len (max_len > max_question_len + {encoder.num_special})"
            )
        return encoder

    @property
    def fairseq(self) -> bool:
        return self.family in FAIRSEQ_FAMILIES

    @property
    def num_special(self) -> int:
        return 4 if self.fairseq else 3  # <s> q </s></s> c </s> | [CLS] q [SEP] c [SEP]

    def windows(self, examples: Sequence[QAExample]) -> Windows:
        """Every example's windows, in example order."""
        cfg = self.config
        questions = self.tokenizer.encode_batch(
            [e.question for e in examples], add_special_tokens=False
        )
        # SQuAD asks ~5 questions per paragraph: each distinct context is tokenised once.
        unique = list(dict.fromkeys(e.context for e in examples))
        contexts = {
            text: (encoding.ids, token_offsets(text, encoding))
            for text, encoding in zip(
                unique, self.tokenizer.encode_batch(unique, add_special_tokens=False)
            )
        }
        rows = collections.defaultdict(list)
        offsets, truncated, outside, mismatch = [], 0, 0, 0
        for i, (example, q_enc) in enumerate(zip(examples, questions)):
            question = q_enc.ids[: cfg.max_question_len]
            truncated += len(q_enc.ids) > cfg.max_question_len
            context, spans = contexts[example.context]
            offsets.append(spans)
            answer = None
            if example.answers:
                answer, text_ok = self._answer_tokens(example, spans)
                mismatch += not text_ok
            prefix = [self.cls_id, *question, self.sep_id] + ([self.sep_id] if self.fairseq else [])
            room = cfg.max_len - len(question) - self.num_special
            in_some_window = False
            for begin in _window_starts(len(context), room, cfg.doc_stride):
                piece = context[begin : begin + room]
                ids = np.asarray([*prefix, *piece, self.sep_id], np.int32)
                types = np.zeros(len(ids), np.int32)
                if not self.fairseq:
                    types[len(prefix) :] = 1
                start = end = 0
                if answer is not None and begin <= answer[0] and answer[1] < begin + len(piece):
                    start = len(prefix) + answer[0] - begin
                    end = len(prefix) + answer[1] - begin
                    in_some_window = True
                for key, value in (
                    ("input_ids", ids),
                    ("token_type_ids", types),
                    ("example_index", i),
                    ("context_position", len(prefix)),
                    ("context_begin", begin),
                    ("context_length", len(piece)),
                    ("start_positions", start),
                    ("end_positions", end),
                ):
                    rows[key].append(value)
            outside += bool(example.answers) and not in_some_window
        stats = WindowStats(
            examples=len(examples),
            windows=len(rows["input_ids"]),
            unanswerable=sum(not e.answers for e in examples),
            answer_in_no_window=outside,
            answer_text_mismatch=mismatch,
            questions_truncated=int(truncated),
        )
        as_int = lambda key: np.asarray(rows[key], np.int32).reshape(-1)
        return Windows(
            input_ids=tuple(rows["input_ids"]),
            token_type_ids=tuple(rows["token_type_ids"]),
            example_index=as_int("example_index"),
            context_position=as_int("context_position"),
            context_begin=as_int("context_begin"),
            context_length=as_int("context_length"),
            start_positions=as_int("start_positions"),
            end_positions=as_int("end_positions"),
            lengths=np.asarray([len(ids) for ids in rows["input_ids"]], np.int32),
            offsets=tuple(offsets),
            stats=stats,
        )

    @staticmethod
    def _answer_tokens(
        example: QAExample, spans: np.ndarray
    ) -> tuple[tuple[int, int] | None, bool]:
        """Context-token span of the first answer (None if its characters are unknown, out of
        the context or cover no token) and whether the text at its offset is the answer
        (True when there is no offset to check)."""
        if not example.answer_starts:
            return None, True
        text, start = example.answers[0], example.answer_starts[0]
        end = start + len(text)
        if start < 0 or end > len(example.context):
            return None, False
        return answer_token_span(spans, start, end), example.context[start:end] == text


def _window_starts(num_tokens: int, room: int, stride: int) -> list[int]:
    """First context token of each window (BERT's run_squad: the next window starts
    min(window length, stride) tokens later, until a window reaches the end). An empty
    context still gets one window, so every example has a null score."""
    starts, begin = [], 0
    while True:
        starts.append(begin)
        length = min(room, num_tokens - begin)
        if begin + length >= num_tokens:
            return starts
        begin += min(length, stride)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def make_batch(
    windows: Windows, rows: Sequence[int], length: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Windows ``rows`` padded to ``length``; a row index of -1 is a filler row (padding only,
    weight 0) that keeps the batch shape fixed at the end of a pass."""
    n = len(rows)
    batch = dict(
        input_ids=np.full((n, length), pad_id, np.int32),
        attention_mask=np.zeros((n, length), np.int32),
        token_type_ids=np.zeros((n, length), np.int32),
        start_positions=np.zeros(n, np.int32),
        end_positions=np.zeros(n, np.int32),
        weight=np.zeros(n, np.float32),
    )
    for i, row in enumerate(rows):
        if row < 0:
            continue
        ids = windows.input_ids[row]
        if len(ids) > length:
            raise ValueError(
                f"window {row} has {len(ids)} tokens, more than the batch length {length}"
            )
        batch["input_ids"][i, : len(ids)] = ids
        batch["token_type_ids"][i, : len(ids)] = windows.token_type_ids[row]
        batch["attention_mask"][i, : len(ids)] = 1
        batch["start_positions"][i] = windows.start_positions[row]
        batch["end_positions"][i] = windows.end_positions[row]
        batch["weight"][i] = 1.0
    return batch


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Per question id: the prediction ("" = no answer), the best non-null span's text (what
    the prediction would be with an infinite threshold), and null score minus best span score
    (the input of ``squad_v2_best_thresholds``; +inf when no window has a valid span)."""

    predictions: dict[str, str]
    best_spans: dict[str, str]
    null_score_diffs: dict[str, float]


def decode(
    examples: Sequence[QAExample],
    windows: Windows,
    start_logits: np.ndarray | Sequence[np.ndarray],
    end_logits: np.ndarray | Sequence[np.ndarray],
    *,
    n_best: int = 20,
    max_answer_len: int = 30,
    null_threshold: float | None = 0.0,
) -> Decoded:
    """Answers from per-window logits (row w of ``start_logits``/``end_logits`` is window w;
    [W, T] arrays with T >= the longest window, or one 1-D array per window).

    Per window, the ``n_best`` highest start and end logits (over the whole window, as
    run_squad) are paired; a pair counts when both tokens are context tokens, start <= end and
    it spans at most ``max_answer_len`` tokens; its score is start_logit + end_logit. The best
    pair over the example's windows gives the text, cut from the context by character
    offsets. The null score of a window is start_logit[0] + end_logit[0], of an example the
    minimum over its windows; the prediction is "" when null score - best span score >
    ``null_threshold`` (SQuAD 2.0). ``null_threshold=None``: always the best span (SQuAD 1.1,
    MLQA).
    """
    if len(windows.offsets) != len(examples):
        raise ValueError(
            f"windows of {len(windows.offsets)} examples, but {len(examples)} examples given"
        )
    start = _logit_matrix(start_logits, windows, "start")
    end = _logit_matrix(end_logits, windows, "end")
    # All windows at once: the k best starts and ends of each window ([W, k], ties: the earlier
    # position; positions past a window's end hold -inf and sort last), then every
    # (start, end) pair of them ([W, k, k], start-major as run_squad's two loops).
    rows = np.arange(len(windows))[:, None]
    top_start = np.argsort(-start, axis=1, kind="stable")[:, :n_best]
    top_end = np.argsort(-end, axis=1, kind="stable")[:, :n_best]
    lo = windows.context_position[:, None, None]
    hi = lo + windows.context_length[:, None, None]
    s, e = top_start[:, :, None], top_end[:, None, :]
    valid = (s >= lo) & (s < hi) & (e >= lo) & (e < hi) & (e >= s) & (e - s < max_answer_len)
    pair_scores = start[rows, top_start][:, :, None] + end[rows, top_end][:, None, :]
    pair_scores = np.where(valid, pair_scores, -np.inf).reshape(len(windows), -1)
    best_pair = np.argmax(pair_scores, axis=1)  # the first of equal scores, as a stable sort
    window_best = pair_scores[rows[:, 0], best_pair]
    first_token = top_start[rows[:, 0], best_pair // top_end.shape[1]] - lo[:, 0, 0]
    last_token = top_end[rows[:, 0], best_pair % top_end.shape[1]] - lo[:, 0, 0]
    window_null = start[:, 0] + end[:, 0]

    best_score = np.full(len(examples), -np.inf)
    best_window = np.full(len(examples), -1)
    null_score = np.full(len(examples), np.inf)
    for w, i in enumerate(windows.example_index.tolist()):
        null_score[i] = min(null_score[i], window_null[w])
        if window_best[w] > best_score[i]:  # strict: the earlier window keeps a tie
            best_score[i], best_window[i] = window_best[w], w
    predictions, spans, diffs = {}, {}, {}
    for i, example in enumerate(examples):
        w = best_window[i]
        text = ""
        if w >= 0:
            begin, offsets = windows.context_begin[w], windows.offsets[i]
            text = example.context[
                offsets[begin + first_token[w], 0] : offsets[begin + last_token[w], 1]
            ]
        diff = float(null_score[i] - best_score[i])
        spans[example.id], diffs[example.id] = text, diff
        null = null_threshold is not None and diff > null_threshold
        predictions[example.id] = "" if null else text
    return Decoded(predictions, spans, diffs)


def _logit_matrix(logits, windows: Windows, name: str) -> np.ndarray:
    """float64 [W, T] with -inf past each window's length, from a [W, T'] array or W rows."""
    if len(logits) != len(windows):
        raise ValueError(f"{len(windows)} windows but {len(logits)} rows of {name} logits")
    lengths = windows.lengths
    if isinstance(logits, np.ndarray) and logits.ndim == 2:
        matrix = logits.astype(np.float64)
        short = np.flatnonzero(lengths > matrix.shape[1])
    else:
        rows = [np.asarray(row, np.float64).reshape(-1) for row in logits]
        matrix = np.full((len(rows), max(map(len, rows), default=0)), -np.inf)
        for w, row in enumerate(rows):
            matrix[w, : len(row)] = row
        short = np.flatnonzero(lengths > np.asarray([len(r) for r in rows], np.int64))
    if len(short):
        raise ValueError(
            f"window {short[0]} has {lengths[short[0]]} tokens but fewer {name} logits"
        )
    return np.where(np.arange(matrix.shape[1]) < lengths[:, None], matrix, -np.inf)


# ---------------------------------------------------------------------------------------------
# SQuAD metrics (the official evaluate-v1.1.py / evaluate-v2.0.py semantics)
# ---------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = text.lower().translate(_DROP_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction_tokens: list[str], gold_tokens: list[str], *, empty_match: bool) -> float:
    """Token-level F1 (bag of tokens). ``empty_match``: 1.0 when both sides are empty and 0.0
    when only one is (SQuAD 2.0); else an empty side scores 0 (SQuAD 1.1, MLQA)."""
    if empty_match and (not prediction_tokens or not gold_tokens):
        return float(prediction_tokens == gold_tokens)
    same = sum((collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _gold_lists(golds: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """id -> list of gold texts; a bare string (not a list of answers) is refused, since
    iterating it would score its characters."""
    if not golds:
        raise ValueError("no questions to score (golds is empty)")
    out = {}
    for qid, answers in golds.items():
        if isinstance(answers, (str, bytes)):
            raise ValueError(
                f"golds[{qid!r}] is the string {answers!r}; give a list of gold answer texts"
            )
        out[qid] = [str(a) for a in answers]
    return out


def _v2_raw_scores(
    golds: Mapping[str, list[str]], predictions: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    missing = [qid for qid in golds if qid not in predictions]
    if missing:
        # The official script prints "Missing prediction for <id>" and then fails on the
        # HasAns/NoAns split (KeyError); a clear error says the same.
        raise ValueError(
            f"{len(missing)} of {len(golds)} questions have no prediction, e.g. {missing[:3]}; "
            f'predict "" for no answer'
        )
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        # Gold answers that normalise to nothing are dropped; none left means "" is the answer.
        texts = [a for a in answers if normalize_answer(a)] or [""]
        prediction = normalize_answer(predictions[qid])
        exact[qid] = float(max(normalize_answer(a) == prediction for a in texts))
        f1[qid] = max(
            _f1(prediction.split(), normalize_answer(a).split(), empty_match=True) for a in texts
        )
    return exact, f1


def squad_v2_scores(golds: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict:
    """The official SQuAD 2.0 scores in percent.

    Args:
      golds: id -> gold answer texts; an empty list marks an unanswerable question.
      predictions: id -> predicted text, "" for no answer. Ids not in ``golds`` are ignored (the
        official script iterates the dataset); an id of ``golds`` without a prediction is a
        ValueError (the official script cannot score that either).

    Returns ``exact``, ``f1``, ``total``, then ``HasAns_exact``, ``HasAns_f1``,
    ``HasAns_total`` over the answerable questions and ``NoAns_*`` over the unanswerable ones.
    As in the official script, a subset with no question has no keys (a set of only
    answerable questions has no ``NoAns_*``). Totals are ints, the rest floats.
    """
    golds = _gold_lists(golds)
    exact, f1 = _v2_raw_scores(golds, predictions)
    out = _subset_scores(exact, f1, list(golds))
    for prefix, keep in (("HasAns", True), ("NoAns", False)):
        ids = [qid for qid, answers in golds.items() if bool(answers) == keep]
        if ids:
            out.update({f"{prefix}_{k}": v for k, v in _subset_scores(exact, f1, ids).items()})
    return out


def _subset_scores(exact: Mapping[str, float], f1: Mapping[str, float], ids: list[str]) -> dict:
    return {
        "exact": 100.0 * sum(exact[k] for k in ids) / len(ids),
        "f1": 100.0 * sum(f1[k] for k in ids) / len(ids),
        "total": len(ids),
    }


def squad_v2_best_thresholds(
    golds: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    null_score_diffs: Mapping[str, float],
) -> dict:
    """The official script's best-threshold search (its ``--na-prob-file`` mode).

    ``null_score_diffs`` (id -> null score - best span score, from ``decode``) plays the
    official "no-answer probability": at threshold t a question is predicted unanswerable
    when its difference exceeds t. Starting from "all unanswerable", questions are switched
    to their prediction in increasing order of difference, keeping the best running score.
    Pass ``Decoded.best_spans`` as ``predictions`` to search over every threshold (the
    thresholded predictions only allow lowering it). Returns ``best_exact``,
    ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh`` (scores in percent; thresholds in
    logit units, 0.0 when answering nothing is best).
    """
    golds = _gold_lists(golds)
    exact, f1 = _v2_raw_scores(golds, predictions)
    missing = [qid for qid in golds if qid not in null_score_diffs]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(golds)} questions have no null-score difference, "
            f"e.g. {missing[:3]}"
        )
    out = {}
    for name, scores in (("exact", exact), ("f1", f1)):
        score, threshold = _best_threshold(golds, predictions, scores, null_score_diffs)
        out[f"best_{name}"], out[f"best_{name}_thresh"] = score, threshold
    return out


def _best_threshold(golds, predictions, scores, diffs) -> tuple[float, float]:
    current = best = sum(1 for answers in golds.values() if not answers)
    best_threshold = 0.0
    for qid in sorted((q for q in diffs if q in golds), key=lambda q: diffs[q]):
        if golds[qid]:
            current += scores[qid]
        elif predictions[qid]:  # the raw text, as the official script: any answer loses
            current -= 1
        if current > best:
            best, best_threshold = current, float(diffs[qid])
    return 100.0 * best / len(golds), best_threshold


def squad_v1_scores(golds: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict:
    """The official SQuAD 1.1 scores in percent: ``exact_match`` and ``f1``, each the maximum
    over a question's gold answers. As the official script, a question without a prediction
    scores 0 and still counts; an empty side scores F1 0."""
    return exact_match_f1(golds, predictions, normalize_answer)


def exact_match_f1(
    golds: Mapping[str, Sequence[str]], predictions: Mapping[str, str], normalize
) -> dict:
    """``exact_match`` and ``f1`` in percent as evaluate-v1.1.py computes them, with any
    answer normalisation (MLQA's script is this with its own ``normalize``)."""
    exact = f1 = 0.0
    golds = _gold_lists(golds)
    for qid, answers in golds.items():
        if not answers:
            raise ValueError(f"question {qid!r} has no gold answer; this metric needs one or more")
        if qid not in predictions:
            continue
        prediction = normalize(predictions[qid])
        normalized = [normalize(a) for a in answers]
        exact += max(float(prediction == a) for a in normalized)
        f1 += max(_f1(prediction.split(), a.split(), empty_match=False) for a in normalized)
    return {"exact_match": 100.0 * exact / len(golds), "f1": 100.0 * f1 / len(golds)}
