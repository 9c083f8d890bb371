"""GLUE fine-tuning and evaluation of students: ``run_sweep(config, workdir)`` and the CLI.

    python -m minilm_jax.finetune --config experiments/glue.py:task=rte --workdir runs/glue_rte \
        --config.student_path=runs/distill/hf_student

A student (any Hugging Face folder of family bert, roberta or xlm-roberta) gets a task head
and is fine-tuned whole with AdamW (no weight decay on biases and LayerNorm), a linear warmup
then linear decay, dropout 0.1, data parallel over every device (batch split along ``data``,
parameters replicated). Each point of the learning-rate x epochs x seeds grid is one run,
evaluated on the task's dev split(s) at its end (MNLI: matched and mismatched). The workdir
gets ``config.json``, ``results.jsonl`` (one line per run; a rerun skips the points already
there), ``runs/<run>/`` (metrics.jsonl, TensorBoard, dev predictions) and ``summary.json`` +
``summary.md``: for each (learning rate, epochs) the mean over seeds and the best run, and the
overall best, as a markdown table that is also printed.

Sections: the model (encoder + head) -> validation and loading -> the pure steps -> one run
-> the sweep and its summary -> the CLI.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tokenizers
from flax import nnx

from minilm_jax import glue, hf, metrics, parallel
from minilm_jax.models.transformer import FAMILIES, Transformer, TransformerConfig
from minilm_jax.optim import decay_mask

HEADS = ("auto", "pooler", "cls")
DTYPES = ("float32", "bfloat16")
RESULTS_FILE = "results.jsonl"


class FinetuneError(RuntimeError):
    """A run that had to stop (non-finite loss)."""


# ---------------------------------------------------------------------------------------------
# The model: encoder + task head.
# ---------------------------------------------------------------------------------------------


def resolve_head(head: str, family: str) -> str:
    """ "auto": the pooler for BERT (as BertForSequenceClassification), the [CLS]/<s> head
    with its own dense+tanh for RoBERTa/XLM-R (as RobertaClassificationHead)."""
    if head not in HEADS:
        raise ValueError(f"config.head={head!r}; allowed: {HEADS}")
    if head == "auto":
        return "pooler" if family == "bert" else "cls"
    return head


class Classifier(nnx.Module):
    """Logits (float32 [B, num_outputs]) of a sequence-level task.

    head="pooler": pooler_output (tanh(dense(h_0)) of the encoder) -> dropout -> linear.
    head="cls": h_0 -> dropout -> dense -> tanh -> dropout -> linear.
    num_outputs=1 is a regression score (STS-B).
    """

    def __init__(
        self, encoder: Transformer, num_outputs: int, *, head: str, dropout: float, rngs: nnx.Rngs
    ):
        if head not in ("pooler", "cls"):
            raise ValueError(f"Classifier head={head!r}; allowed: 'pooler', 'cls'")
        if head == "pooler" and encoder.pooler is None:
            raise ValueError("head='pooler' needs an encoder built with add_pooler=True")
        cfg = encoder.config
        d = cfg.hidden_size
        init = dict(
            kernel_init=nnx.initializers.normal(cfg.initializer_range),
            bias_init=nnx.initializers.zeros_init(),
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.encoder = encoder
        self.head = head
        self.dense = nnx.Linear(d, d, **init) if head == "cls" else None
        self.out = nnx.Linear(d, num_outputs, **init)
        self.dropout = nnx.Dropout(dropout)

    def __call__(
        self, input_ids, attention_mask, token_type_ids, *, deterministic: bool = True, rngs=None
    ):
        out = self.encoder(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs
        )
        if self.head == "pooler":
            x = out.pooler_output.astype(jnp.float32)
        else:
            x = self.dropout(
                out.last_hidden_state[:, 0].astype(jnp.float32),
                deterministic=deterministic,
                rngs=rngs,
            )
            x = jnp.tanh(self.dense(x))
        return self.out(self.dropout(x, deterministic=deterministic, rngs=rngs))


@dataclasses.dataclass(frozen=True)
class Student:
    """A loaded student: its encoder split into graph and host (NumPy) parameters, so every
    run starts from a fresh copy of the pretrained weights."""

    path: str
    config: TransformerConfig  # with the fine-tuning dropout and compute dtype
    head: str  # resolved: "pooler" | "cls"
    graphdef: Any
    params: Any  # nnx.State of NumPy arrays
    tokenizer: tokenizers.Tokenizer

    def encoder(self) -> Transformer:
        return nnx.merge(self.graphdef, self.params)


def load_student(
    path: str, *, head: str = "auto", dropout: float = 0.1, dtype: str = "float32"
) -> Student:
    """Loads a Hugging Face folder (weights + tokenizer) for fine-tuning.

    The checkpoint's dropout rates are replaced by ``dropout`` (an exported student may carry
    the rate it was distilled with); the pooler is dropped when the head does not use it.
    """
    config, encoder = hf.load_pretrained(path, dtype=jnp.dtype(dtype))
    tokenizer = hf.load_tokenizer(path)
    head = resolve_head(head, config.family)
    config = config.replace(hidden_dropout=dropout, attention_dropout=dropout)
    with_pooler = head == "pooler"
    if not with_pooler:
        encoder.pooler = None
    # Dropout rates are static attributes of the graph: rebuild it for the new config and
    # pour the loaded parameters into it.
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), add_pooler=with_pooler))
    params = jax.tree.map(np.asarray, nnx.state(encoder, nnx.Param))
    return Student(os.fspath(path), config, head, nnx.graphdef(abstract), params, tokenizer)


def init_model(student: Student, num_outputs: int, *, dropout: float, seed: int) -> Classifier:
    """A fresh classifier: the pretrained encoder and a head initialised from ``seed``."""
    return Classifier(
        student.encoder(), num_outputs, head=student.head, dropout=dropout, rngs=nnx.Rngs(seed)
    )


# ---------------------------------------------------------------------------------------------
# Validation: everything that can be checked before loading models or data.
# ---------------------------------------------------------------------------------------------


def _fail(field: str, value: Any, why: str) -> None:
    raise ValueError(f"config.{field}={value!r}: {why}")


def validate_config(config: ml_collections.ConfigDict) -> glue.GlueTask:
    """Raises ``ValueError`` naming the field and the allowed values; returns the task."""
    task = glue.get_task(config.task)
    if config.dtype not in DTYPES:
        _fail("dtype", config.dtype, f"allowed: {DTYPES}")
    if config.head not in HEADS:
        _fail("head", config.head, f"allowed: {HEADS}")
    if not 0.0 <= config.dropout < 1.0:
        _fail("dropout", config.dropout, "must be in [0, 1)")
    if not 0.0 <= config.warmup_fraction < 1.0:
        _fail("warmup_fraction", config.warmup_fraction, "must be in [0, 1)")
    for field in ("max_len", "log_every"):
        if int(config[field]) <= 0:
            _fail(field, config[field], "must be a positive integer")
    for field in ("max_train_examples", "max_eval_examples", "tfds_mock_examples"):
        if int(config[field]) < 0:
            _fail(field, config[field], "must be >= 0 (0 = all / off)")
    parallel.check_batch_size(config.batch_size, "batch_size")
    parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
    sweep = config.sweep
    if not sweep.learning_rates or any(not float(lr) > 0 for lr in sweep.learning_rates):
        _fail(
            "sweep.learning_rates",
            sweep.learning_rates,
            "needs one or more positive learning rates",
        )
    if not sweep.epochs or any(int(e) != e or e < 1 for e in sweep.epochs):
        _fail("sweep.epochs", sweep.epochs, "needs one or more positive integers")
    if not sweep.seeds or any(int(s) != s for s in sweep.seeds):
        _fail("sweep.seeds", sweep.seeds, "needs one or more integers")
    if config.tiny_student_family and config.tiny_student_family not in FAMILIES:
        _fail("tiny_student_family", config.tiny_student_family, f"allowed: {FAMILIES} or ''")
    if not config.tiny_student_family:
        check_student_path(config.student_path)
    return task


def check_student_path(path: str) -> TransformerConfig:
    """The student's config.json, or a ValueError that says what to pass."""
    if not path:
        _fail(
            "student_path",
            path,
            "set it to a Hugging Face folder (config.json, model.safetensors, tokenizer), e.g. "
            "the WORKDIR/hf_student that `python -m minilm_jax.main` writes",
        )
    path = os.path.expanduser(path)
    try:
        config = hf.load_config(path)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"config.student_path={path!r}: {e}") from None
    if not any(
        os.path.isfile(os.path.join(path, name)) for name in ("tokenizer.json", "vocab.txt")
    ):
        _fail(
            "student_path",
            path,
            "has no tokenizer (tokenizer.json or vocab.txt); copy the teacher's with "
            "minilm_jax.hf.copy_tokenizer_files(teacher_path, student_path)",
        )
    return config


# ---------------------------------------------------------------------------------------------
# The pure steps. The graph definition and the optimizer are bound with functools.partial;
# the learning-rate schedule lives in the state, so one compiled step serves every point of a
# sweep.
# ---------------------------------------------------------------------------------------------


@flax.struct.dataclass
class FinetuneState:
    step: jax.Array  # int32 scalar
    params: Any  # nnx.State of the classifier's Params
    opt_state: Any
    rng: jax.Array  # raw uint32 key data of the dropout stream
    schedule: jax.Array  # float32 [3]: peak learning rate, warmup steps, total steps


def learning_rate(step: jax.Array, schedule: jax.Array) -> jax.Array:
    """Linear warmup from 0 to the peak over the warmup steps, then linear decay to 0 at the
    last step (transformers' get_linear_schedule_with_warmup)."""
    peak, warmup, total = schedule[0], schedule[1], schedule[2]
    step = step.astype(jnp.float32)
    rising = peak * step / jnp.maximum(warmup, 1.0)
    falling = peak * jnp.maximum(total - step, 0.0) / jnp.maximum(total - warmup, 1.0)
    return jnp.where(step < warmup, rising, falling)


OPTIMIZER_FIELDS = ("adam_b1", "adam_b2", "adam_eps", "weight_decay", "grad_clip_norm")


def optimizer_settings(config: ml_collections.ConfigDict) -> tuple[tuple[str, float], ...]:
    return tuple((field, float(config[field])) for field in OPTIMIZER_FIELDS)


def make_optimizer(config: Mapping[str, Any]) -> optax.GradientTransformation:
    """AdamW without its learning-rate scaling (``train_step`` applies the scheduled rate):
    optax.adamw is exactly scale_by_adam -> add_decayed_weights -> scale by -lr."""
    parts = (
        [optax.clip_by_global_norm(config["grad_clip_norm"])] if config["grad_clip_norm"] else []
    )
    parts += [
        optax.scale_by_adam(b1=config["adam_b1"], b2=config["adam_b2"], eps=config["adam_eps"]),
        optax.add_decayed_weights(config["weight_decay"], mask=decay_mask),
    ]
    return optax.chain(*parts)


def loss_fn(params, batch, dropout_key, graphdef, *, regression: bool, train: bool):
    """Weighted mean over the batch's real rows (filler rows have weight 0) of the cross
    entropy, or of the squared error of the score for regression. Returns (loss, logits)."""
    model = nnx.merge(graphdef, params)
    logits = model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=not train,
        rngs=nnx.Rngs(dropout=dropout_key) if train else None,
    )
    if regression:
        per_row = jnp.square(logits[:, 0] - batch["label"].astype(jnp.float32))
    else:
        per_row = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    weight = batch["weight"]
    return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0), logits


def optimizer_update(params, grads, opt_state, step, schedule, tx):
    """One AdamW step at the scheduled learning rate of ``step``: (params, opt_state, lr)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    lr = learning_rate(step, schedule)
    return optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates)), opt_state, lr


def train_step(state: FinetuneState, batch, *, graphdef, tx, regression: bool):
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, _), grads = grad_fn(
        state.params, batch, dropout_key, graphdef, regression=regression, train=True
    )
    params, opt_state, lr = optimizer_update(
        state.params, grads, state.opt_state, state.step, state.schedule, tx
    )
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {"loss": loss, "lr": lr, "grad_norm": optax.global_norm(grads)}


def predict_step(params, batch, *, graphdef):
    model = nnx.merge(graphdef, params)
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


@functools.lru_cache(maxsize=16)
def step_functions(graphdef, regression: bool, settings: tuple[tuple[str, float], ...], mesh):
    """The jitted (train_step, predict_step) of one model graph and optimizer on ``mesh``.

    Cached, so every Finetuner of the same student, task and optimizer in this process (the
    runs of a sweep, a notebook re-running a sweep) shares the compiled steps: the learning
    rate, its schedule and the seed are state, not constants.
    """
    tx = make_optimizer(dict(settings))
    replicated, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    train_fn = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx, regression=regression),
        in_shardings=(replicated, batch),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    predict_fn = jax.jit(
        functools.partial(predict_step, graphdef=graphdef),
        in_shardings=(replicated, batch),
        out_shardings=replicated,
    )
    return train_fn, predict_fn


# ---------------------------------------------------------------------------------------------
# Data on the host.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskData:
    task: glue.GlueTask
    train: glue.Encoded
    evals: dict[str, glue.Encoded]  # TFDS split -> examples


def encode_task_data(
    task: glue.GlueTask,
    student: Student,
    train: glue.Examples,
    evals: Mapping[str, glue.Examples],
    max_len: int,
) -> TaskData:
    cfg = student.config
    if max_len > cfg.max_sequence_length:
        _fail("max_len", max_len, f"the student has only {cfg.max_sequence_length} positions")
    encoder = glue.PairEncoder.for_tokenizer(
        student.tokenizer, cfg.family, cfg.pad_token_id, max_len
    )
    encode = functools.partial(glue.encode_examples, student.tokenizer, encoder)
    return TaskData(task, encode(train), {split: encode(ex) for split, ex in evals.items()})


def read_task_examples(
    config, task: glue.GlueTask
) -> tuple[glue.Examples, dict[str, glue.Examples]]:
    """Train and dev examples from TFDS (under ``tfds.testing.mock_data`` when
    ``config.tfds_mock_examples`` > 0: random text, for smoke runs and tests)."""

    def read_all():
        train = glue.read_split(task, task.train_split, config.data_dir, config.max_train_examples)
        evals = {
            split: glue.read_split(task, split, config.data_dir, config.max_eval_examples)
            for _, split in task.eval_splits
        }
        return train, evals

    if not config.tfds_mock_examples:
        return read_all()
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    # USE_CODE: the dataset's features come from the GLUE builder, no metadata files needed.
    with tfds.testing.mock_data(
        num_examples=config.tfds_mock_examples, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        return read_all()


def train_batches(
    encoded: glue.Encoded,
    batch_size: int,
    epochs: int,
    seed: int,
    buckets: Sequence[int],
    pad_id: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
):
    """This host's rows of every global training batch: a fresh permutation per epoch, the
    last batch of an epoch completed with filler rows (weight 0) so every example is seen once
    per epoch and the batch shape stays fixed."""
    n = len(encoded)
    steps = math.ceil(n / batch_size)
    host_rows = batch_size // process_count
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        order = np.concatenate([order, np.full(steps * batch_size - n, -1)])
        for s in range(steps):
            rows = order[s * batch_size : (s + 1) * batch_size]
            length = glue.bucket_length(int(encoded.lengths[rows[rows >= 0]].max()), buckets)
            mine = rows[process_index * host_rows : (process_index + 1) * host_rows]
            yield glue.make_batch(encoded, mine, length, pad_id)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


# ---------------------------------------------------------------------------------------------
# One run.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    record: dict[str, Any]  # what results.jsonl holds: settings, metrics, score, timing
    predictions: dict[str, np.ndarray]  # dev split -> class ids (or scores for regression)
    labels: dict[str, np.ndarray]  # dev split -> gold labels
    logits: dict[str, np.ndarray]  # dev split -> float32 [N, num_outputs]
    params: Any = None  # the fine-tuned classifier's parameters, when run(keep_params=True)


def run_name(learning_rate: float, epochs: int, seed: int) -> str:
    return f"lr{learning_rate:g}_ep{epochs}_seed{seed}"


class Finetuner:
    """Fine-tunes fresh copies of one student on one task's data, one run per call."""

    def __init__(
        self, config: ml_collections.ConfigDict, student: Student, data: TaskData, mesh=None
    ):
        self.config, self.student, self.data, self.task = config, student, data, data.task
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        self.buckets = glue.length_buckets(config.max_len, config.length_buckets)
        self.num_outputs = self.task.num_labels
        self.tx = make_optimizer(dict(optimizer_settings(config)))
        model = nnx.eval_shape(
            lambda: init_model(student, self.num_outputs, dropout=config.dropout, seed=0)
        )
        self.graphdef = nnx.graphdef(model)
        self.train_fn, self.predict_fn = step_functions(
            self.graphdef, self.task.regression, optimizer_settings(config), self.mesh
        )

    def init_state(self, learning_rate: float, total_steps: int, seed: int) -> FinetuneState:
        model = init_model(self.student, self.num_outputs, dropout=self.config.dropout, seed=seed)
        params = nnx.state(model, nnx.Param)
        warmup = math.ceil(self.config.warmup_fraction * total_steps)  # as transformers
        state = FinetuneState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            rng=jax.random.key_data(jax.random.key(seed + 1)),
            schedule=jnp.asarray([learning_rate, warmup, total_steps], jnp.float32),
        )
        return parallel.replicate(state, self.mesh)

    def run(
        self,
        learning_rate: float,
        epochs: int,
        seed: int,
        *,
        run_dir: str | None = None,
        log: Callable[[str], None] = print,
        keep_params: bool = False,
    ) -> RunResult:
        """Fine-tunes from the pretrained student and evaluates on every dev split."""
        config, data = self.config, self.data
        per_epoch = steps_per_epoch(len(data.train), config.batch_size)
        total = per_epoch * epochs
        name = run_name(learning_rate, epochs, seed)
        state = self.init_state(learning_rate, total, seed)
        writer = metrics.MetricWriter(run_dir) if run_dir else None
        batches = train_batches(
            data.train,
            config.batch_size,
            epochs,
            seed,
            self.buckets,
            self.student.config.pad_token_id,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        start, window, last_loss = time.time(), [], float("nan")
        try:
            for step, batch in enumerate(batches, start=1):
                state, step_metrics = self.train_fn(state, parallel.to_global(batch, self.mesh))
                window.append(step_metrics)
                if step % config.log_every == 0 or step == total:
                    means = {
                        k: float(np.mean([jax.device_get(m[k]) for m in window])) for k in window[0]
                    }
                    window = []
                    last_loss = means["loss"]
                    if not math.isfinite(last_loss):
                        raise FinetuneError(
                            f"run {name}: non-finite training loss at step {step}; lower the "
                            f"learning rate (config.sweep.learning_rates)"
                        )
                    if writer:
                        writer.write(step, means, kind="train")
                    log(
                        f"  {name} step {step}/{total}: loss {last_loss:.4f} lr {means['lr']:.3g} "
                        f"grad_norm {means['grad_norm']:.3g}"
                    )
            train_seconds = time.time() - start
            logits = {
                split: self.predict(state.params, encoded) for split, encoded in data.evals.items()
            }
        finally:
            if writer:
                writer.close()
        labels = {split: encoded.labels for split, encoded in data.evals.items()}
        if self.task.regression:
            predictions = {split: x[:, 0] for split, x in logits.items()}
        else:
            predictions = {split: np.argmax(x, axis=-1) for split, x in logits.items()}
        run_metrics = self.task.compute_metrics(predictions, labels)
        record = {
            "task": self.task.name,
            "student_path": self.student.path,
            "learning_rate": float(learning_rate),
            "epochs": int(epochs),
            "seed": int(seed),
            "steps": int(total),
            "train_examples": len(data.train),
            "final_train_loss": last_loss,
            "train_seconds": round(train_seconds, 2),
            "metrics": run_metrics,
            "score": self.task.score(run_metrics),
        }
        if run_dir and jax.process_index() == 0:
            np.savez(
                os.path.join(run_dir, "predictions.npz"),
                **{
                    f"{split}/{kind}": value
                    for split in logits
                    for kind, value in (("logits", logits[split]), ("labels", labels[split]))
                },
            )
        return RunResult(record, predictions, labels, logits, state.params if keep_params else None)

    def predict(self, params, encoded: glue.Encoded) -> np.ndarray:
        """float32 logits [N, num_outputs] in the examples' order. Batches are formed from
        length-sorted examples so short ones use the short buckets."""
        batch_size = self.config.eval_batch_size
        host_rows = batch_size // jax.process_count()
        lo = jax.process_index() * host_rows
        order = np.argsort(encoded.lengths, kind="stable")
        padded = np.concatenate([order, np.full(-len(order) % batch_size, -1)])
        out = np.zeros((len(encoded), self.num_outputs), np.float32)
        for s in range(0, len(padded), batch_size):
            rows = padded[s : s + batch_size]
            real = rows[rows >= 0]
            length = glue.bucket_length(int(encoded.lengths[real].max()), self.buckets)
            batch = glue.make_batch(
                encoded, rows[lo : lo + host_rows], length, self.student.config.pad_token_id
            )
            logits = self.predict_fn(params, parallel.to_global(batch, self.mesh))
            # Replicated output: this host's first shard is the whole global batch.
            out[real] = np.asarray(logits.addressable_data(0))[: len(real)]
        return out


# ---------------------------------------------------------------------------------------------
# The sweep and its summary.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepResult:
    summary: dict[str, Any]
    records: list[dict[str, Any]]  # every run of this task and student in results.jsonl
    runs: list[RunResult]  # the runs done by this call (with predictions)
    markdown: str


def sweep_points(config) -> list[tuple[float, int, int]]:
    return [
        (float(lr), int(epochs), int(seed))
        for lr in config.sweep.learning_rates
        for epochs in config.sweep.epochs
        for seed in config.sweep.seeds
    ]


def _rank(score: float) -> float:
    return -math.inf if score is None or not math.isfinite(score) else score


def summarize(records: Sequence[Mapping[str, Any]], task: glue.GlueTask) -> dict[str, Any]:
    """Per (learning rate, epochs): the mean over seeds of every metric and of the score, and
    the best single run; overall: the best run and the best mean. NaN scores rank last."""
    if not records:
        raise ValueError(f"no finished runs to summarise for task {task.name!r}")
    names = (*task.metric_names, "score")
    value = lambda r, name: r["score"] if name == "score" else r["metrics"][name]  # noqa: E731
    groups: dict[tuple[float, int], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((float(r["learning_rate"]), int(r["epochs"])), []).append(r)
    points = []
    for (lr, epochs), runs in sorted(groups.items()):
        best = max(runs, key=lambda r: _rank(r["score"]))
        points.append(
            {
                "learning_rate": lr,
                "epochs": epochs,
                "seeds": sorted(int(r["seed"]) for r in runs),
                "mean": {name: float(np.mean([value(r, name) for r in runs])) for name in names},
                "best": {
                    "seed": int(best["seed"]),
                    "score": best["score"],
                    "metrics": dict(best["metrics"]),
                },
            }
        )
    best_run = max(records, key=lambda r: _rank(r["score"]))
    best_mean = max(points, key=lambda p: _rank(p["mean"]["score"]))
    return {
        "task": task.name,
        "metric_names": list(task.metric_names),
        "points": points,
        "best_run": {
            k: best_run[k] for k in ("learning_rate", "epochs", "seed", "metrics", "score")
        },
        "best_mean": {k: best_mean[k] for k in ("learning_rate", "epochs", "seeds", "mean")},
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as markdown (metrics in percent, as GLUE tables report them)."""
    names = summary["metric_names"]
    pct = lambda x: "nan" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"  # noqa: E731
    header = [
        "lr",
        "epochs",
        "seeds",
        *(f"{n} (mean)" for n in names),
        "score (mean)",
        "best score",
        "best seed",
    ]
    lines = [
        f"GLUE {summary['task']}: dev results",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for p in summary["points"]:
        cells = [
            f"{p['learning_rate']:g}",
            str(p["epochs"]),
            str(len(p["seeds"])),
            *(pct(p["mean"][n]) for n in names),
            pct(p["mean"]["score"]),
            pct(p["best"]["score"]),
            str(p["best"]["seed"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    run, mean = summary["best_run"], summary["best_mean"]
    lines += [
        "",
        f"Best single run: lr {run['learning_rate']:g}, epochs {run['epochs']}, seed {run['seed']}: "
        + ", ".join(f"{n} {pct(run['metrics'][n])}" for n in names)
        + f" (score {pct(run['score'])})",
        f"Best mean over seeds: lr {mean['learning_rate']:g}, epochs {mean['epochs']} "
        f"(seeds {', '.join(map(str, mean['seeds']))}): "
        + ", ".join(f"{n} {pct(mean['mean'][n])}" for n in names)
        + f" (score {pct(mean['mean']['score'])})",
    ]
    return "\n".join(lines) + "\n"


def read_results(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    return metrics.read_jsonl(path)


def ensure_tiny_student(config, workdir: str, texts: Sequence[str]) -> str:
    """Smoke runs: a tiny random student (tokenizer trained on the task's texts) in the
    workdir, written once."""
    from minilm_jax import tiny  # pylint: disable=import-outside-toplevel

    path = os.path.join(workdir, "tiny_student")
    if not os.path.exists(os.path.join(path, "config.json")) and jax.process_index() == 0:
        tiny.write_tiny_teacher(
            config.tiny_student_family,
            path,
            texts,
            num_layers=2,
            hidden_size=32,
            num_heads=4,
            intermediate_size=64,
            vocab_size=256,
            seed=1234,
        )
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        multihost_utils.sync_global_devices("tiny_student")
    return path


def run_sweep(
    config: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None] = print
) -> SweepResult:
    """Fine-tunes one run per (learning rate, epochs, seed) of ``config.sweep`` and writes
    results.jsonl, summary.json and summary.md into ``workdir``; returns all of it."""
    workdir = os.path.abspath(workdir)
    parallel.initialize_distributed(config.get("distributed"))
    task = validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    main_host = jax.process_index() == 0
    if main_host:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")

    train, evals = read_task_examples(config, task)
    if config.tiny_student_family:
        student_path = ensure_tiny_student(
            config, workdir, [t for column in train.texts for t in column]
        )
    else:
        student_path = os.path.abspath(os.path.expanduser(config.student_path))
    student = load_student(
        student_path, head=config.head, dropout=config.dropout, dtype=config.dtype
    )
    data = encode_task_data(task, student, train, evals, config.max_len)
    log(
        f"GLUE {task.name}: {len(data.train)} train examples, dev "
        + ", ".join(f"{split} {len(e)}" for split, e in data.evals.items())
        + f"; student {student_path} ({student.config.family}, {student.config.num_layers}x"
        f"{student.config.hidden_size}, head {student.head})"
    )
    finetuner = Finetuner(config, student, data)

    results_path = os.path.join(workdir, RESULTS_FILE)
    mine = lambda r: r.get("task") == task.name and r.get("student_path") == student_path  # noqa: E731
    records = [r for r in read_results(results_path) if mine(r)]
    done = {(r["learning_rate"], r["epochs"], r["seed"]) for r in records}
    runs = []
    for lr, epochs, seed in sweep_points(config):
        if (lr, epochs, seed) in done:
            log(f"{run_name(lr, epochs, seed)}: already in {results_path}, skipped")
            continue
        run_dir = os.path.join(workdir, "runs", run_name(lr, epochs, seed))
        if main_host:
            os.makedirs(run_dir, exist_ok=True)
        result = finetuner.run(lr, epochs, seed, run_dir=run_dir if main_host else None, log=log)
        log(
            f"{run_name(lr, epochs, seed)}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.record["metrics"].items())
            + f" ({result.record['train_seconds']:.0f}s)"
        )
        if main_host:
            with open(results_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(result.record) + "\n")
        records.append(result.record)
        done.add((lr, epochs, seed))
        runs.append(result)

    points = set(sweep_points(config))
    in_sweep = [r for r in records if (r["learning_rate"], r["epochs"], r["seed"]) in points]
    summary = summarize(in_sweep, task)
    markdown = format_summary(summary)
    if main_host:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(workdir, "summary.md"), "w", encoding="utf-8") as f:
            f.write(markdown)
    log(markdown)
    return SweepResult(summary, in_sweep, runs, markdown)


# ---------------------------------------------------------------------------------------------
# CLI. Flags are defined only when run as a program, so importing this module next to
# minilm_jax.main (which defines the same flag names) is safe.
# ---------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    from absl import app, flags  # pylint: disable=import-outside-toplevel

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    try:
        run_sweep(flags.FLAGS.config, flags.FLAGS.workdir, log=lambda s: print(s, flush=True))
    except (ValueError, FileNotFoundError, FinetuneError) as e:
        # Configuration and data problems: one clear line, not a traceback.
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(3 if isinstance(e, FinetuneError) else 2)


def _cli() -> None:
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

    config_flags.DEFINE_config_file(
        "config", None, "Fine-tuning file (experiments/glue.py[:task=NAME,...]).", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Output directory (results.jsonl, summary.md, runs/).")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    _cli()
