"""MiniLMv2 distillation: ``train_and_evaluate(config, workdir)``.

Sections, in the order data flows: validation -> teacher and student -> optimizer ->
the pure train/eval steps -> the loop (resume, log, evaluate, checkpoint, export).

Resume order: a checkpoint in ``workdir/checkpoints`` wins; otherwise the student is
initialised (randomly, as in the paper, or from teacher layers).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from minilm_jax import checkpointing, data, hf, metrics, parallel, relations
from minilm_jax.configs import SMOKE_TEACHER
from minilm_jax.optim import decay_mask
from minilm_jax.models.transformer import DTYPES, Transformer, TransformerConfig, student_config

STUDENT_INITS = ("random", "teacher")


class TrainingError(RuntimeError):
    """A run that had to stop (non-finite loss); the message says what is kept on disk."""


# ---------------------------------------------------------------------------------------------
# Validation: everything that can be checked before a model or a corpus is loaded.
# ---------------------------------------------------------------------------------------------


def _fail(field: str, value: Any, why: str) -> None:
    raise ValueError(f"config.{field}={value!r}: {why}")


def resolve_teacher_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The teacher folder: ``teacher.path``, or the tiny random teacher of a smoke run."""
    if config.teacher.tiny_random_family:
        return os.path.join(workdir, "tiny_teacher")
    return os.path.expanduser(config.teacher.path)


def validate_config(config: ml_collections.ConfigDict, workdir: str) -> TransformerConfig | None:
    """Raises ``ValueError`` naming the field and the allowed values for every bad setting.

    Returns the teacher's config when the teacher folder exists already (a smoke run's tiny
    teacher is written later, and checked then).
    """
    for module in config.distill.relation_modules:
        importlib.import_module(module)  # registers user relations before they are looked up
    if config.dtype not in DTYPES:
        _fail("dtype", config.dtype, f"allowed: {DTYPES}")
    if config.student.init not in STUDENT_INITS:
        _fail("student.init", config.student.init, f"allowed: {STUDENT_INITS}")
    if config.distill.implementation not in relations.IMPLEMENTATIONS:
        _fail(
            "distill.implementation",
            config.distill.implementation,
            f"allowed: {relations.IMPLEMENTATIONS}",
        )
    for field in (
        "total_steps",
        "max_len",
        "log_every",
        "checkpoint_every",
        "grad_accum_steps",
        "keep_checkpoints",
    ):
        if int(config[field]) <= 0:
            _fail(field, config[field], "must be a positive integer")
    if not 0 <= config.warmup_steps <= config.total_steps:
        _fail(
            "warmup_steps", config.warmup_steps, f"must be in 0..total_steps={config.total_steps}"
        )
    if config.eval_every < 0:
        _fail("eval_every", config.eval_every, "must be >= 0 (0 = only at the start and the end)")
    parallel.check_batch_size(config.batch_size, "batch_size")
    parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
    if config.batch_size % (config.grad_accum_steps * jax.device_count()):
        _fail(
            "grad_accum_steps",
            config.grad_accum_steps,
            f"batch_size={config.batch_size} must split into grad_accum_steps micro-batches "
            f"that are each a multiple of the {jax.device_count()} devices",
        )
    relation_names = tuple(config.distill.relations)
    if not relation_names:
        _fail("distill.relations", relation_names, "name at least one relation")
    for name in relation_names:
        try:
            relations.get_relation(name)
        except ValueError as e:
            raise ValueError(f"config.distill.relations: {e}") from None
    if config.distill.weights is not None and len(config.distill.weights) != len(relation_names):
        _fail(
            "distill.weights",
            config.distill.weights,
            f"needs one weight per relation {relation_names} (or None for all 1)",
        )
    data_cfg = data.validate_data_config(config.data)
    if data_cfg["num_epochs"] is not None and jax.process_count() > 1:
        _fail(
            "data.num_epochs",
            data_cfg["num_epochs"],
            "must be None in multi-host runs (hosts hold different shards and would run out "
            "at different steps); bound the run with total_steps instead",
        )
    if data_cfg["text_files"]:
        data.expand_globs(data_cfg["text_files"])  # a glob that matches nothing: name it now

    if config.teacher.tiny_random_family:
        return None
    path = resolve_teacher_path(config, workdir)
    if not path:
        _fail(
            "teacher.path", config.teacher.path, "set it to a local Hugging Face checkpoint folder"
        )
    try:
        teacher_cfg = hf.load_config(path)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"config.teacher.path={config.teacher.path!r}: {e}") from None
    validate_against_teacher(config, teacher_cfg)
    return teacher_cfg


def validate_against_teacher(
    config: ml_collections.ConfigDict, teacher_cfg: TransformerConfig
) -> None:
    """Checks that need the teacher's shape: its layer, relation heads, student widths."""
    if not 1 <= config.teacher.layer <= teacher_cfg.num_layers:
        _fail(
            "teacher.layer",
            config.teacher.layer,
            f"must be in 1..{teacher_cfg.num_layers} (the teacher's layers, 1-based)",
        )
    try:
        student_cfg = make_student_config(config, teacher_cfg)
    except ValueError as e:
        raise ValueError(f"config.student: {e}") from None
    if config.max_len > teacher_cfg.max_position_embeddings - teacher_cfg.position_offset:
        _fail(
            "max_len",
            config.max_len,
            f"the teacher has only {teacher_cfg.max_position_embeddings - teacher_cfg.position_offset} positions",
        )
    ctx = relation_context(config, teacher_cfg, student_cfg)
    try:
        relations.validate_relations(
            tuple(config.distill.relations), ctx, teacher_cfg.hidden_size, student_cfg.hidden_size
        )
    except ValueError as e:
        raise ValueError(f"config.distill: {e}") from None
    if config.student.init == "teacher":
        _check_teacher_init(config, teacher_cfg, student_cfg)


def _check_teacher_init(
    config, teacher_cfg: TransformerConfig, student_cfg: TransformerConfig
) -> None:
    shape = ("hidden_size", "num_heads", "intermediate_size")
    mismatch = [f for f in shape if getattr(teacher_cfg, f) != getattr(student_cfg, f)]
    if mismatch:
        _fail(
            "student.init",
            "teacher",
            f"copying teacher layers needs equal {mismatch}: teacher "
            f"{[getattr(teacher_cfg, f) for f in mismatch]} vs student {[getattr(student_cfg, f) for f in mismatch]}",
        )
    layers = teacher_init_layers(config, teacher_cfg, student_cfg)
    if len(layers) != student_cfg.num_layers or not all(
        0 <= i < teacher_cfg.num_layers for i in layers
    ):
        _fail(
            "student.init_layers",
            config.student.init_layers,
            f"needs {student_cfg.num_layers} teacher layer indices in 0..{teacher_cfg.num_layers - 1}",
        )


def make_student_config(config, teacher_cfg: TransformerConfig) -> TransformerConfig:
    return student_config(
        config.student.spec,
        teacher_cfg,
        num_heads=config.student.num_heads,
        intermediate_size=config.student.intermediate_size,
        hidden_dropout=config.student.dropout,
        attention_dropout=config.student.dropout,
    )


def relation_context(config, teacher_cfg, student_cfg) -> relations.RelationContext:
    return relations.RelationContext(
        num_relation_heads=config.distill.num_relation_heads,
        teacher_num_heads=teacher_cfg.num_heads,
        student_num_heads=student_cfg.num_heads,
        implementation=config.distill.implementation,
        block_size=config.distill.block_size,
    )


def teacher_init_layers(config, teacher_cfg, student_cfg) -> tuple[int, ...]:
    if config.student.init_layers is not None:
        return tuple(int(i) for i in config.student.init_layers)
    # Evenly spaced, ending at the top layer: 6 of 12 -> (1, 3, 5, 7, 9, 11).
    step = teacher_cfg.num_layers / student_cfg.num_layers
    return tuple(int(round((i + 1) * step)) - 1 for i in range(student_cfg.num_layers))


# ---------------------------------------------------------------------------------------------
# Models and optimizer.
# ---------------------------------------------------------------------------------------------


def ensure_tiny_teacher(config, workdir: str) -> None:
    """Smoke runs: writes the tiny random teacher (once; a resumed run reuses it)."""
    path = resolve_teacher_path(config, workdir)
    if not config.teacher.tiny_random_family or os.path.exists(os.path.join(path, "config.json")):
        return
    from minilm_jax import tiny

    texts = data.python_docs_documents()[:400]
    if jax.process_index() == 0:
        tiny.write_tiny_teacher(
            config.teacher.tiny_random_family, path, texts, seed=1234, **SMOKE_TEACHER
        )
    _sync_hosts("tiny_teacher")


def _sync_hosts(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def truncate_teacher(teacher: Transformer, layer: int) -> Transformer:
    """Keeps the teacher's layers 1..``layer`` and drops its pooler: the distillation reads
    nothing above layer L, so the rest never goes to the devices (for RoBERTa-large at layer
    19 that is 5 layers per device)."""
    teacher.layers = nnx.List(list(teacher.layers)[:layer])
    teacher.pooler = None
    teacher.config = teacher.config.replace(num_layers=layer)
    return teacher


def init_student(
    config, student_cfg: TransformerConfig, teacher: Transformer, teacher_cfg
) -> Transformer:
    student = Transformer(student_cfg, rngs=nnx.Rngs(config.seed))
    if config.student.init == "teacher":
        # Embeddings and a subset of layers copied from the teacher (widths checked equal).
        nnx.update(student.embeddings, nnx.state(teacher.embeddings, nnx.Param))
        for dst, src in enumerate(teacher_init_layers(config, teacher_cfg, student_cfg)):
            nnx.update(student.layers[dst], nnx.state(teacher.layers[src], nnx.Param))
    return student


def _path_keys(path) -> list:
    return [getattr(k, "key", getattr(k, "name", k)) for k in path]


def unreachable_params(params: Any, num_layers: int) -> Any:
    """True for the student parameters the relation loss cannot reach: in the last layer
    everything after the q/k/v projections (attention output, its LayerNorm, the
    feed-forward), and the pooler. Freezing them (no update, no weight decay) keeps them at
    their initial values, as PyTorch's AdamW does for parameters that get no gradient;
    decoupled weight decay would otherwise shrink them towards zero over the run."""

    def frozen(path, leaf) -> bool:
        del leaf
        keys = _path_keys(path)
        if keys[0] == "pooler":
            return True
        if keys[0] == "layers" and keys[1] == num_layers - 1:
            return keys[2] == "feed_forward" or (
                keys[2] == "attention" and keys[3] in ("output", "layer_norm")
            )
        return False

    return jax.tree_util.tree_map_with_path(frozen, params)


def learning_rate_schedule(config) -> optax.Schedule:
    warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
    decay = optax.linear_schedule(
        config.learning_rate, 0.0, max(config.total_steps - config.warmup_steps, 1)
    )
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def make_optimizer(config, student_num_layers: int) -> optax.GradientTransformation:
    """AdamW with the paper's settings on what the loss reaches; the rest is frozen."""
    adamw = optax.adamw(
        learning_rate_schedule(config),
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        mask=decay_mask,
    )
    if config.grad_clip_norm:
        adamw = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)

    def labels(params):
        frozen = unreachable_params(params, student_num_layers)
        return jax.tree.map(lambda f: "frozen" if f else "train", frozen)

    return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint must hold besides the data iterator's position."""

    step: jax.Array
    params: Any  # the student's nnx.State of Params
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so Orbax saves it like any array


# ---------------------------------------------------------------------------------------------
# The pure steps. Static pieces (graph definitions, optimizer, relation settings) are bound
# with functools.partial; the jitted functions see only arrays.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the steps need besides arrays; hashable so it can be a partial argument."""

    teacher_graphdef: Any
    student_graphdef: Any
    teacher_layer: int
    relations: tuple[str, ...]
    weights: tuple[float, ...] | None
    context: relations.RelationContext


def distill_loss(params, teacher_params, batch, dropout_key, spec: StepSpec, *, train: bool):
    """The MiniLMv2 loss of one batch: teacher up to its layer L (no gradient), student's
    last layer, relation KLs. Returns ``(loss, per_relation)``."""
    teacher = nnx.merge(spec.teacher_graphdef, teacher_params)
    teacher_out = teacher(
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        num_layers=spec.teacher_layer,
    )
    teacher_qkv = jax.lax.stop_gradient(teacher_out.qkv[spec.teacher_layer - 1])
    student = nnx.merge(spec.student_graphdef, params)
    student_out = student(
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=not train,
        rngs=nnx.Rngs(dropout=dropout_key) if train else None,
    )
    return relations.distillation_loss(
        teacher_qkv,
        student_out.qkv[-1],
        batch["attention_mask"],
        spec.relations,
        spec.context,
        weights=spec.weights,
    )


def _split_micro_batches(batch: Mapping[str, jax.Array], n: int) -> dict[str, jax.Array]:
    """[B, T] -> [n, B/n, T] taking every n-th row, so each micro-batch keeps rows on every
    device (a contiguous split would put a whole micro-batch on a few devices)."""

    def split(x):
        x = x.reshape(x.shape[0] // n, n, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return {k: split(v) for k, v in batch.items()}


def train_step(
    state: TrainState, batch, teacher_params, *, spec: StepSpec, tx, grad_accum_steps: int, schedule
):
    """One optimizer step. A non-finite loss or gradient leaves the state unchanged (the
    host stops the run when it sees ``finite == 0``), so no checkpoint ever holds NaNs."""
    rng, dropout_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    grad_fn = jax.value_and_grad(distill_loss, has_aux=True)

    if grad_accum_steps == 1:
        (loss, per_relation), grads = grad_fn(
            state.params, teacher_params, batch, dropout_key, spec, train=True
        )
    else:
        micro = _split_micro_batches(batch, grad_accum_steps)
        keys = jax.random.split(dropout_key, grad_accum_steps)

        def accumulate(carry, inputs):
            micro_batch, key = inputs
            (l, per), g = grad_fn(state.params, teacher_params, micro_batch, key, spec, train=True)
            return jax.tree.map(jnp.add, carry, (l, per, g)), None

        zeros = jax.tree.map(
            jnp.zeros_like,
            (
                jnp.zeros((), jnp.float32),
                {name: jnp.zeros((), jnp.float32) for name in spec.relations},
                state.params,
            ),
        )
        (loss, per_relation, grads), _ = jax.lax.scan(accumulate, zeros, (micro, keys))
        loss, per_relation, grads = jax.tree.map(
            lambda x: x / grad_accum_steps, (loss, per_relation, grads)
        )

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # One cond over the whole state rather than a select per leaf: same result, far fewer
    # small kernels to compile.
    params, opt_state = jax.lax.cond(
        finite, lambda: (params, opt_state), lambda: (state.params, state.opt_state)
    )
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(rng)
    )
    step_metrics = {
        "loss": loss,
        **{f"loss/{name}": value for name, value in per_relation.items()},
        "grad_norm": grad_norm,
        "param_norm": optax.global_norm(params),
        "update_norm": optax.global_norm(updates),
        "lr": schedule(state.step),
        "finite": finite.astype(jnp.float32),
        "tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32),
    }
    return new_state, step_metrics


def eval_step(params, teacher_params, batch, *, spec: StepSpec):
    """Sums for a held-out mean in which every sequence weighs the same: the batch loss times
    its number of non-empty sequences (all-padding rows fill the last batch and count 0)."""
    loss, per_relation = distill_loss(params, teacher_params, batch, None, spec, train=False)
    n = jnp.sum(jnp.any(batch["attention_mask"] > 0, axis=-1)).astype(jnp.float32)
    return {"loss": loss * n, **{f"loss/{k}": v * n for k, v in per_relation.items()}, "count": n}


def evaluate(eval_fn, params, teacher_params, eval_batches, mesh) -> dict[str, float]:
    totals: dict[str, float] = {}
    for batch in eval_batches:
        out = jax.device_get(eval_fn(params, teacher_params, parallel.to_global(batch, mesh)))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count", 0.0)
    if not count:
        raise ValueError(
            "The held-out split has no tokens: lower config.data.eval_every_kth_document "
            "or add documents."
        )
    return {k: v / count for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------
# Setting up a run: models, state on the mesh, compiled steps, data.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Everything ``train_and_evaluate`` builds before its loop (tests and benchmarks reuse it)."""

    teacher_path: str
    teacher_cfg: TransformerConfig
    student_cfg: TransformerConfig
    teacher: Transformer
    tokenizer: Any
    mesh: jax.sharding.Mesh
    teacher_params: Any
    student_graphdef: Any
    state: TrainState
    spec: StepSpec
    step_fn: Any
    eval_fn: Any


def setup_run(config, workdir: str, mesh: jax.sharding.Mesh | None = None) -> Run:
    """Loads the teacher, initialises the student and optimizer on ``mesh`` (default: every
    device of every host) and compiles nothing yet: the steps are jitted lazily."""
    ensure_tiny_teacher(config, workdir)
    teacher_path = resolve_teacher_path(config, workdir)
    teacher_cfg, teacher = hf.load_pretrained(teacher_path, dtype=jnp.dtype(config.dtype))
    validate_against_teacher(config, teacher_cfg)
    student_cfg = make_student_config(config, teacher_cfg)
    student = init_student(config, student_cfg, teacher, teacher_cfg)
    teacher = truncate_teacher(teacher, config.teacher.layer)
    logging.info(
        "teacher %s (layer %d of %d), student %s",
        teacher_path,
        config.teacher.layer,
        teacher_cfg.num_layers,
        student_cfg,
    )

    mesh = mesh or parallel.make_mesh()
    teacher_graphdef, teacher_params = nnx.split(teacher, nnx.Param)
    student_graphdef, params = nnx.split(student, nnx.Param)
    tx = make_optimizer(config, student_cfg.num_layers)
    schedule = learning_rate_schedule(config)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(config.seed + 1)),
    )
    spec = StepSpec(
        teacher_graphdef=teacher_graphdef,
        student_graphdef=student_graphdef,
        teacher_layer=config.teacher.layer,
        relations=tuple(config.distill.relations),
        weights=tuple(config.distill.weights) if config.distill.weights is not None else None,
        context=relation_context(config, teacher_cfg, student_cfg),
    )
    replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    step_fn = jax.jit(
        functools.partial(
            train_step,
            spec=spec,
            tx=tx,
            grad_accum_steps=config.grad_accum_steps,
            schedule=schedule,
        ),
        in_shardings=(replicated, batch_sharding, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, spec=spec),
        in_shardings=(replicated, replicated, batch_sharding),
        out_shardings=replicated,
    )
    return Run(
        teacher_path=teacher_path,
        teacher_cfg=teacher_cfg,
        student_cfg=student_cfg,
        teacher=teacher,
        tokenizer=hf.load_tokenizer(teacher_path),
        mesh=mesh,
        teacher_params=parallel.replicate(teacher_params, mesh),
        student_graphdef=student_graphdef,
        state=parallel.replicate(state, mesh),
        spec=spec,
        step_fn=step_fn,
        eval_fn=eval_fn,
    )


def make_data(config, tokenizer, family: str, *, process_index: int, process_count: int):
    """(train iterator, eval batches fn) for one host's shard of the corpus."""
    return data.make_pretraining_datasets(
        config.data,
        tokenizer,
        family,
        max_len=config.max_len,
        host_batch_size=config.batch_size // process_count,
        eval_batch_size=config.eval_batch_size // process_count,
        seed=config.seed,
        process_index=process_index,
        process_count=process_count,
    )


def next_train_batch(train_iter, mesh) -> dict[str, jax.Array]:
    """This host's next rows, assembled into the global batch."""
    return parallel.to_global(next(train_iter), mesh)


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------


def write_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Distils the teacher into a fresh (or resumed) student; returns a summary dict with
    the held-out losses at the start and end and the path of the exported student."""
    workdir = os.path.abspath(workdir)
    parallel.initialize_distributed(config.distributed)
    os.makedirs(workdir, exist_ok=True)
    validate_config(config, workdir)
    write_config(config, workdir)

    run = setup_run(config, workdir)
    mesh, teacher_params, state = run.mesh, run.teacher_params, run.state
    train_iter, eval_batches_fn = make_data(
        config,
        run.tokenizer,
        run.teacher_cfg.family,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        use_async=config.async_checkpoints,
    )
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, checkpointing.abstract_like(state), train_iter)
        if jax.process_index() == 0:
            print(f"Resumed from step {latest} ({ckpt.directory})", flush=True)

    writer = metrics.MetricWriter(workdir)
    # Multi-host: JAX's own preemption notifier (started by jax.distributed.initialize)
    # handles SIGTERM and makes every host agree on the step; a Python handler would
    # replace it, so one is installed only for single-process runs.
    stop = checkpointing.StopSignal() if jax.process_count() == 1 else None
    start_step = int(jax.device_get(state.step))
    summary: dict[str, Any] = {"workdir": workdir, "start_step": start_step}

    def run_eval(step: int) -> dict[str, float] | None:
        if eval_batches_fn is None:  # data.eval_every_kth_document = 0: no held-out split
            return None
        result = evaluate(run.eval_fn, state.params, teacher_params, eval_batches_fn(), mesh)
        writer.write(step, result, kind="eval")
        if jax.process_index() == 0:
            per = " ".join(
                f"{k.removeprefix('loss/')} {v:.4f}" for k, v in result.items() if k != "loss"
            )
            print(f"eval step {step}: held-out loss {result['loss']:.4f} ({per})", flush=True)
        return result

    if start_step == 0 and config.eval_at_start:
        summary["eval_start"] = run_eval(0)
    elif latest is not None:
        summary["eval_start"] = _logged_eval(workdir, step=0)  # from before the restart

    progress = metrics.Progress(config.total_steps, start_step)
    pending: list[tuple[int, Any]] = []
    window: dict[str, float] = {}
    window_steps = 0

    def drain(keep_last: int) -> None:
        """Reads finished steps' metrics (one step behind, to keep the device busy) and
        stops on the first non-finite loss."""
        nonlocal window, window_steps
        while len(pending) > keep_last:
            step, m = pending.pop(0)
            m = jax.device_get(m)
            if not m["finite"]:
                ckpt.wait()
                kept = ckpt.latest_step()
                raise TrainingError(
                    f"Non-finite loss or gradient at step {step} (loss={float(m['loss'])}, "
                    f"grad_norm={float(m['grad_norm'])}); the update was not applied. "
                    "Last good checkpoint: "
                    + (f"step {kept} in {ckpt.directory}" if kept is not None else "none yet")
                    + ". Lower config.learning_rate or check the data."
                )
            progress.add_tokens(float(m["tokens"]))
            for k, v in m.items():
                window[k] = window.get(k, 0.0) + float(v)
            window_steps += 1
            if step % config.log_every == 0 or step == config.total_steps:
                means = {
                    k: v / window_steps for k, v in window.items() if k not in ("finite", "tokens")
                }
                means["lr"] = float(m["lr"])
                means.update(progress.report(step, means))
                writer.write(step, means, kind="train")
                window, window_steps = {}, 0

    last_step = config.total_steps
    try:
        for step in range(start_step + 1, config.total_steps + 1):
            try:
                batch = next_train_batch(train_iter, mesh)
            except StopIteration:  # a finite data.num_epochs ran out before total_steps
                last_step = step - 1
                if jax.process_index() == 0:
                    print(f"Data exhausted (data.num_epochs) after step {last_step}.", flush=True)
                if last_step > start_step and ckpt.latest_step() != last_step:
                    drain(keep_last=0)
                    ckpt.save(last_step, state, train_iter)
                break
            state, step_metrics = run.step_fn(state, batch, teacher_params)
            pending.append((step, step_metrics))
            drain(keep_last=1)
            preempted = _stop_requested(stop, ckpt, step)
            if step % config.checkpoint_every == 0 or preempted or step == config.total_steps:
                drain(keep_last=0)  # never checkpoint a state whose step we have not checked
                ckpt.save(step, state, train_iter)
            if config.eval_every and step % config.eval_every == 0 and step != config.total_steps:
                run_eval(step)
            if preempted:
                ckpt.wait()
                summary["preempted_at"] = step
                if jax.process_index() == 0:
                    print(f"Stopped at step {step} on request; checkpoint saved.", flush=True)
                return summary
        drain(keep_last=0)
        summary["eval_end"] = run_eval(last_step)
    finally:
        train_iter.close()  # stops Grain's prefetch thread
        if stop is not None:
            stop.restore_handlers()
        ckpt.wait()
        ckpt.close()
        writer.close()
    summary["last_checkpoint"] = last_step

    # Replicated arrays: this host's first shard is the whole value, even in multi-host runs.
    host_params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
    if config.export_hf:
        summary["hf_student"] = export_student(
            host_params, run.student_graphdef, run.student_cfg, run.teacher_path, workdir
        )
    if config.plots and jax.process_index() == 0:
        from minilm_jax import plots

        student = nnx.merge(run.student_graphdef, host_params)
        summary["plots"] = plots.write_run_plots(
            workdir, run.teacher, student, run.tokenizer, config, eval_text=config.plot_text
        )
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=float)
    return summary


def _stop_requested(
    stop: checkpointing.StopSignal | None, ckpt: checkpointing.Checkpointer, step: int
) -> bool:
    """SIGTERM in a single-process run; in multi-host runs, a preemption notice that every
    host has reached at this step (so all of them checkpoint the same step)."""
    if stop is not None:
        return stop.requested
    return ckpt.reached_preemption(step)


def _logged_eval(workdir: str, step: int) -> dict[str, float] | None:
    """A held-out result recorded in metrics.jsonl (the start loss of a resumed run)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    for record in metrics.read_jsonl(path):
        if record["kind"] == "eval" and record["step"] == step:
            return {k: v for k, v in record.items() if k not in ("kind", "step", "time")}
    return None


def export_student(
    host_params, graphdef, student_cfg: TransformerConfig, teacher_path: str, workdir: str
) -> str:
    """Writes the student (float32 config) with the teacher's tokenizer to WORKDIR/hf_student."""
    path = os.path.join(workdir, "hf_student")
    if jax.process_index() == 0:
        model = nnx.merge(graphdef, host_params)
        hf.save_pretrained(student_cfg.replace(dtype="float32"), model, path)
        hf.copy_tokenizer_files(teacher_path, path)
        print(f"Student written to {path}", flush=True)
    _sync_hosts("export")
    return path
