"""Fine-tuning tasks: what the task-agnostic trainer (`finetune.py`) needs to know of each.

A task checks its config fields, reads and encodes its data, builds its model (a head on the
student's encoder), gives the loss and the per-row outputs of a batch, and turns the outputs on
its evaluation sets into metrics and re-scorable files. `get_task(name)` finds one by name;
`TASK_NAMES` lists them:

  * the eight GLUE tasks (`ClassificationTask`);
  * `squad2`, `squad1` (`SquadTask`): SQuAD 2.0 / 1.1 from TFDS or the official JSON files,
    windows, span head, the official metrics;
  * `xnli` (`XnliTask`): zero-shot cross-lingual NLI, trained on English MNLI, selected on
    XNLI's joint validation set of 15 languages, test accuracy per language;
  * `mlqa` (`MlqaTask`): zero-shot cross-lingual QA, trained on SQuAD 1.1, selected on
    `mlqa/en` validation F1, test EM/F1 per language with MLQA's metric.

Data contracts (NumPy on the host):
  * `Features`: `len()`, `lengths` (int32 [N], tokens per row, for length buckets) and
    `batch(rows, length, pad_id) -> dict` of int32/float arrays padded to `length`; a row index
    of -1 is a filler row (padding only, `weight` 0) that keeps batch shapes fixed.
  * `TaskData`: `train` Features, `evals` {name: EvalSet with `.features`}, and `info`
    (counts to log and record: examples, windows, answers in no window, ...).
  * `Evaluation`: the metrics (fractions, which summaries print in percent; a name ending in
    `_thresh` is in logit units), the arrays of `predictions.npz` and the JSON files of the
    run directory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from minilm_jax import configs, glue, mlqa, qa, xnli
from minilm_jax.data.packing import FAIRSEQ_FAMILIES
from minilm_jax.models.heads import SequenceClassifier, SpanClassifier, resolve_head, span_loss


class Features(Protocol):
    lengths: np.ndarray

    def __len__(self) -> int: ...

    def batch(self, rows: np.ndarray, length: int, pad_id: int) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class EvalSet:
    features: Features
    labels: Any = None  # whatever the task's metric needs besides the model outputs
    extra: Any = None


@dataclasses.dataclass
class TaskData:
    train: Features
    evals: dict[str, EvalSet]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Evaluation:
    """What a run's evaluation gives: ``metrics`` (name -> value; fractions unless the name
    ends in ``_thresh``), ``arrays`` (saved as the run's ``predictions.npz``; none: no file)
    and ``files`` (file name in the run directory -> JSON-able value, e.g. SQuAD's
    ``predictions.json``)."""

    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    files: dict[str, Any] = dataclasses.field(default_factory=dict)


class Task(Protocol):
    name: str
    metric_names: tuple[str, ...]  # the summary's columns (fractions), in order

    def check_config(self, config, student_config) -> None:
        """Raises ValueError naming the field: called before anything is loaded or written."""

    def prepare(self, config, student) -> TaskData: ...

    def uses_pooler(self, config, student_config) -> bool: ...

    def build_model(self, encoder, config, *, rngs: nnx.Rngs) -> nnx.Module: ...

    def loss(self, model, batch, dropout_key) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def predict(self, model, batch) -> dict[str, jax.Array]: ...

    def evaluate(
        self, data: TaskData, outputs: Mapping[str, Mapping[str, np.ndarray]], config
    ) -> Evaluation: ...

    def score(self, metrics: Mapping[str, float]) -> float: ...

    def result_settings(self, config) -> dict[str, Any]: ...


def weighted_mean(per_row: jax.Array, weight: jax.Array) -> jax.Array:
    """Mean over the batch's real rows (filler rows have weight 0)."""
    return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def check_max_len(config, student_config) -> None:
    if config.max_len > student_config.max_sequence_length:
        raise ValueError(
            f"config.max_len={config.max_len}: the student has only "
            f"{student_config.max_sequence_length} positions"
        )


def check_languages(languages: Sequence[str], allowed: Sequence[str], dataset: str) -> None:
    """config.languages: one or more of ``allowed``, each once."""
    languages = tuple(languages)
    unknown = [lang for lang in languages if lang not in allowed]
    if unknown or not languages or len(set(languages)) != len(languages):
        why = f"{dataset} has no language {unknown[0]!r}" if unknown else "name each language once"
        raise ValueError(f"config.languages={languages!r}: {why}; allowed: {list(allowed)}")


def require_fields(config, task: str, fields: Sequence[str], where: str) -> None:
    """Raises unless ``config`` has every field a task reads (a config built for another task
    lacks them)."""
    missing = [field for field in fields if field not in config]
    if missing:
        raise ValueError(
            f"config.task={task!r} needs the config field(s) {missing}, which this config "
            f"lacks; {where} sets them"
        )


# ---------------------------------------------------------------------------------------------
# Sequence classification (GLUE)
# ---------------------------------------------------------------------------------------------


def pair_encoder(config, student):
    """``examples -> glue.Encoded`` for the student's tokenizer and family at config.max_len."""
    cfg = student.config
    encoder = glue.PairEncoder.for_tokenizer(
        student.tokenizer, cfg.family, cfg.pad_token_id, config.max_len
    )
    return functools.partial(glue.encode_examples, student.tokenizer, encoder)


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """A GLUE task: one or two texts -> class (or regression score for STS-B)."""

    glue_task: glue.GlueTask

    @property
    def name(self) -> str:
        return self.glue_task.name

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.glue_task.metric_names

    def uses_pooler(self, config, student_config) -> bool:
        return resolve_head(config.head, student_config.family) == "pooler"

    def check_config(self, config, student_config) -> None:
        check_max_len(config, student_config)

    def prepare(self, config, student) -> TaskData:
        task = self.glue_task
        check_max_len(config, student.config)
        train = glue.read_split(task, task.train_split, config.data_dir, config.max_train_examples)
        evals = {
            split: glue.read_split(task, split, config.data_dir, config.max_eval_examples)
            for _, split in task.eval_splits
        }
        encode = pair_encoder(config, student)
        encoded_evals = {split: encode(ex) for split, ex in evals.items()}
        return TaskData(
            train=encode(train),
            evals={split: EvalSet(e, labels=e.labels) for split, e in encoded_evals.items()},
            info={
                "train_examples": len(train),
                **{f"{s}_examples": len(e) for s, e in evals.items()},
            },
        )

    def build_model(self, encoder, config, *, rngs: nnx.Rngs) -> nnx.Module:
        head = resolve_head(config.head, encoder.config.family)
        return SequenceClassifier(
            encoder, self.glue_task.num_labels, head=head, dropout=config.dropout, rngs=rngs
        )

    def loss(self, model, batch, dropout_key):
        """Cross entropy, or the squared error of the score for regression (STS-B)."""
        logits = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=dropout_key is None,
            rngs=nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None,
        )
        if self.glue_task.regression:
            per_row = jnp.square(logits[:, 0] - batch["label"].astype(jnp.float32))
        else:
            per_row = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return weighted_mean(per_row, batch["weight"]), {}

    def predict(self, model, batch):
        return {
            "logits": model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        }

    def evaluate(self, data: TaskData, outputs, config):
        logits = {split: out["logits"] for split, out in outputs.items()}
        if self.glue_task.regression:
            predictions = {split: x[:, 0] for split, x in logits.items()}
        else:
            predictions = {split: np.argmax(x, axis=-1) for split, x in logits.items()}
        labels = {split: data.evals[split].labels for split in logits}
        saved = {
            f"{split}/{kind}": value
            for split in logits
            for kind, value in (("logits", logits[split]), ("labels", labels[split]))
        }
        return Evaluation(self.glue_task.compute_metrics(predictions, labels), saved)

    def score(self, metrics) -> float:
        return self.glue_task.score(metrics)

    def result_settings(self, config) -> dict[str, Any]:
        return {
            "head": config.head,
            "max_len": config.max_len,
            "max_train_examples": config.max_train_examples,
            "max_eval_examples": config.max_eval_examples,
        }


# ---------------------------------------------------------------------------------------------
# Extractive QA: SQuAD 2.0 / 1.1 and MLQA
# ---------------------------------------------------------------------------------------------

QA_FIELDS = ("doc_stride", "max_question_len", "n_best_size", "max_answer_len", "train_file")


def add_qa_fields(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the fields every extractive-QA task reads and sets the MiniLM README's SQuAD
    recipe (max length 384, batch 48 = 12 per GPU x 4) with the defaults of BERT's and
    transformers' run_squad.py that it leaves as they are (no warmup, no weight decay). The
    SQuAD and MLQA experiments share it; each sets its own learning rates and epochs."""
    c.doc_stride = 128  # context tokens between the starts of consecutive windows
    c.max_question_len = 64  # question tokens kept; longer questions are cut (and counted)
    c.n_best_size = 20  # best start and best end positions paired per window when decoding
    c.max_answer_len = 30  # longest answer, in tokens
    c.train_file = ""  # SQuAD-format JSON training file (e.g. train-v2.0.json); "" = TFDS
    c.max_len = 384  # tokens per window
    c.length_buckets = (128, 256)  # most windows are short: pad them less (our choice)
    c.batch_size = 48
    c.eval_batch_size = 128  # our choice: evaluation holds no gradients
    c.warmup_fraction = 0.0
    c.weight_decay = 0.0
    return c


def apply_qa_smoke(c: ml_collections.ConfigDict, family: str) -> ml_collections.ConfigDict:
    """A QA experiment's ``smoke`` variant: ``configs.apply_finetune_smoke`` (the cached tiny
    student, few short examples, one epoch) with windows small enough that the tiny
    contexts still split into several, and one padded length, so one compile."""
    configs.apply_finetune_smoke(c, family)
    c.max_len = 32
    c.length_buckets = ()
    c.doc_stride = 8
    c.max_question_len = 12
    c.max_answer_len = 8
    c.sweep.learning_rates = (1e-3,)
    return c


def _window_info(prefix: str, stats: qa.WindowStats, training: bool) -> dict[str, int]:
    """What windowing did, for the log line and the run record. Training examples whose answer
    no window holds whole stay in training with the no-answer label (as transformers'
    run_qa.py); they are counted, as are answers whose text is not at their offset."""
    info = {
        f"{prefix}_examples": stats.examples,
        f"{prefix}_windows": stats.windows,
        f"{prefix}_unanswerable": stats.unanswerable,
        f"{prefix}_questions_truncated": stats.questions_truncated,
    }
    if training:
        info[f"{prefix}_answer_in_no_window"] = stats.answer_in_no_window
        info[f"{prefix}_answer_text_mismatch"] = stats.answer_text_mismatch
    return info


def _require_answers(examples: Sequence[qa.QAExample], what: str, task: str) -> None:
    missing = [e.id for e in examples if not e.answers]
    if missing:
        raise ValueError(
            f"{what}: {len(missing)} question(s) have no gold answer (e.g. {missing[:3]}), but "
            f"task {task!r} scores with a metric that needs one; unanswerable questions belong "
            "to SQuAD 2.0 (config.task='squad2')"
        )


def _percent_to_fraction(scores: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """The qa/mlqa metrics are percent, as the official scripts print them; runs record
    fractions like every task (summaries print percent). A subset the set lacks (SQuAD 2.0
    without unanswerable questions has no NoAns_*) is NaN."""
    return {name: scores[name] / 100.0 if name in scores else math.nan for name in names}


class _SpanTask:
    """What the extractive-QA tasks share: question + context windows (``qa.QAEncoder``), the
    span head (transformers' *ForQuestionAnswering), its loss, and decoding."""

    name: str
    experiment: str  # the experiment file that sets the task's fields (for error messages)
    fields: tuple[str, ...] = QA_FIELDS
    train_version = "1.1"  # the SQuAD version of the training set

    def uses_pooler(self, config, student_config) -> bool:
        return False  # the span head reads the last hidden state only

    def check_config(self, config, student_config) -> None:
        require_fields(config, self.name, self.fields, self.experiment)
        check_max_len(config, student_config)
        qa.WindowConfig(config.max_len, config.doc_stride, config.max_question_len)
        for field in ("n_best_size", "max_answer_len"):
            value = config[field]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config.{field}={value!r}: must be a positive integer")
        specials = 4 if student_config.family in FAIRSEQ_FAMILIES else 3
        if config.max_len <= config.max_question_len + specials:
            raise ValueError(
                f"config.max_len={config.max_len} leaves no room for a context token after "
                f"config.max_question_len={config.max_question_len} question tokens and the "
                f"{specials} special tokens of family {student_config.family!r}: raise max_len "
                f"or lower max_question_len"
            )
        for field in ("train_file", "eval_file"):
            path = config.get(field, "")
            if path and not os.path.isfile(os.path.expanduser(path)):
                raise ValueError(f"config.{field}={path!r}: no such file")

    def encoder(self, config, student) -> qa.QAEncoder:
        cfg = student.config
        window = qa.WindowConfig(config.max_len, config.doc_stride, config.max_question_len)
        encoder = qa.QAEncoder.for_tokenizer(student.tokenizer, cfg.family, window)
        if encoder.pad_id != cfg.pad_token_id:
            raise ValueError(
                f"the tokenizer's padding token has id {encoder.pad_id} but the model's "
                f"config.json says pad_token_id={cfg.pad_token_id}: tokenizer and model do not "
                "belong together"
            )
        return encoder

    def read_train(self, config) -> list[qa.QAExample]:
        """SQuAD's training set: config.train_file (official JSON) or TFDS squad/v<version>."""
        if config.train_file:
            return qa.read_squad_json(
                os.path.expanduser(config.train_file), config.max_train_examples
            )
        return qa.read_squad(
            self.train_version, "train", config.data_dir, config.max_train_examples
        )

    def build_model(self, encoder, config, *, rngs: nnx.Rngs) -> nnx.Module:
        return SpanClassifier(encoder, rngs=rngs)

    def loss(self, model, batch, dropout_key):
        """(start CE + end CE) / 2 per window (transformers' QA loss), padding left out."""
        start, end = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=dropout_key is None,
            rngs=nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None,
        )
        per_row = span_loss(
            start, end, batch["start_positions"], batch["end_positions"], batch["attention_mask"]
        )
        return weighted_mean(per_row, batch["weight"]), {}

    def predict(self, model, batch):
        start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return {"start_logits": start, "end_logits": end}

    def decode(self, eval_set: EvalSet, outputs, config, null_threshold) -> qa.Decoded:
        return qa.decode(
            eval_set.labels,
            eval_set.features,
            outputs["start_logits"],
            outputs["end_logits"],
            n_best=config.n_best_size,
            max_answer_len=config.max_answer_len,
            null_threshold=null_threshold,
        )

    def result_settings(self, config) -> dict[str, Any]:
        return {
            field: config[field]
            for field in (
                "max_len",
                "max_train_examples",
                "max_eval_examples",
                *self.fields,
            )
        }


@dataclasses.dataclass(frozen=True)
class SquadTask(_SpanTask):
    """SQuAD 2.0 (``version="2.0"``) or 1.1: train on the train split, evaluate on the dev
    split with the official metric. SQuAD 2.0 also reports the HasAns/NoAns split and the best
    null threshold found from the null-score differences (``qa.squad_v2_best_thresholds``).

    The run directory gets ``predictions.json`` (id -> answer, "" = no answer: the official
    script's input), and for 2.0 ``null_odds.json`` (id -> null score - best span score) and
    ``best_spans.json`` (id -> best non-null answer): with these two the answer at any
    threshold t is "" where the difference exceeds t, else the best span, and the official
    script's ``--na-prob-file null_odds.json`` mode on ``best_spans.json`` gives our best_*."""

    version: str
    experiment = "experiments/squad.py"

    @property
    def v2(self) -> bool:
        return self.version == "2.0"

    @property
    def name(self) -> str:
        return "squad2" if self.v2 else "squad1"

    @property
    def train_version(self) -> str:
        return self.version

    @property
    def fields(self) -> tuple[str, ...]:
        return (*QA_FIELDS, "eval_file", *(("null_threshold",) if self.v2 else ()))

    @property
    def metric_names(self) -> tuple[str, ...]:
        if not self.v2:
            return ("exact_match", "f1")
        return (
            "exact",
            "f1",
            "HasAns_exact",
            "HasAns_f1",
            "NoAns_exact",
            "NoAns_f1",
            "best_exact",
            "best_f1",
        )

    def prepare(self, config, student) -> TaskData:
        check_max_len(config, student.config)
        encoder = self.encoder(config, student)
        train = self.read_train(config)
        if config.eval_file:
            what = f"config.eval_file={config.eval_file!r}"
            dev = qa.read_squad_json(os.path.expanduser(config.eval_file), config.max_eval_examples)
        else:
            what = f"{qa.squad_dataset(self.version)} split 'validation'"
            dev = qa.read_squad(
                self.version, "validation", config.data_dir, config.max_eval_examples
            )
        if not self.v2:
            _require_answers(dev, what, self.name)
        train_windows, dev_windows = encoder.windows(train), encoder.windows(dev)
        return TaskData(
            train=train_windows,
            evals={"validation": EvalSet(dev_windows, labels=dev)},
            info={
                **_window_info("train", train_windows.stats, training=True),
                **_window_info("validation", dev_windows.stats, training=False),
            },
        )

    def evaluate(self, data: TaskData, outputs, config) -> Evaluation:
        eval_set = data.evals["validation"]
        golds = qa.golds(eval_set.labels)
        if not self.v2:
            decoded = self.decode(eval_set, outputs["validation"], config, null_threshold=None)
            scores = qa.squad_v1_scores(golds, decoded.predictions)
            metrics = _percent_to_fraction(scores, self.metric_names)
            return Evaluation(metrics, files={"predictions.json": decoded.predictions})
        decoded = self.decode(
            eval_set, outputs["validation"], config, null_threshold=float(config.null_threshold)
        )
        scores = qa.squad_v2_scores(golds, decoded.predictions)
        scores.update(
            qa.squad_v2_best_thresholds(golds, decoded.best_spans, decoded.null_score_diffs)
        )
        metrics = _percent_to_fraction(scores, self.metric_names)
        metrics["best_exact_thresh"] = scores["best_exact_thresh"]
        metrics["best_f1_thresh"] = scores["best_f1_thresh"]
        files = {
            "predictions.json": decoded.predictions,
            "null_odds.json": decoded.null_score_diffs,
            "best_spans.json": decoded.best_spans,
        }
        return Evaluation(metrics, files=files)

    def score(self, metrics) -> float:
        return float(metrics["f1"])


@dataclasses.dataclass(frozen=True)
class MlqaTask(_SpanTask):
    """MLQA, zero-shot: train on SQuAD 1.1 (English), select on ``mlqa/en`` validation F1,
    report test EM and F1 per language of config.languages and their mean, with MLQA's metric
    (``mlqa.mlqa_scores``). The run directory gets ``predictions_<set>.json`` per evaluation
    set (``predictions_validation_en.json``, ``predictions_test_de.json``, ...), the input of
    MLQA's ``mlqa_evaluation_v1.py DATASET PREDICTIONS LANGUAGE``."""

    name = "mlqa"
    experiment = "experiments/mlqa.py"
    fields = (*QA_FIELDS, "languages")

    @property
    def metric_names(self) -> tuple[str, ...]:
        per_language = [
            f"test_{metric}_{lang}" for lang in mlqa.LANGUAGES for metric in ("exact_match", "f1")
        ]
        return ("dev_exact_match", "dev_f1", "test_exact_match", "test_f1", *per_language)

    def check_config(self, config, student_config) -> None:
        super().check_config(config, student_config)
        check_languages(config.languages, mlqa.LANGUAGES, "MLQA")

    def prepare(self, config, student) -> TaskData:
        check_max_len(config, student.config)
        encoder = self.encoder(config, student)
        train = self.read_train(config)
        sets = {"validation_en": ("en", "validation")}
        sets.update({f"test_{lang}": (lang, "test") for lang in config.languages})
        train_windows = encoder.windows(train)
        evals, info = {}, _window_info("train", train_windows.stats, training=True)
        for name, (lang, split) in sets.items():
            examples = mlqa.read_mlqa(lang, split, config.data_dir, config.max_eval_examples)
            _require_answers(examples, f"mlqa/{lang} split {split!r}", self.name)
            windows = encoder.windows(examples)
            evals[name] = EvalSet(windows, labels=examples, extra=lang)
            info.update(_window_info(name, windows.stats, training=False))
        return TaskData(train=train_windows, evals=evals, info=info)

    def evaluate(self, data: TaskData, outputs, config) -> Evaluation:
        metrics, files, tests = {}, {}, {}
        for name, eval_set in data.evals.items():
            decoded = self.decode(eval_set, outputs[name], config, null_threshold=None)
            scores = mlqa.mlqa_scores(
                qa.golds(eval_set.labels), decoded.predictions, eval_set.extra
            )
            files[f"predictions_{name}.json"] = decoded.predictions
            if name == "validation_en":
                metrics["dev_exact_match"] = scores["exact_match"] / 100.0
                metrics["dev_f1"] = scores["f1"] / 100.0
            else:
                tests[eval_set.extra] = scores
        for metric in ("exact_match", "f1"):
            metrics[f"test_{metric}"] = float(np.mean([s[metric] for s in tests.values()])) / 100
        for lang, scores in tests.items():
            for metric in ("exact_match", "f1"):
                metrics[f"test_{metric}_{lang}"] = scores[metric] / 100.0
        return Evaluation(metrics, files=files)

    def score(self, metrics) -> float:
        return float(metrics["dev_f1"])

    def result_settings(self, config) -> dict[str, Any]:
        return {**super().result_settings(config), "languages": list(config.languages)}


# ---------------------------------------------------------------------------------------------
# XNLI: zero-shot cross-lingual NLI
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class XnliTask:
    """XNLI, zero-shot: fine-tune an MNLI classifier on English MNLI (``glue/mnli`` train),
    select on XNLI's validation set of config.languages joined (accuracy), report test
    accuracy per language and their mean. Model, loss and outputs are MNLI's
    (``ClassificationTask``); XNLI's labels are MNLI's in MNLI's order (``xnli.read_xnli``
    checks). ``predictions.npz`` holds the logits and labels of every set, and the language
    of each validation row."""

    name = "xnli"
    classifier = ClassificationTask(glue.TASKS["mnli"])

    @property
    def metric_names(self) -> tuple[str, ...]:
        per_language = tuple(f"test_accuracy_{lang}" for lang in xnli.LANGUAGES)
        return ("dev_accuracy", "test_accuracy", *per_language)

    def uses_pooler(self, config, student_config) -> bool:
        return self.classifier.uses_pooler(config, student_config)

    def check_config(self, config, student_config) -> None:
        require_fields(config, self.name, ("languages",), "experiments/xnli.py")
        check_languages(config.languages, xnli.LANGUAGES, "XNLI")
        check_max_len(config, student_config)

    def prepare(self, config, student) -> TaskData:
        check_max_len(config, student.config)
        languages = xnli.check_languages(config.languages)
        train = xnli.read_mnli_train(config.data_dir, config.max_train_examples)
        dev = xnli.read_xnli("validation", config.data_dir, languages, config.max_eval_examples)
        test = xnli.read_xnli("test", config.data_dir, languages, config.max_eval_examples)
        encode = pair_encoder(config, student)
        joint = encode(xnli.joined(dev))
        row_languages = np.repeat(np.asarray(languages), [len(dev[lang]) for lang in languages])
        evals = {"validation": EvalSet(joint, labels=joint.labels, extra=row_languages)}
        for lang in languages:
            encoded = encode(test[lang])
            evals[f"test_{lang}"] = EvalSet(encoded, labels=encoded.labels, extra=lang)
        return TaskData(
            train=encode(train),
            evals=evals,
            info={
                "train_examples": len(train),
                "languages": len(languages),
                "validation_pairs": len(joint),
                "test_pairs": sum(len(test[lang]) for lang in languages),
            },
        )

    def build_model(self, encoder, config, *, rngs: nnx.Rngs) -> nnx.Module:
        return self.classifier.build_model(encoder, config, rngs=rngs)

    def loss(self, model, batch, dropout_key):
        return self.classifier.loss(model, batch, dropout_key)

    def predict(self, model, batch):
        return self.classifier.predict(model, batch)

    def evaluate(self, data: TaskData, outputs, config) -> Evaluation:
        logits = {name: out["logits"] for name, out in outputs.items()}
        predictions = {name: np.argmax(x, axis=-1) for name, x in logits.items()}
        dev = data.evals["validation"]
        tests = {s.extra: s for name, s in data.evals.items() if name.startswith("test_")}
        per_language = xnli.accuracies({lang: predictions[f"test_{lang}"] for lang in tests}, tests)
        metrics = {
            "dev_accuracy": glue.accuracy(predictions["validation"], dev.labels),
            "test_accuracy": per_language.pop("accuracy"),
            **{f"test_{name}": value for name, value in per_language.items()},
        }
        arrays = {"validation/languages": dev.extra}
        for name in data.evals:
            arrays[f"{name}/logits"] = logits[name]
            arrays[f"{name}/labels"] = data.evals[name].labels
        return Evaluation(metrics, arrays)

    def score(self, metrics) -> float:
        return float(metrics["dev_accuracy"])

    def result_settings(self, config) -> dict[str, Any]:
        return {
            **self.classifier.result_settings(config),
            "languages": list(config.languages),
        }


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

TASKS: dict[str, Task] = {
    **{name: ClassificationTask(task) for name, task in glue.TASKS.items()},
    "squad2": SquadTask("2.0"),
    "squad1": SquadTask("1.1"),
    "xnli": XnliTask(),
    "mlqa": MlqaTask(),
}
TASK_NAMES = tuple(TASKS)
# Other spellings of the SQuAD versions (after lowercasing and dropping "-", "_", "."):
# squad_v2, SQuAD-2.0, squad/v2.0 ...
_ALIASES = {
    "squadv2": "squad2",
    "squad20": "squad2",
    "squadv20": "squad2",
    "squadv1": "squad1",
    "squad11": "squad1",
    "squadv11": "squad1",
}


def get_task(name: str) -> Task:
    """A task by name ("SST-2", "sst_2" and "sst2" all work; "squad_v2" is "squad2"); fails
    with the list of names."""
    key = str(name).lower()
    for ch in "-_./":
        key = key.replace(ch, "")
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"config.task={name!r} is not a known task; allowed: {list(TASK_NAMES)}")
    return TASKS[key]
