"""Fine-tuning tasks: what the task-agnostic trainer (`finetune.py`) needs to know of each.

A task reads and encodes its data, builds its model (a head on the student's encoder), gives
the loss and the per-row outputs of a batch, and turns the outputs on its evaluation sets into
metrics. `get_task(name)` finds one by name; `TASK_NAMES` lists them.

Data contracts (NumPy on the host):
  * `Features`: `len()`, `lengths` (int32 [N], tokens per row, for length buckets) and
    `batch(rows, length, pad_id) -> dict` of int32/float arrays padded to `length`; a row index
    of -1 is a filler row (padding only, `weight` 0) that keeps batch shapes fixed.
  * `TaskData`: `train` Features, `evals` {name: EvalSet with `.features`}, and `info`
    (counts to log and record: examples, windows, ...).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from minilm_jax import glue
from minilm_jax.models.heads import SequenceClassifier, resolve_head


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


class Task(Protocol):
    name: str
    metric_names: tuple[str, ...]

    def prepare(self, config, student) -> TaskData: ...

    def uses_pooler(self, config, student_config) -> bool: ...

    def build_model(self, encoder, config, *, rngs: nnx.Rngs) -> nnx.Module: ...

    def loss(self, model, batch, dropout_key) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def predict(self, model, batch) -> dict[str, jax.Array]: ...

    def evaluate(
        self, data: TaskData, outputs: Mapping[str, Mapping[str, np.ndarray]], config
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]: ...

    def score(self, metrics: Mapping[str, float]) -> float: ...

    def result_settings(self, config) -> dict[str, Any]: ...


def weighted_mean(per_row: jax.Array, weight: jax.Array) -> jax.Array:
    """Mean over the batch's real rows (filler rows have weight 0)."""
    return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


# ---------------------------------------------------------------------------------------------
# Sequence classification (GLUE)
# ---------------------------------------------------------------------------------------------


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

    def prepare(self, config, student) -> TaskData:
        task = self.glue_task
        train = glue.read_split(task, task.train_split, config.data_dir, config.max_train_examples)
        evals = {
            split: glue.read_split(task, split, config.data_dir, config.max_eval_examples)
            for _, split in task.eval_splits
        }
        cfg = student.config
        if config.max_len > cfg.max_sequence_length:
            raise ValueError(
                f"config.max_len={config.max_len}: the student has only "
                f"{cfg.max_sequence_length} positions"
            )
        encoder = glue.PairEncoder.for_tokenizer(
            student.tokenizer, cfg.family, cfg.pad_token_id, config.max_len
        )
        encode = functools.partial(glue.encode_examples, student.tokenizer, encoder)
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
        return self.glue_task.compute_metrics(predictions, labels), saved

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
# Registry
# ---------------------------------------------------------------------------------------------

TASKS: dict[str, Task] = {name: ClassificationTask(task) for name, task in glue.TASKS.items()}
TASK_NAMES = tuple(TASKS)


def get_task(name: str) -> Task:
    """A task by name ("SST-2", "sst_2" and "sst2" all work); fails with the list of names."""
    key = str(name).lower().replace("-", "").replace("_", "").replace(".", "")
    if key not in TASKS:
        raise ValueError(f"config.task={name!r} is not a known task; allowed: {list(TASK_NAMES)}")
    return TASKS[key]
