"""Fine-tuning and evaluation of students on any task (`minilm_jax.tasks`): ``run_sweep``
and the CLI.

    python -m minilm_jax.finetune --config experiments/glue.py:task=rte --workdir runs/glue_rte \
        --config.student_path=runs/distill/hf_student

A student (any Hugging Face folder of a supported family, with its tokenizer) gets the task's
head and is fine-tuned whole, one run per (learning rate, epochs, seed) of `config.sweep`.
The runs share the project's toolkit with distillation: the optimizer and schedule
(`optim`), the train step with its NaN policy (`steps`), the loop with its metric window,
checkpoints and Ctrl-C/SIGTERM handling (`loop`), the sweep runner with its resume rule and
summary writer (`sweep`). Only what differs is here: loading the student, batches of task
features, prediction on the evaluation sets.

Tasks: the GLUE tasks, squad2, squad1, xnli, mlqa (experiments/glue.py, squad.py, xnli.py,
mlqa.py; docs/evaluation.md).

The workdir is a run directory (docs/run_directory.md: claimed for one sweep, one writer at a
time, its config checked on a rerun). It gets ``run_config.json``, ``results.jsonl`` (one line
per finished run; a rerun skips them, and refuses when a setting that changes results
differs), ``runs/<run>/`` (metrics, TensorBoard, checkpoints while the run is unfinished, the
task's re-scorable outputs: ``predictions.npz`` and/or JSON files such as SQuAD's
``predictions.json``; part of the sweep's claim) and ``summary.json`` + ``summary.md`` (per
learning rate and epochs: the mean over seeds and the best run; the best mean overall).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers
from flax import nnx

from minilm_jax import checkpointing, cli, hf, loop, metrics, optim, parallel, rundir, steps, sweep
from minilm_jax import tasks as tasks_lib
from minilm_jax.configs import check_positive, fail
from minilm_jax.models import build_model
from minilm_jax.models.heads import resolve_head
from minilm_jax.models.transformer import DTYPES

# ---------------------------------------------------------------------------------------------
# The student.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Student:
    """A loaded student: its encoder split into graph and host (NumPy) parameters, so every
    run starts from a fresh copy of the pretrained weights."""

    path: str
    config: Any  # with the fine-tuning dropout and compute dtype
    graphdef: Any
    params: Any  # nnx.State of NumPy arrays
    tokenizer: tokenizers.Tokenizer

    def encoder(self):
        return nnx.merge(self.graphdef, self.params)


def load_student(
    path: str, *, dropout: float = 0.1, dtype: str = "float32", with_pooler: bool = True
) -> Student:
    """Loads a Hugging Face folder (weights + tokenizer) for fine-tuning.

    The checkpoint's dropout rates are replaced by ``dropout`` (an exported student may carry
    the rate it was distilled with); the pooler is dropped unless the task's head uses it.
    """
    config, encoder = hf.load_pretrained(path, dtype=jnp.dtype(dtype))
    tokenizer = hf.load_tokenizer(path)
    config = config.replace(hidden_dropout=dropout, attention_dropout=dropout)
    with_pooler = with_pooler and getattr(encoder, "pooler", None) is not None
    if not with_pooler and getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    # Dropout rates are static attributes of the graph: rebuild it for the new config and
    # pour the loaded parameters into it.
    abstract = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0), add_pooler=with_pooler))
    params = jax.tree.map(np.asarray, nnx.state(encoder, nnx.Param))
    return Student(os.fspath(path), config, nnx.graphdef(abstract), params, tokenizer)


def check_student_path(path: str):
    """The student's config (from config.json), or a ValueError that says what to pass."""
    if not path:
        fail(
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
        fail(
            "student_path",
            path,
            "has no tokenizer (tokenizer.json or vocab.txt); copy the teacher's with "
            "minilm_jax.hf.copy_tokenizer_files(teacher_path, student_path)",
        )
    return config


# ---------------------------------------------------------------------------------------------
# Validation: everything that can be checked before loading models or data.
# ---------------------------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict) -> tasks_lib.Task:
    """Raises ``ValueError`` naming the field and the allowed values; returns the task."""
    task = tasks_lib.get_task(config.task)
    if config.dtype not in DTYPES:
        fail("dtype", config.dtype, f"allowed: {DTYPES}")
    resolve_head(config.head, "bert")  # the value is checked; the family comes later
    if not 0.0 <= config.dropout < 1.0:
        fail("dropout", config.dropout, "must be in [0, 1)")
    if not 0.0 <= config.warmup_fraction < 1.0:
        fail("warmup_fraction", config.warmup_fraction, "must be in [0, 1)")
    check_positive(config, "max_len", "log_every", "checkpoint_every")
    for field in ("max_train_examples", "max_eval_examples"):
        if int(config[field]) < 0:
            fail(field, config[field], "must be >= 0 (0 = all)")
    parallel.mesh_shape(config.get("mesh"), jax.device_count())
    parallel.check_batch_size(config.batch_size, "batch_size")
    parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
    grid = config.sweep
    if not grid.learning_rates or any(not float(lr) > 0 for lr in grid.learning_rates):
        fail("sweep.learning_rates", grid.learning_rates, "needs one or more positive rates")
    if not grid.epochs or any(int(e) != e or e < 1 for e in grid.epochs):
        fail("sweep.epochs", grid.epochs, "needs one or more positive integers")
    if not grid.seeds or any(int(s) != s for s in grid.seeds):
        fail("sweep.seeds", grid.seeds, "needs one or more integers")
    student_config = check_student_path(config.student_path)
    task.check_config(config, student_config)
    return task


# ---------------------------------------------------------------------------------------------
# Batches.
# ---------------------------------------------------------------------------------------------


def bucket_length(longest: int, buckets: Sequence[int]) -> int:
    """The shortest bucket that holds ``longest`` tokens (buckets ascending, the last one is
    max_len)."""
    for length in buckets:
        if longest <= length:
            return int(length)
    raise ValueError(f"{longest} tokens exceed the longest bucket {buckets[-1]}")


def length_buckets(max_len: int, extra: Sequence[int]) -> tuple[int, ...]:
    """Sorted padded lengths: the extra ones below max_len, then max_len itself."""
    lengths = sorted({int(x) for x in extra if 0 < int(x) < max_len})
    return (*lengths, int(max_len))


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    return math.ceil(num_rows / batch_size)


def train_batches(
    features: tasks_lib.Features,
    batch_size: int,
    epochs: int,
    seed: int,
    buckets: Sequence[int],
    pad_id: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
):
    """This host's rows of every global training batch, as a Grain dataset (so a checkpoint
    holds its position): a fresh permutation per epoch, the last batch of an epoch completed
    with filler rows (weight 0) so every example is seen once per epoch and the batch shape
    stays fixed. Batch i is a pure function of (seed, i)."""
    n = len(features)
    per_epoch = steps_per_epoch(n, batch_size)
    host_rows = batch_size // process_count

    @functools.lru_cache(maxsize=2)
    def order(epoch: int) -> np.ndarray:
        rows = np.random.default_rng([seed, epoch]).permutation(n)
        return np.concatenate([rows, np.full(per_epoch * batch_size - n, -1)])

    def batch(i: int) -> dict[str, np.ndarray]:
        epoch, s = divmod(int(i), per_epoch)
        rows = order(epoch)[s * batch_size : (s + 1) * batch_size]
        length = bucket_length(int(features.lengths[rows[rows >= 0]].max()), buckets)
        mine = rows[process_index * host_rows : (process_index + 1) * host_rows]
        return features.batch(mine, length, pad_id)

    return (
        grain.MapDataset.range(per_epoch * epochs)
        .map(batch)
        .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
    )


# ---------------------------------------------------------------------------------------------
# One run.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    record: dict[str, Any]  # what results.jsonl holds: settings, metrics, score, timing
    outputs: dict[str, dict[str, np.ndarray]]  # eval set -> the model's outputs per row
    saved: dict[str, np.ndarray]  # what predictions.npz holds
    files: dict[str, Any] = dataclasses.field(default_factory=dict)  # the run's JSON files
    params: Any = None  # the fine-tuned model's parameters, when run(keep_params=True)


def run_name(learning_rate: float, epochs: int, seed: int) -> str:
    return f"lr{learning_rate:g}_ep{epochs}_seed{seed}"


class Finetuner:
    """Fine-tunes fresh copies of one student on one task's data, one run per call. The
    compiled train and predict steps serve every run: the learning rate, its schedule and
    the seed are arguments, not constants."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        task: tasks_lib.Task,
        student: Student,
        data: tasks_lib.TaskData,
        mesh=None,
    ):
        self.config, self.task, self.student, self.data = config, task, student, data
        # config.mesh and the fsdp rule table, as distillation (parallel.py).
        self.mesh = parallel.mesh_from_config(config.get("mesh")) if mesh is None else mesh
        self.buckets = length_buckets(config.max_len, config.length_buckets)
        self.tx = optim.make_optimizer(config)
        model = nnx.eval_shape(lambda: self.build(seed=0))
        self.graphdef = nnx.graphdef(model)
        replicated, batch = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
        self.state_sharding = parallel.state_shardings(
            jax.eval_shape(lambda: steps.init_state(nnx.state(model, nnx.Param), self.tx, 0)),
            self.mesh,
        )

        def loss_fn(params, aux, batch, dropout_key):
            del aux
            return task.loss(nnx.merge(self.graphdef, params), batch, dropout_key)

        self.train_fn = steps.jit_train_step(
            loss_fn,
            self.tx,
            grad_accum_steps=1,
            state_sharding=self.state_sharding,
            batch_sharding=batch,
            aux_sharding=replicated,
            replicated=replicated,
        )
        self.predict_fn = jax.jit(
            lambda params, batch: task.predict(nnx.merge(self.graphdef, params), batch),
            in_shardings=(self.state_sharding.params, batch),
            out_shardings=replicated,
        )

    def build(self, seed: int):
        """A fresh model: the pretrained encoder and a head initialised from ``seed``."""
        return self.task.build_model(self.student.encoder(), self.config, rngs=nnx.Rngs(seed))

    def init_state(self, seed: int) -> steps.TrainState:
        with parallel.on_host():
            state = steps.init_state(nnx.state(self.build(seed), nnx.Param), self.tx, seed + 1)
        return parallel.place(state, self.state_sharding)

    def total_steps(self, epochs: int) -> int:
        return steps_per_epoch(len(self.data.train), self.config.batch_size) * epochs

    def run(
        self,
        learning_rate: float,
        epochs: int,
        seed: int,
        *,
        run_dir: str | None = None,
        log: Callable[[str], None] = print,
        keep_params: bool = False,
        stop: checkpointing.StopSignal | None = None,
    ) -> RunResult | loop.Result:
        """Fine-tunes from the pretrained student and evaluates on every evaluation set.

        With ``run_dir``, the run checkpoints there and resumes from it; a run stopped by a
        signal returns the loop's ``Result`` (with ``preempted_at``) instead of a RunResult.
        """
        config, data = self.config, self.data
        total = self.total_steps(epochs)
        warmup = math.ceil(config.warmup_fraction * total)  # as transformers
        schedule = optim.schedule(learning_rate, warmup, total)
        state = self.init_state(seed)
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
        train_iter = iter(batches)
        ckpt = writer = None
        start_step, main_host = 0, jax.process_index() == 0
        try:  # the data iterator is closed on every way out (its prefetch thread)
            if run_dir:
                # Two kept: a damaged newest checkpoint falls back to the one before it.
                ckpt = checkpointing.Checkpointer(
                    os.path.join(run_dir, "checkpoints"), keep=2, use_async=False
                )
                restored = ckpt.restore_latest(checkpointing.abstract_like(state), train_iter)
                if restored is not None:
                    start_step, state = restored
                    log(
                        f"  {run_name(learning_rate, epochs, seed)}: resumed from step {start_step}"
                    )
                writer = metrics.MetricWriter(
                    run_dir, resume_step=start_step if restored is not None else None
                )
            start = time.time()
            result = loop.run(
                lambda s, b: self.train_fn(s, b, schedule, None),
                state,
                lambda: parallel.to_global(next(train_iter), self.mesh),
                cadence=loop.Cadence(
                    total_steps=total,
                    log_every=config.log_every,
                    checkpoint_every=config.checkpoint_every,
                ),
                start_step=start_step,
                writer=writer,
                progress=metrics.Progress(
                    total, start_step, prefix=f"  {run_name(learning_rate, epochs, seed)} "
                )
                if main_host
                else None,
                checkpointer=ckpt,
                data_iterator=train_iter,
                stop=stop,
                nonfinite_hint="Lower the learning rate (config.sweep.learning_rates).",
            )
            if result.preempted_at is not None:
                return result
            train_seconds = time.time() - start
            outputs = {
                name: self.predict(result.state.params, eval_set.features)
                for name, eval_set in data.evals.items()
            }
        finally:
            train_iter.close()
            if writer is not None:
                writer.close()
            if ckpt is not None:
                ckpt.wait()
                ckpt.close()
        evaluation = self.task.evaluate(data, outputs, config)
        run_metrics = evaluation.metrics
        final_loss = None
        if run_dir and os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
            train_records = [
                r
                for r in metrics.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
                if r["kind"] == "train"
            ]
            final_loss = train_records[-1]["loss"] if train_records else None
        record = {
            "task": self.task.name,
            "student_path": self.student.path,
            "learning_rate": float(learning_rate),
            "epochs": int(epochs),
            "seed": int(seed),
            "steps": int(total),
            **{k: v for k, v in data.info.items()},
            "final_train_loss": final_loss,
            "train_seconds": round(train_seconds, 2),
            "metrics": run_metrics,
            "score": self.task.score(run_metrics),
        }
        if run_dir and main_host:
            write_outputs(run_dir, evaluation)
        params = parallel.gather(result.state.params) if keep_params else None
        return RunResult(record, outputs, evaluation.arrays, evaluation.files, params)

    def predict(self, params, features: tasks_lib.Features) -> dict[str, np.ndarray]:
        """The task's outputs for every row of ``features``, in their order. Batches are formed
        from length-sorted rows so short ones use the short buckets."""
        batch_size = self.config.eval_batch_size
        host_rows = batch_size // jax.process_count()
        lo = jax.process_index() * host_rows
        order = np.argsort(features.lengths, kind="stable")
        padded = np.concatenate([order, np.full(-len(order) % batch_size, -1)])
        out: dict[str, np.ndarray] = {}
        for s in range(0, len(padded), batch_size):
            rows = padded[s : s + batch_size]
            real = rows[rows >= 0]
            length = bucket_length(int(features.lengths[real].max()), self.buckets)
            batch = features.batch(
                rows[lo : lo + host_rows], length, self.student.config.pad_token_id
            )
            values = self.predict_fn(params, parallel.to_global(batch, self.mesh))
            for name, value in values.items():
                # Replicated output: this host's first shard is the whole global batch.
                value = np.asarray(value.addressable_data(0))[: len(real)]
                out[name] = _fit(out.get(name), len(features), value)
                out[name][(real, *(slice(0, n) for n in value.shape[1:]))] = value
        return out


def _fit(buffer: np.ndarray | None, rows: int, value: np.ndarray) -> np.ndarray:
    """A [rows, ...] buffer that holds ``value``'s trailing shape: per-token outputs ([B, T]
    span logits) of a short length bucket come before those of a longer one, so the buffer
    grows to the longest (at most once per bucket); positions a row lacks stay 0, and the
    task knows each row's real length."""
    if buffer is None:
        return np.zeros((rows, *value.shape[1:]), value.dtype)
    if all(n <= m for n, m in zip(value.shape[1:], buffer.shape[1:])):
        return buffer
    grown = np.zeros((rows, *np.maximum(buffer.shape[1:], value.shape[1:])), buffer.dtype)
    grown[(slice(None), *(slice(0, n) for n in buffer.shape[1:]))] = buffer
    return grown


def write_outputs(run_dir: str, evaluation: tasks_lib.Evaluation) -> None:
    """The run's re-scorable outputs: ``predictions.npz`` (the task's arrays, when it has any)
    and its JSON files (e.g. SQuAD's predictions.json). Each file appears whole or not at all
    (written aside, then renamed)."""
    if evaluation.arrays:
        tmp = os.path.join(run_dir, "predictions.tmp.npz")
        np.savez(tmp, **evaluation.arrays)
        os.replace(tmp, os.path.join(run_dir, "predictions.npz"))
    for name, value in evaluation.files.items():
        path = os.path.join(run_dir, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=1)
        os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------------------------
# The sweep.
# ---------------------------------------------------------------------------------------------


def sweep_points(config, task: tasks_lib.Task, student_path: str) -> list[sweep.Point]:
    """One point per (learning rate, epochs, seed), keyed by every setting that changes its
    result: a rerun with the same settings skips it, one with other settings is refused."""
    settings = {
        "task": task.name,
        "student_path": student_path,
        "batch_size": config.batch_size,
        "dropout": config.dropout,
        "dtype": config.dtype,
        "warmup_fraction": config.warmup_fraction,
        **optim.settings(config),
        **task.result_settings(config),
    }
    return [
        sweep.Point(
            run_name(lr, epochs, seed),
            {**settings, "learning_rate": float(lr), "epochs": int(epochs), "seed": int(seed)},
        )
        for lr in config.sweep.learning_rates
        for epochs in config.sweep.epochs
        for seed in config.sweep.seeds
    ]


def summarize(records: Sequence[Mapping[str, Any]], task: tasks_lib.Task) -> dict[str, Any]:
    """Per (learning rate, epochs): the mean over seeds of every metric and of the score, and
    the best single run; overall: the best run and the best mean. NaN scores rank last."""
    if not records:
        raise ValueError(f"no finished runs to summarise for task {task.name!r}")
    names = (*task.metric_names, "score")

    # A metric a run lacks (a language left out by config.languages, a SQuAD 2.0 subset with
    # no question) is NaN.
    def value(r, name):
        return r["score"] if name == "score" else r["metrics"].get(name, math.nan)

    groups: dict[tuple[float, int], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((float(r["learning_rate"]), int(r["epochs"])), []).append(r)
    points = []
    for (lr, epochs), runs in sorted(groups.items()):
        best = max(runs, key=lambda r: sweep.rank(r["score"]))
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
    best_run = max(records, key=lambda r: sweep.rank(r["score"]))
    best_mean = max(points, key=lambda p: sweep.rank(p["mean"]["score"]))
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
    pct = sweep.percent
    header = [
        "lr",
        "epochs",
        "seeds",
        *(f"{n} (mean)" for n in names),
        "score (mean)",
        "best score",
        "best seed",
    ]
    rows = [
        [
            f"{p['learning_rate']:g}",
            str(p["epochs"]),
            str(len(p["seeds"])),
            *(pct(p["mean"][n]) for n in names),
            pct(p["mean"]["score"]),
            pct(p["best"]["score"]),
            str(p["best"]["seed"]),
        ]
        for p in summary["points"]
    ]
    run, mean = summary["best_run"], summary["best_mean"]
    return (
        "\n".join(
            [
                f"{summary['task']}: evaluation results",
                "",
                sweep.markdown_table(header, rows),
                "",
                f"Best single run: lr {run['learning_rate']:g}, epochs {run['epochs']}, "
                f"seed {run['seed']}: "
                + ", ".join(f"{n} {pct(run['metrics'].get(n))}" for n in names)
                + f" (score {pct(run['score'])})",
                f"Best mean over seeds: lr {mean['learning_rate']:g}, epochs {mean['epochs']} "
                f"(seeds {', '.join(map(str, mean['seeds']))}): "
                + ", ".join(f"{n} {pct(mean['mean'][n])}" for n in names)
                + f" (score {pct(mean['mean']['score'])})",
            ]
        )
        + "\n"
    )


@dataclasses.dataclass
class SweepResult:
    summary: dict[str, Any]
    records: list[dict[str, Any]]  # every run of this sweep (finished earlier or now)
    runs: list[RunResult]  # the runs done by this call (with outputs)
    markdown: str
    stopped: loop.Result | None = None  # set when a signal stopped a run (checkpointed)


def run_sweep(
    config: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None] = print
) -> SweepResult:
    """Fine-tunes one run per point of ``config.sweep`` and writes results.jsonl,
    summary.json and summary.md into ``workdir``; returns all of it.

    ``workdir`` is claimed for the sweep (``rundir.claim``) after the config is checked and
    before anything is written; the runs' folders inside it are part of that claim."""
    parallel.initialize_distributed(config.get("distributed"))
    task = validate_config(config)
    student_path = os.path.abspath(os.path.expanduser(config.student_path))
    points = sweep_points(config, task, student_path)
    # Finished points made with other settings: refused before anything is loaded or written
    # (read-only; the claim below then refuses any other change that is not safe).
    sweep.Runner(workdir, log=log).check(points)
    with rundir.claim(workdir, config, kind="finetune") as claimed:
        return _run_points(config, claimed.workdir, task, student_path, points, log)


def _run_points(config, workdir, task, student_path, points, log) -> SweepResult:
    runner = sweep.Runner(workdir, log=log)
    main_host = jax.process_index() == 0
    student_cfg = hf.load_config(student_path)
    student = load_student(
        student_path,
        dropout=config.dropout,
        dtype=config.dtype,
        with_pooler=task.uses_pooler(config, student_cfg),
    )
    data = task.prepare(config, student)
    log(
        f"{task.name}: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data.info.items())
        + f"; student {student_path} ({student.config.family}, {student.config.num_layers}x"
        f"{student.config.hidden_size})"
    )
    finetuner = Finetuner(config, task, student, data)
    stop = checkpointing.stop_signal()  # Ctrl-C / SIGTERM: checkpoint the current step, stop
    runs: list[RunResult] = []
    stopped: loop.Result | None = None

    def run_point(point: sweep.Point) -> dict[str, Any] | None:
        nonlocal stopped
        s = point.settings
        run_dir = os.path.join(workdir, "runs", point.name)
        if main_host:
            os.makedirs(run_dir, exist_ok=True)
        result = finetuner.run(
            s["learning_rate"], s["epochs"], s["seed"], run_dir=run_dir, log=log, stop=stop
        )
        if isinstance(result, loop.Result):  # stopped by a signal, checkpointed
            stopped = result
            return None
        log(
            f"{point.name}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.record["metrics"].items())
            + f" ({result.record['train_seconds']:.0f}s)"
        )
        if main_host:  # the record and predictions are kept; the run's checkpoints are not
            shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
        runs.append(result)
        return result.record

    with stop:
        records = runner.run(points, run_point)
    if stopped is not None:
        return SweepResult({}, records, runs, "", stopped=stopped)
    summary = summarize(records, task)
    markdown = format_summary(summary)
    if main_host:
        sweep.write_summary(workdir, summary, markdown)
    log(markdown)
    return SweepResult(summary, records, runs, markdown)


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------


def _finetune(args, config) -> int:
    result = run_sweep(config, args.workdir, log=lambda s: print(s, flush=True))
    if result.stopped is not None:
        print(
            f"Stopped at step {result.stopped.preempted_at} on request; checkpoint saved. "
            "Rerun the same command to resume.",
            flush=True,
        )
        return result.stopped.exit_code
    return 0


def main(argv=None) -> None:
    cli.run(
        _finetune,
        argv,
        prog="minilm_jax.finetune",
        description="Fine-tune and evaluate a student on a task.",
        flags=[cli.flag("--workdir", required=True, help="Sweep directory.")],
    )


if __name__ == "__main__":
    main()
