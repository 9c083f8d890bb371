"""The eight GLUE tasks of the paper's evaluation: task table, metrics, TFDS reading, encoding.

Everything here is NumPy and the ``tokenizers`` library; ``minilm_jax.finetune`` trains and
evaluates on what it returns.

- ``TASKS`` / ``get_task``: each task's TFDS text features, label kind, dev split(s), metrics.
- Metrics (accuracy, binary F1, Matthews correlation, Pearson, Spearman) in float64 NumPy,
  defined exactly as scikit-learn / SciPy define them (including their edge cases), so the
  numbers match published GLUE dev results; no scikit-learn at run time.
- ``read_split``: a split of ``glue/<task>`` through ``tfds_source.open_source``
  (array_record, random access, never downloads; a dataset that is not prepared gets the
  command that prepares it).
- ``PairEncoder`` / ``encode_examples``: the family's special-token layout (BERT
  ``[CLS] a [SEP] b [SEP]`` with token types 0/1; RoBERTa/XLM-R ``<s> a </s></s> b </s>``,
  types 0) and longest-first truncation as the ``tokenizers`` library does it.
- ``make_batch`` / ``bucket_length``: fixed-shape padded batches with a per-row weight (0 for
  filler rows), padded to one of a few lengths so a run compiles few shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import tokenizers

from minilm_jax.data.packing import FAIRSEQ_FAMILIES, special_token_ids
from minilm_jax.data.sources import as_text
from minilm_jax.tfds_source import open_source

# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task as TFDS ``glue/<name>`` stores it."""

    name: str  # our name and the TFDS config ("sst2" -> "glue/sst2")
    text_features: tuple[str, ...]  # one (single sentence) or two (pair) TFDS Text features
    num_labels: int  # classes; 1 = regression (STS-B, a float score in [0, 5])
    metric: str  # "accuracy" | "accuracy_f1" | "mcc" | "correlation"
    # (metric-name prefix, TFDS split) of every dev split evaluated; MNLI has two.
    eval_splits: tuple[tuple[str, str], ...] = (("", "validation"),)
    train_split: str = "train"

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    @property
    def metric_names(self) -> tuple[str, ...]:
        names = _METRIC_NAMES[self.metric]
        return tuple(prefix + name for prefix, _ in self.eval_splits for name in names)

    def compute_metrics(
        self, predictions: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
    ) -> dict[str, float]:
        """Metrics of every dev split; both mappings are keyed by TFDS split name.

        Classification predictions are class ids, regression predictions are scores.
        """
        out = {}
        for prefix, split in self.eval_splits:
            values = _METRIC_FNS[self.metric](
                np.asarray(predictions[split]), np.asarray(labels[split])
            )
            out.update({prefix + name: value for name, value in values.items()})
        return out

    def score(self, metrics: Mapping[str, float]) -> float:
        """One number to rank runs: the mean of the task's metrics (the GLUE leaderboard's
        convention for MRPC/QQP/STS-B; MNLI averages matched and mismatched accuracy)."""
        return float(np.mean([metrics[name] for name in self.metric_names]))


TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", ("sentence",), 2, "mcc"),
        GlueTask("sst2", ("sentence",), 2, "accuracy"),
        GlueTask("mrpc", ("sentence1", "sentence2"), 2, "accuracy_f1"),
        GlueTask("qqp", ("question1", "question2"), 2, "accuracy_f1"),
        GlueTask("stsb", ("sentence1", "sentence2"), 1, "correlation"),
        # TFDS label order: 0 entailment, 1 neutral, 2 contradiction.
        GlueTask(
            "mnli",
            ("premise", "hypothesis"),
            3,
            "accuracy",
            eval_splits=(
                ("matched_", "validation_matched"),
                ("mismatched_", "validation_mismatched"),
            ),
        ),
        GlueTask("qnli", ("question", "sentence"), 2, "accuracy"),
        GlueTask("rte", ("sentence1", "sentence2"), 2, "accuracy"),
    )
}
TASK_NAMES = tuple(TASKS)


def get_task(name: str) -> GlueTask:
    """A task by name; "SST-2", "sts_b" and "sst2" all work. Fails with the eight names."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(
            f"config.task={name!r} is not a GLUE task of the paper; allowed: {list(TASK_NAMES)}"
        )
    return TASKS[key]


# ---------------------------------------------------------------------------------------------
# Metrics (float64 NumPy; edge cases as scikit-learn / SciPy)
# ---------------------------------------------------------------------------------------------


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    predictions, labels = _check_pair(predictions, labels)
    return float(np.mean(predictions == labels))


def f1_binary(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate"); 0 when there is no
    positive in either (scikit-learn's zero_division default)."""
    predictions, labels = _check_pair(predictions, labels)
    tp = np.sum((predictions == 1) & (labels == 1))
    fp = np.sum((predictions == 1) & (labels != 1))
    fn = np.sum((predictions != 1) & (labels == 1))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (multi-class R_K form, = the phi coefficient for two classes);
    0 when either side is constant, as scikit-learn."""
    predictions, labels = _check_pair(predictions, labels)
    classes, inverse = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    k, n = len(classes), len(labels)
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (inverse[:n], inverse[n:]), 1.0)
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    cov_tp = correct * total - true_counts @ pred_counts
    cov_pp = total**2 - pred_counts @ pred_counts
    cov_tt = total**2 - true_counts @ true_counts
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant (SciPy's answer: r is undefined)."""
    x, y = _check_pair(x, y)
    x, y = x.astype(np.float64), y.astype(np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    norm = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if norm == 0:
        return float("nan")
    return float(np.clip(np.sum(dx * dy) / norm, -1.0, 1.0))


def rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks (scipy.stats.rankdata 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [len(x)]]) - 1
    ranks = np.empty(len(x), np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    x, y = _check_pair(x, y)
    return pearson(rank_average(x), rank_average(y))


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape or not a.size:
        raise ValueError(
            f"metric inputs must be non-empty and of equal length; got {a.shape} and {b.shape}"
        )
    return a, b


_METRIC_NAMES = {
    "accuracy": ("accuracy",),
    "accuracy_f1": ("f1", "accuracy"),
    "mcc": ("mcc",),
    "correlation": ("pearson", "spearman"),
}
_METRIC_FNS = {
    "accuracy": lambda p, y: {"accuracy": accuracy(p, y)},
    "accuracy_f1": lambda p, y: {"f1": f1_binary(p, y), "accuracy": accuracy(p, y)},
    "mcc": lambda p, y: {"mcc": matthews_corrcoef(p, y)},
    "correlation": lambda p, y: {"pearson": pearson(p, y), "spearman": spearman(p, y)},
}


# ---------------------------------------------------------------------------------------------
# Reading TFDS
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Examples:
    """Raw examples of one split: one tuple of strings per text feature, and the labels
    (int64 class ids, or float32 scores for regression)."""

    texts: tuple[tuple[str, ...], ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def open_split(task: GlueTask, split: str, data_dir: str | None = None) -> Sequence[Any]:
    """``tfds.data_source("glue/<task>", split=...)``: random access, never downloads; the error
    of a dataset that is not prepared names the command that prepares it."""
    return open_source(f"glue/{task.name}", split, data_dir)


def read_split(task: GlueTask, split: str, data_dir: str | None = None, limit: int = 0) -> Examples:
    """The examples of one split (the first ``limit`` ones when ``limit`` > 0)."""
    return examples_from_source(task, open_split(task, split, data_dir), split, limit)


def examples_from_source(
    task: GlueTask, source: Sequence[Any], split: str, limit: int = 0
) -> Examples:
    """Examples from any random-access sequence of TFDS-style dicts (features as in TFDS)."""
    n = len(source) if limit <= 0 else min(limit, len(source))
    if n == 0:
        raise ValueError(f"glue/{task.name} split {split!r} has no examples")
    texts: list[list[str]] = [[] for _ in task.text_features]
    labels = []
    for i in range(n):
        example = source[i]
        if i == 0:
            missing = [f for f in (*task.text_features, "label") if f not in example]
            if missing:
                raise ValueError(
                    f"glue/{task.name} split {split!r}: examples lack feature(s) {missing}; "
                    f"they have {sorted(example)}"
                )
        for column, feature in zip(texts, task.text_features):
            column.append(as_text(example[feature]))
        labels.append(np.asarray(example["label"]).item())
    label_array = np.asarray(labels, np.float32 if task.regression else np.int64)
    if not task.regression:
        bad = (label_array < 0) | (label_array >= task.num_labels)
        if bad.any():
            raise ValueError(
                f"glue/{task.name} split {split!r}: {int(bad.sum())} label(s) outside "
                f"0..{task.num_labels - 1} (e.g. {int(label_array[bad][0])}); GLUE test splits "
                f"have no labels (-1), use a train/validation split"
            )
    return Examples(tuple(tuple(column) for column in texts), label_array)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def truncate_longest_first(
    length_a: int, length_b: int | None, budget: int
) -> tuple[int, int | None]:
    """Lengths kept of a (pair of) token sequence(s) so that they fit ``budget`` tokens.

    A single sequence keeps its first ``budget`` tokens. A pair loses tokens from the longer
    side only, until both are as long as the budget allows; then the budget is split in half,
    the extra token of an odd budget going to the longer side (to the second on a tie). This
    is the ``tokenizers`` library's "longest_first" strategy (what transformers' tokenizers
    run), in closed form.
    """
    if length_b is None:
        return min(length_a, budget), None
    if length_a + length_b <= budget:
        return length_a, length_b
    swap = length_a > length_b
    short, long = (length_b, length_a) if swap else (length_a, length_b)
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
        short, long = budget // 2, budget - budget // 2
    return (long, short) if swap else (short, long)


@dataclasses.dataclass(frozen=True)
class PairEncoder:
    """Token ids of one or two texts -> the family's model input (ids and token types)."""

    family: str  # a model family (data.packing.FAMILY_SPECIAL_TOKENS)
    cls_id: int  # [CLS] or <s>
    sep_id: int  # [SEP] or </s>
    pad_id: int
    max_len: int

    def __post_init__(self):
        if self.max_len < 6:
            raise ValueError(
                f"config.max_len={self.max_len}: too short for a sentence pair with special tokens (>= 6)"
            )

    @classmethod
    def for_tokenizer(
        cls, tokenizer: tokenizers.Tokenizer, family: str, pad_id: int, max_len: int
    ) -> PairEncoder:
        special = special_token_ids(tokenizer, family)
        if special.pad_id != pad_id:
            raise ValueError(
                f"the tokenizer's padding token has id {special.pad_id} but the model's "
                f"config.json says pad_token_id={pad_id}: tokenizer and model do not belong together"
            )
        return cls(family, special.cls_id, special.sep_id, pad_id, max_len)

    def num_special(self, pair: bool) -> int:
        if not pair:
            return 2  # [CLS] a [SEP] | <s> a </s>
        # [CLS] a [SEP] b [SEP] | <s> a </s></s> b </s>
        return 4 if self.family in FAIRSEQ_FAMILIES else 3

    def encode(
        self, a: Sequence[int], b: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """int32 (input_ids, token_type_ids), unpadded, at most max_len long."""
        keep_a, keep_b = truncate_longest_first(
            len(a), None if b is None else len(b), self.max_len - self.num_special(b is not None)
        )
        first = [self.cls_id, *a[:keep_a], self.sep_id]
        if b is None:
            second = []
        elif self.family not in FAIRSEQ_FAMILIES:
            second = [*b[:keep_b], self.sep_id]
        else:
            second = [self.sep_id, *b[:keep_b], self.sep_id]
        ids = np.asarray(first + second, np.int32)
        types = np.zeros(len(ids), np.int32)
        if self.family not in FAIRSEQ_FAMILIES:  # RoBERTa/XLM-R have a single token type
            types[len(first) :] = 1
        return ids, types


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A split ready for batching: ragged int32 ids and token types, and the labels."""

    input_ids: tuple[np.ndarray, ...]
    token_type_ids: tuple[np.ndarray, ...]
    labels: np.ndarray
    lengths: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: np.ndarray, length: int, pad_id: int) -> dict[str, np.ndarray]:
        return make_batch(self, rows, length, pad_id)


def encode_examples(
    tokenizer: tokenizers.Tokenizer, encoder: PairEncoder, examples: Examples
) -> Encoded:
    """Tokenises every text (no special tokens; the tokenizer's own truncation and padding
    off, on a copy) and lays out each example for the family."""
    tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    columns = [
        [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
        for texts in examples.texts
    ]
    pairs = [encoder.encode(*row) for row in zip(*columns)]
    ids = tuple(p[0] for p in pairs)
    return Encoded(
        input_ids=ids,
        token_type_ids=tuple(p[1] for p in pairs),
        labels=examples.labels,
        lengths=np.asarray([len(x) for x in ids], np.int32),
    )


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def make_batch(
    encoded: Encoded, rows: np.ndarray, length: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Rows of ``encoded`` padded to ``length``; a row index of -1 is a filler row (padding
    only, weight 0) that keeps the batch shape fixed at the end of a pass."""
    n = len(rows)
    input_ids = np.full((n, length), pad_id, np.int32)
    token_type_ids = np.zeros((n, length), np.int32)
    attention_mask = np.zeros((n, length), np.int32)
    label = np.zeros(n, encoded.labels.dtype)
    weight = np.zeros(n, np.float32)
    for i, row in enumerate(rows):
        if row < 0:
            continue
        ids = encoded.input_ids[row]
        input_ids[i, : len(ids)] = ids
        token_type_ids[i, : len(ids)] = encoded.token_type_ids[row]
        attention_mask[i, : len(ids)] = 1
        label[i] = encoded.labels[row]
        weight[i] = 1.0
    label = label.astype(np.float32) if encoded.labels.dtype.kind == "f" else label.astype(np.int32)
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        label=label,
        weight=weight,
    )
