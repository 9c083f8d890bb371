"""MiniLMv2 distillation: ``train_and_evaluate(config, workdir)``.

Sections, in the order data flows: validation -> teacher and student -> the loss -> the step
built from configs alone (``build_step``: no weights read, so the compile-only check and the
benchmarks use exactly what training runs) -> setting up a run (weights on the mesh) -> the
loop (the shared ``loop.run``: resume, log, evaluate, checkpoint) -> export.

Resume order: the newest checkpoint in ``workdir/checkpoints`` that restores wins (a damaged
newer one is set aside with a warning); otherwise the student is initialised (randomly, as in
the paper, or from teacher layers). The workdir is a run directory (docs/run_directory.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from minilm_jax import checkpointing, data, hf, loop, metrics, models, optim, parallel, relations
from minilm_jax import paths, rundir, steps
from minilm_jax.configs import check_positive, fail
from minilm_jax.loop import TrainingError  # noqa: F401  (part of this module's API)
from minilm_jax.models import remat as remat_lib
from minilm_jax.models.transformer import (
    CROSS_FAMILY_STUDENTS,
    DTYPES,
    TransformerConfig,
    student_config,
)

STUDENT_INITS = ("random", "teacher", "pretrained")


# ---------------------------------------------------------------------------------------------
# Validation: everything that can be checked before a model or a corpus is loaded.
# ---------------------------------------------------------------------------------------------


def teacher_path(config: ml_collections.ConfigDict) -> str:
    if not isinstance(config.teacher.path, str):  # --config.teacher.path=None
        fail(
            "teacher.path", config.teacher.path, "set it to a local Hugging Face checkpoint folder"
        )
    return os.path.expanduser(config.teacher.path)


def student_path(config: ml_collections.ConfigDict) -> str:
    return os.path.expanduser(config.student.path)


def validate_config(
    config: ml_collections.ConfigDict, *, num_devices: int | None = None, teacher_cfg=None
) -> TransformerConfig:
    """Raises ``ValueError`` naming the field and the allowed values for every bad setting;
    returns the teacher's config (read from its config.json only).

    ``num_devices``: check for a machine other than this one (the compile-only fit check:
    the slice's chip count); its data is then not looked at. ``teacher_cfg``: the teacher's
    shape when it is known without its folder (the fit check's presets)."""
    for module in config.distill.relation_modules:
        importlib.import_module(module)  # registers user relations before they are looked up
    if config.dtype not in DTYPES:
        fail("dtype", config.dtype, f"allowed: {DTYPES}")
    if config.teacher.param_dtype not in DTYPES:
        fail("teacher.param_dtype", config.teacher.param_dtype, f"allowed: {DTYPES}")
    if config.remat not in remat_lib.POLICIES:
        fail("remat", config.remat, f"allowed: {remat_lib.POLICIES}")
    _check_student_fields(config)
    if config.distill.implementation not in relations.IMPLEMENTATIONS:
        fail(
            "distill.implementation",
            config.distill.implementation,
            f"allowed: {relations.IMPLEMENTATIONS}",
        )
    check_positive(
        config,
        "total_steps",
        "max_len",
        "log_every",
        "checkpoint_every",
        "grad_accum_steps",
        "keep_checkpoints",
    )
    if config.max_len < 3:
        fail("max_len", config.max_len, "must be >= 3 (two special tokens and one text token)")
    if not 0 <= config.warmup_steps <= config.total_steps:
        fail("warmup_steps", config.warmup_steps, f"must be in 0..total_steps={config.total_steps}")
    if not config.learning_rate > 0:
        fail("learning_rate", config.learning_rate, "must be > 0")
    if config.eval_every < 0:
        fail("eval_every", config.eval_every, "must be >= 0 (0 = only at the start and the end)")
    devices = jax.device_count() if num_devices is None else num_devices
    parallel.mesh_shape(config.mesh, devices)  # sizes whose product is not the device count
    parallel.check_batch_size(config.batch_size, "batch_size", devices)
    parallel.check_batch_size(config.eval_batch_size, "eval_batch_size", devices)
    if config.batch_size % (config.grad_accum_steps * devices):
        fail(
            "grad_accum_steps",
            config.grad_accum_steps,
            f"batch_size={config.batch_size} must split into grad_accum_steps micro-batches "
            f"that are each a multiple of the {devices} devices",
        )
    relation_names = tuple(config.distill.relations)
    if not relation_names:
        fail("distill.relations", relation_names, "name at least one relation")
    for name in relation_names:
        try:
            relations.get_relation(name)
        except ValueError as e:
            raise ValueError(f"config.distill.relations: {e}") from None
    if config.distill.weights is not None and len(config.distill.weights) != len(relation_names):
        fail(
            "distill.weights",
            config.distill.weights,
            f"needs one weight per relation {relation_names} (or None for all 1)",
        )
    if num_devices is None:  # the data of a run on this machine
        _validate_data(config)
    if teacher_cfg is not None:
        validate_against_teacher(config, teacher_cfg)
        return teacher_cfg

    path = teacher_path(config)
    if not path:
        fail(
            "teacher.path", config.teacher.path, "set it to a local Hugging Face checkpoint folder"
        )
    try:
        teacher_cfg = hf.load_config(path)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"config.teacher.path={config.teacher.path!r}: {e}") from None
    validate_against_teacher(config, teacher_cfg)
    check_student_tokenizer(config, teacher_cfg)
    return teacher_cfg


def _check_student_fields(config) -> None:
    if config.student.init not in STUDENT_INITS:
        fail("student.init", config.student.init, f"allowed: {STUDENT_INITS}")
    if config.student.init == "pretrained" and not config.student.path:
        fail(
            "student.path",
            config.student.path,
            "student.init='pretrained' continues from a Hugging Face folder: set student.path",
        )
    if config.student.path and config.student.init != "pretrained":
        fail(
            "student.path",
            config.student.path,
            f"is read only when student.init='pretrained' (student.init="
            f"{config.student.init!r}): set student.init='pretrained' or clear student.path",
        )
    families = tuple(models.MODEL_FAMILIES)
    if config.student.family and config.student.family not in families:
        fail(
            "student.family",
            config.student.family,
            f"allowed: '' (the teacher's family) or one of {families}",
        )


def _validate_data(config: ml_collections.ConfigDict) -> None:
    data_cfg = data.validate_data_config(config.data)
    if data_cfg["num_epochs"] is not None and jax.process_count() > 1:
        fail(
            "data.num_epochs",
            data_cfg["num_epochs"],
            "must be None in multi-host runs (hosts hold different shards and would run out "
            "at different steps); bound the run with total_steps instead",
        )
    if data_cfg["text_files"]:
        data.expand_globs(data_cfg["text_files"])  # a glob that matches nothing: name it now


def validate_against_teacher(config: ml_collections.ConfigDict, teacher_cfg) -> None:
    """Checks that need the teacher's shape: its layer, relation heads, student widths."""
    if not 1 <= config.teacher.layer <= teacher_cfg.num_layers:
        fail(
            "teacher.layer",
            config.teacher.layer,
            f"must be in 1..{teacher_cfg.num_layers} (the teacher's layers, 1-based)",
        )
    try:
        student_cfg = make_student_config(config, teacher_cfg)
    except ValueError as e:
        raise ValueError(e if str(e).startswith("config.") else f"config.student: {e}") from None
    if config.max_len > teacher_cfg.max_sequence_length:
        fail(
            "max_len",
            config.max_len,
            f"the teacher has only {teacher_cfg.max_sequence_length} positions",
        )
    if config.max_len > student_cfg.max_sequence_length:
        fail(
            "max_len",
            config.max_len,
            f"the student has only {student_cfg.max_sequence_length} positions",
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


def _check_teacher_init(config, teacher_cfg, student_cfg) -> None:
    """student.init='teacher' copies the teacher's embeddings and every other parameter outside
    the layers (DeBERTa's relative table and conv, final LayerNorms, pooler) and one teacher
    layer per student layer. It is refused unless each copy computes in the student what it
    computed in the teacher: same family and widths, and each student layer of the same
    structure as its teacher layer (`layer_structures`: e.g. ModernBERT's layer 0 has no
    attention LayerNorm, and its global and sliding-window layers differ)."""
    if student_cfg.family != teacher_cfg.family:
        fail(
            "student.init",
            "teacher",
            f"copying teacher layers needs a student of the teacher's family "
            f"{teacher_cfg.family!r}, not {student_cfg.family!r} (student.family)",
        )
    shape = ("hidden_size", "num_heads", "intermediate_size")
    mismatch = [f for f in shape if getattr(teacher_cfg, f) != getattr(student_cfg, f)]
    if mismatch:
        fail(
            "student.init",
            "teacher",
            f"copying teacher layers needs equal {mismatch}: teacher "
            f"{[getattr(teacher_cfg, f) for f in mismatch]} vs student "
            f"{[getattr(student_cfg, f) for f in mismatch]}",
        )
    teacher_layers, teacher_outer = layer_structures(teacher_cfg)
    student_layers, student_outer = layer_structures(student_cfg)
    differing = sorted(p for p in student_outer if teacher_outer.get(p) != student_outer[p])
    if differing:
        fail(
            "student.init",
            "teacher",
            f"the student's {['.'.join(map(str, p)) for p in differing]} have no counterpart "
            f"of the same shape in the teacher",
        )
    try:
        layers = teacher_init_layers(config, teacher_cfg, student_cfg)
    except ValueError as e:
        fail("student.init_layers", config.student.init_layers, str(e))
    if len(layers) != student_cfg.num_layers or not all(
        0 <= i < teacher_cfg.num_layers for i in layers
    ):
        fail(
            "student.init_layers",
            config.student.init_layers,
            f"needs {student_cfg.num_layers} teacher layer indices in "
            f"0..{teacher_cfg.num_layers - 1}",
        )
    for dst, src in enumerate(layers):
        if student_layers[dst] != teacher_layers[src]:
            try:
                hint = f"; e.g. {_default_init_layers(teacher_layers, student_layers)}"
            except ValueError:
                hint = ""
            fail(
                "student.init_layers",
                config.student.init_layers,
                f"teacher layer {src} cannot initialise student layer {dst}: "
                f"{_structure_difference(teacher_layers[src], student_layers[dst])}; choose "
                f"teacher layers of the same structure as each student layer{hint}",
            )


def layer_structures(cfg) -> tuple[list[tuple], dict[tuple, tuple]]:
    """(per layer, what must agree for a teacher layer to initialise a student layer: its
    attention kind where a family has several (ModernBERT's `layer_types`) and its parameter
    paths and shapes; {path: shape} of the parameters outside the layers). From
    `nnx.eval_shape`: no weights are made."""
    abstract = nnx.eval_shape(lambda: models.build_model(cfg, rngs=nnx.Rngs(0)))
    per_layer: list[dict] = [{} for _ in range(cfg.num_layers)]
    outer = {}
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        if path[0] == "layers":
            per_layer[path[1]][".".join(map(str, path[2:]))] = tuple(var.shape)
        else:
            outer[tuple(path)] = tuple(var.shape)
    kinds = getattr(cfg, "layer_types", None) or (None,) * cfg.num_layers
    return [(kind, tuple(sorted(p.items()))) for kind, p in zip(kinds, per_layer)], outer


def _structure_difference(teacher_layer: tuple, student_layer: tuple) -> str:
    (t_kind, t_params), (s_kind, s_params) = teacher_layer, student_layer
    t_params, s_params = dict(t_params), dict(s_params)
    only_t = sorted(set(t_params) - set(s_params))
    only_s = sorted(set(s_params) - set(t_params))
    reshaped = sorted(k for k in set(t_params) & set(s_params) if t_params[k] != s_params[k])
    differences = []
    if t_kind != s_kind:
        differences.append(f"the teacher layer is {t_kind}, the student layer {s_kind}")
    if only_t or only_s:
        differences.append(
            f"parameters only in the teacher layer {only_t}, only in the student layer {only_s}"
        )
    if reshaped:
        differences.append(f"parameters of other shapes {reshaped}")
    return " and ".join(differences)


def _default_init_layers(teacher_layers: list, student_layers: list) -> tuple[int, ...]:
    """Evenly spaced teacher layers ending at the top (6 of 12 -> 1, 3, 5, 7, 9, 11), each
    moved to the nearest teacher layer of its student layer's structure (ties: the higher)
    where a family's layers differ (ModernBERT 22 -> 6: 0, 7, 10, 15, 17, 20)."""
    step = len(teacher_layers) / len(student_layers)
    chosen = []
    for dst, structure in enumerate(student_layers):
        target = int(round((dst + 1) * step)) - 1
        candidates = [j for j, s in enumerate(teacher_layers) if s == structure]
        if not candidates:
            raise ValueError(f"no teacher layer has the structure of student layer {dst}")
        chosen.append(min(candidates, key=lambda j: (abs(j - target), -j)))
    return tuple(chosen)


def make_student_config(config, teacher_cfg):
    """The student's architecture: from student.spec, of the teacher's family or of
    student.family (`models.student_config`); with student.init='pretrained', the config.json
    of student.path (whose shape student.spec and student.num_heads must state)."""
    dropout = dict(hidden_dropout=config.student.dropout, attention_dropout=config.student.dropout)
    if config.student.init == "pretrained":
        return _pretrained_student_config(config, teacher_cfg).replace(**dropout)
    family = config.student.family
    if family and family != teacher_cfg.family and family not in CROSS_FAMILY_STUDENTS:
        fail(
            "student.family",
            family,
            f"a {family} student needs a teacher of that family (this one is "
            f"{teacher_cfg.family!r}); a student of another family than its teacher's can be "
            f"one of {CROSS_FAMILY_STUDENTS}",
        )
    return student_config(
        config.student.spec,
        teacher_cfg,
        family=config.student.family or None,
        num_heads=config.student.num_heads,
        intermediate_size=config.student.intermediate_size,
        max_length=config.max_len,
        **dropout,
    )


def _pretrained_student_config(config, teacher_cfg):
    try:
        cfg = hf.load_config(student_path(config), dtype=jnp.dtype(teacher_cfg.dtype))
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"config.student.path={config.student.path!r}: {e}") from None
    held = f"{cfg.num_layers}x{cfg.hidden_size}"
    where = f"student.path {config.student.path!r} holds a {cfg.family} {held} model"
    if config.student.spec.replace(" ", "").lower() != held:
        fail("student.spec", config.student.spec, f"{where}: set student.spec={held!r}")
    if config.student.num_heads != cfg.num_heads:
        fail(
            "student.num_heads",
            config.student.num_heads,
            f"{where} with {cfg.num_heads} heads: set student.num_heads={cfg.num_heads}",
        )
    wanted = config.student.intermediate_size
    if wanted is not None and wanted != cfg.intermediate_size:
        fail(
            "student.intermediate_size",
            wanted,
            f"{where} with feed-forward width {cfg.intermediate_size}: set it to None",
        )
    if config.student.family and config.student.family != cfg.family:
        fail("student.family", config.student.family, f"{where}: set it to '' or {cfg.family!r}")
    return cfg


# Texts two tokenizers must encode alike to be the same: normalisation (case, accents,
# whitespace), pre-tokenisation, unknown characters, special tokens typed as text, and the
# single and pair templates.
_PROBE_TEXTS = (
    "Hello, World! The quick brown fox jumps over the lazy dog: 3.14159, don't.",
    "  Leading,   repeated\tand trailing whitespace\nacross lines  ",
    "Ünïcödé naïve café, 東京 and 🙂; [CLS] [SEP] [MASK] <s> </s> <mask>",
)
_PROBE_PAIR = ("What does the student read?", "The teacher's token ids.")


def tokenizer_difference(teacher_tok, student_tok) -> str | None:
    """How two tokenizers would give a model different token ids (None when they would not):
    their vocabularies with the added tokens, which tokens are special, and the ids and token
    types of probe texts and a pair (normalisation, pre-tokenisation and templates, which a
    vocabulary does not show)."""
    a = teacher_tok.get_vocab(with_added_tokens=True)
    b = student_tok.get_vocab(with_added_tokens=True)
    if a != b:
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])
        parts = [f"{len(a)} vs {len(b)} tokens"]
        if only_a:
            parts.append(f"only the teacher's has {only_a[:3]}")
        if only_b:
            parts.append(f"only the student's has {only_b[:3]}")
        if moved:
            parts.append(f"{moved[0]!r} is id {a[moved[0]]} vs {b[moved[0]]}")
        return "vocabularies differ: " + ", ".join(parts)
    added = [
        {i: (t.content, t.special) for i, t in tok.get_added_tokens_decoder().items()}
        for tok in (teacher_tok, student_tok)
    ]
    if added[0] != added[1]:
        i = min(i for i in set(added[0]) | set(added[1]) if added[0].get(i) != added[1].get(i))
        return f"added tokens differ at id {i}: {added[0].get(i)} vs {added[1].get(i)}"
    for args in [(t,) for t in _PROBE_TEXTS] + [_PROBE_PAIR]:
        x, y = teacher_tok.encode(*args), student_tok.encode(*args)
        if x.ids != y.ids or x.type_ids != y.type_ids:
            return f"they encode {args!r} differently: {x.tokens[:8]} vs {y.tokens[:8]}"
    return None


def check_student_tokenizer(config, teacher_cfg) -> None:
    """Checks that read the tokenizers. A student of another family than the teacher's must
    find its family's special tokens by name in the teacher's tokenizer (fine-tuning and
    inspection look them up so). A pretrained student must have the teacher's tokenizer
    exactly (it is fed the teacher's token ids), enough embedding rows for it, and the pad id
    the data pipeline pads with. Each error names the folders."""
    student_cfg = make_student_config(config, teacher_cfg)
    pretrained = config.student.init == "pretrained"
    if not pretrained and student_cfg.family == teacher_cfg.family:
        return
    tpath = teacher_path(config)
    tok = hf.load_tokenizer(tpath)
    if student_cfg.family != teacher_cfg.family:
        try:
            data.special_token_ids(tok, student_cfg.family)
        except ValueError as e:
            allowed = [f for f in CROSS_FAMILY_STUDENTS if _finds_specials(tok, f)]
            fail(
                "student.family",
                student_cfg.family,
                f"a {student_cfg.family} student finds its special tokens by name in the "
                f"teacher's tokenizer ({tpath}): {e}; student families this teacher's "
                f"tokenizer allows: {allowed}",
            )
    if not pretrained:
        return
    spath = student_path(config)
    folders = f"teacher folder {tpath}, student folder {spath}"
    try:
        student_tok = hf.load_tokenizer(spath)
    except (FileNotFoundError, ValueError) as e:
        fail("student.path", config.student.path, f"{e} ({folders})")
    difference = tokenizer_difference(tok, student_tok)
    if difference is not None:
        fail(
            "student.path",
            config.student.path,
            f"the student's tokenizer is not the teacher's ({difference}); {folders}; a "
            f"pretrained student is fed the teacher's token ids, so it needs the same "
            f"vocabulary, special tokens and templates",
        )
    if student_cfg.vocab_size < tok.get_vocab_size():
        fail(
            "student.path",
            config.student.path,
            f"the student has {student_cfg.vocab_size} embedding rows for the teacher "
            f"tokenizer's {tok.get_vocab_size()} tokens ({folders})",
        )
    pad_id = data.special_token_ids(tok, teacher_cfg.family).pad_id
    if student_cfg.pad_token_id != pad_id:
        fail(
            "student.path",
            config.student.path,
            f"the student's pad_token_id {student_cfg.pad_token_id} is not the pad id {pad_id} "
            f"of the teacher's tokenizer ({folders})",
        )


def _finds_specials(tok, family: str) -> bool:
    try:
        data.special_token_ids(tok, family)
    except ValueError:
        return False
    return True


def relation_context(config, teacher_cfg, student_cfg) -> relations.RelationContext:
    return relations.RelationContext(
        num_relation_heads=config.distill.num_relation_heads,
        teacher_num_heads=teacher_cfg.num_heads,
        student_num_heads=student_cfg.num_heads,
        implementation=config.distill.implementation,
        block_size=config.distill.block_size,
    )


def teacher_init_layers(config, teacher_cfg, student_cfg) -> tuple[int, ...]:
    """The teacher layers (0-based) copied into the student's layers with init='teacher':
    student.init_layers, or by default evenly spaced ones ending at the top, each of the
    structure of its student layer (`_default_init_layers`)."""
    if config.student.init_layers is not None:
        return tuple(int(i) for i in config.student.init_layers)
    return _default_init_layers(layer_structures(teacher_cfg)[0], layer_structures(student_cfg)[0])


def projections_read(relation_names) -> frozenset[str]:
    """Which of the student's last-layer projections (q, k, v) the relations read: a pair
    reads its two letters, MiniLM v1's `attn_qk`/`attn_vv` theirs; a user's relation may
    read any of them."""
    used: set[str] = set()
    for name in relation_names:
        if name in relations.PAIR_NAMES:
            used |= set(name)
        elif name in relations.MINILM_V1_RELATIONS:
            used |= set(name.removeprefix("attn_"))
        else:
            return frozenset("qkv")
    return frozenset(used)


# ---------------------------------------------------------------------------------------------
# Teacher and student.
# ---------------------------------------------------------------------------------------------


def truncate_teacher(teacher, layer: int):
    """Keeps the teacher's layers 1..``layer`` and drops its pooler: the distillation reads
    nothing above layer L, so the rest never goes to the devices (for RoBERTa-large at layer
    19 that is 5 layers per device)."""
    teacher.layers = nnx.List(list(teacher.layers)[:layer])
    teacher.pooler = None
    teacher.config = teacher.config.replace(num_layers=layer)
    return teacher


def init_student(config, student_cfg, teacher, teacher_cfg):
    """The student before distillation: random (the paper); with init='teacher' the teacher's
    parameters outside the layers and the layers `teacher_init_layers` (checked by
    `_check_teacher_init`); with init='pretrained' the checkpoint in student.path (its
    architecture is `student_cfg`, with this run's dropout)."""
    student = models.build_model(student_cfg, rngs=nnx.Rngs(config.seed))
    if config.student.init == "teacher":
        _copy_params(student, teacher, teacher_init_layers(config, teacher_cfg, student_cfg))
    elif config.student.init == "pretrained":
        _, pretrained = hf.load_pretrained(student_path(config), dtype=jnp.dtype(student_cfg.dtype))
        _copy_params(student, pretrained, tuple(range(student_cfg.num_layers)))
    return student


def _copy_params(dst, src, layers: tuple[int, ...]) -> None:
    """Every parameter of `dst` from the same path in `src`, except that dst's layer i comes
    from src's layer layers[i]."""
    source = dict(nnx.to_flat_state(nnx.state(src, nnx.Param)))
    copied = {}
    for path, var in nnx.to_flat_state(nnx.state(dst, nnx.Param)):
        key = ("layers", layers[path[1]], *path[2:]) if path[0] == "layers" else path
        copied[path] = var.replace(source[key].get_value())
    nnx.update(dst, nnx.from_flat_state(copied))


# ---------------------------------------------------------------------------------------------
# The loss. Static pieces (graph definitions, relation settings) live in a hashable StepSpec
# bound with functools.partial; the jitted functions see only arrays.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepSpec:
    teacher_graphdef: Any
    student_graphdef: Any
    teacher_layer: int
    relations: tuple[str, ...]
    weights: tuple[float, ...] | None
    context: relations.RelationContext
    remat: str = "none"  # the student's layers (models.remat)


def distill_loss(params, teacher_params, batch, dropout_key, *, spec: StepSpec):
    """The MiniLMv2 loss of one batch: teacher up to its layer L (no gradient), the student's
    last layer, relation KLs. Dropout is on when ``dropout_key`` is given (training).
    Returns ``(loss, {"loss/NAME": per-relation loss})``.

    The teacher is not differentiated (its parameters are not the gradient's argument), so
    none of its activations is kept for the backward pass: XLA frees each layer's as soon as
    the next one is computed (checked in tests/podscale_test.py)."""
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
        deterministic=dropout_key is None,
        rngs=nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None,
        remat=spec.remat,
    )
    loss, per_relation = relations.distillation_loss(
        teacher_qkv,
        student_out.qkv[-1],
        batch["attention_mask"],
        spec.relations,
        spec.context,
        weights=spec.weights,
    )
    return loss, {f"loss/{name}": value for name, value in per_relation.items()}


def eval_step(params, teacher_params, batch, *, spec: StepSpec):
    """Sums for a held-out mean in which every sequence weighs the same: the batch loss times
    its number of non-empty sequences (all-padding rows fill the last batch and count 0)."""
    loss, per_relation = distill_loss(params, teacher_params, batch, None, spec=spec)
    n = jnp.sum(jnp.any(batch["attention_mask"] > 0, axis=-1)).astype(jnp.float32)
    return {"loss": loss * n, **{k: v * n for k, v in per_relation.items()}, "count": n}


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
# The step, built from configs alone (no weights are read).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistillStep:
    """The jitted train and eval steps of one experiment, and what they are built from.

    ``train_fn(state, batch, schedule, teacher_params) -> (state, metrics)`` is
    ``steps.train_step`` with the MiniLMv2 loss bound; ``eval_fn(params, teacher_params,
    batch)`` gives held-out sums. Nothing here holds weights: ``abstract_state()``,
    ``abstract_teacher_params()`` and ``abstract_batch()`` describe the arguments, with their
    shardings, for compiling without data (``minilm_jax.compile``).

    Shardings (``parallel``): the batch is split over every device; the student's state and
    the teacher's parameters follow ``parallel.FSDP_RULES`` on the mesh's ``fsdp`` axis
    (``state_sharding``, ``teacher_sharding``: trees of ``NamedSharding``; all replicated
    when fsdp is 1)."""

    spec: StepSpec
    tx: Any
    schedule: np.ndarray
    mesh: jax.sharding.Mesh
    state_sharding: Any
    teacher_sharding: Any
    batch_sharding: Any
    train_fn: Any
    eval_fn: Any
    student_cfg: Any
    teacher_cfg: Any  # truncated to the distillation layer

    def abstract_teacher_params(self):
        return _with_sharding(_teacher_shapes(self.teacher_cfg), self.teacher_sharding)

    def abstract_state(self, seed: int = 0):
        return _with_sharding(_state_shapes(self.student_cfg, self.tx, seed), self.state_sharding)

    def abstract_batch(self, batch_size: int, length: int):
        spec = jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=self.batch_sharding)
        return {"input_ids": spec, "attention_mask": spec, "token_type_ids": spec}


def _teacher_shapes(teacher_cfg):
    """The (truncated) teacher's parameters as shapes, in its ``param_dtype``."""
    model = nnx.eval_shape(
        lambda: models.build_model(teacher_cfg, rngs=nnx.Rngs(0), add_pooler=False)
    )
    return nnx.state(model, nnx.Param)


def _state_shapes(student_cfg, tx, seed: int = 0):
    def init():
        student = models.build_model(student_cfg, rngs=nnx.Rngs(seed))
        return steps.init_state(nnx.state(student, nnx.Param), tx, seed + 1)

    return jax.eval_shape(init)


def _with_sharding(tree, sharding):
    """ShapeDtypeStructs of ``tree`` carrying ``sharding`` (one for all, or a matching tree)."""
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
        )
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding
    )


def build_step(
    config, teacher_cfg, student_cfg, mesh: jax.sharding.Mesh | None = None
) -> DistillStep:
    """The optimizer, the loss and the jitted steps of ``config`` on ``mesh`` (default:
    ``config.mesh`` over every device of every host), from the teacher's and student's
    configs only (graph definitions and shapes come from ``nnx.eval_shape``)."""
    mesh = parallel.mesh_from_config(config.mesh) if mesh is None else mesh
    layer = config.teacher.layer
    # The frozen teacher is stored in teacher.param_dtype and computes in the run's dtype.
    truncated_cfg = teacher_cfg.replace(num_layers=layer, param_dtype=config.teacher.param_dtype)
    teacher_graphdef = nnx.graphdef(
        nnx.eval_shape(
            lambda: models.build_model(truncated_cfg, rngs=nnx.Rngs(0), add_pooler=False)
        )
    )
    student_graphdef = nnx.graphdef(
        nnx.eval_shape(lambda: models.build_model(student_cfg, rngs=nnx.Rngs(0)))
    )
    used = projections_read(config.distill.relations)
    tx = optim.make_optimizer(
        config, frozen=lambda params: models.unreachable_params(student_cfg, params, used)
    )
    spec = StepSpec(
        teacher_graphdef=teacher_graphdef,
        student_graphdef=student_graphdef,
        teacher_layer=layer,
        relations=tuple(config.distill.relations),
        weights=tuple(config.distill.weights) if config.distill.weights is not None else None,
        context=relation_context(config, teacher_cfg, student_cfg),
        remat=config.remat,
    )
    replicated, batch_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state_sharding = parallel.state_shardings(_state_shapes(student_cfg, tx), mesh)
    teacher_sharding = parallel.state_shardings(_teacher_shapes(truncated_cfg), mesh)
    train_fn = steps.jit_train_step(
        functools.partial(distill_loss, spec=spec),
        tx,
        grad_accum_steps=config.grad_accum_steps,
        state_sharding=state_sharding,
        batch_sharding=batch_sharding,
        aux_sharding=teacher_sharding,
        replicated=replicated,
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, spec=spec),
        in_shardings=(state_sharding.params, teacher_sharding, batch_sharding),
        out_shardings=replicated,
    )
    return DistillStep(
        spec=spec,
        tx=tx,
        schedule=optim.schedule(config.learning_rate, config.warmup_steps, config.total_steps),
        mesh=mesh,
        state_sharding=state_sharding,
        teacher_sharding=teacher_sharding,
        batch_sharding=batch_sharding,
        train_fn=train_fn,
        eval_fn=eval_fn,
        student_cfg=student_cfg,
        teacher_cfg=truncated_cfg,
    )


# ---------------------------------------------------------------------------------------------
# Setting up a run: weights, state on the mesh.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Everything ``train_and_evaluate`` builds before its loop (tests and benchmarks reuse it)."""

    teacher_path: str
    teacher_cfg: TransformerConfig  # the full teacher's config (all layers)
    student_cfg: TransformerConfig
    teacher: Any  # truncated to the distillation layer
    tokenizer: Any
    step: DistillStep
    teacher_params: Any  # on the mesh
    state: steps.TrainState  # on the mesh

    @property
    def mesh(self):
        return self.step.mesh

    @property
    def schedule(self):
        return self.step.schedule

    def train_fn(self, state, batch, teacher_params=None):
        """One step of ``state`` on a global batch (tests drive runs step by step)."""
        params = self.teacher_params if teacher_params is None else teacher_params
        return self.step.train_fn(state, batch, self.step.schedule, params)


def setup_run(config, mesh: jax.sharding.Mesh | None = None) -> Run:
    """Loads the teacher, initialises the student and optimizer on ``mesh`` (default:
    ``config.mesh`` over every device of every host), each array placed with the step's
    sharding. The steps are compiled at their first call."""
    path = teacher_path(config)
    # Weights are made in host memory, then `place` sends each device its part: a large
    # teacher (XLM-R XL, 14 GB in float32) never has to fit one chip whole.
    with parallel.on_host():
        teacher_cfg, teacher = hf.load_pretrained(path, dtype=jnp.dtype(config.dtype))
        validate_against_teacher(config, teacher_cfg)
        student_cfg = make_student_config(config, teacher_cfg)
        student = init_student(config, student_cfg, teacher, teacher_cfg)
    teacher = truncate_teacher(teacher, config.teacher.layer)
    logging.info(
        "teacher %s (layer %d of %d), student %s",
        path,
        config.teacher.layer,
        teacher_cfg.num_layers,
        student_cfg,
    )
    step = build_step(config, teacher_cfg, student_cfg, mesh)
    with parallel.on_host():
        state = steps.init_state(nnx.state(student, nnx.Param), step.tx, config.seed + 1)
        teacher_params = jax.tree.map(
            lambda x: x.astype(config.teacher.param_dtype), nnx.state(teacher, nnx.Param)
        )
    return Run(
        teacher_path=path,
        teacher_cfg=teacher_cfg,
        student_cfg=student_cfg,
        teacher=teacher,
        tokenizer=hf.load_tokenizer(path),
        step=step,
        teacher_params=parallel.place(teacher_params, step.teacher_sharding),
        state=parallel.place(state, step.state_sharding),
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


def sync_hosts(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Distils the teacher into a fresh (or resumed) student; returns a summary dict with
    the held-out losses at the start and end and the path of the exported student.

    The config is validated first; then ``workdir`` (a local folder or a URL, gs://...) is
    claimed (``rundir.claim``: a run directory of this run only, one writer at a time, a
    resumed run's config checked against the saved one; docs/run_directory.md), before
    anything is written into it. A run stopped by a signal checkpoints the current step and
    returns early: the summary then holds ``preempted_at``, ``signal`` and ``exit_code`` (130
    after Ctrl-C, 143 after SIGTERM).
    """
    parallel.initialize_distributed(config.distributed)
    validate_config(config)
    with rundir.claim(workdir, config, kind="distill", allow_url=True) as claimed:
        return _train(config, claimed.workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    run = setup_run(config)
    mesh, teacher_params, state = run.mesh, run.teacher_params, run.state
    # Everything opened here is closed on every way out (an error, a signal, the end), in
    # reverse order; the data iterator last but always: a Grain prefetch thread still
    # running when Python exits aborts the process.
    with contextlib.ExitStack() as cleanup:
        train_iter, eval_batches_fn = make_data(
            config,
            run.tokenizer,
            run.teacher_cfg.family,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        cleanup.callback(train_iter.close)
        ckpt = checkpointing.Checkpointer(
            paths.join(workdir, "checkpoints"),
            keep=config.keep_checkpoints,
            use_async=config.async_checkpoints,
        )
        cleanup.callback(ckpt.close)
        cleanup.callback(ckpt.wait)
        # The newest checkpoint that restores; a damaged newer one is set aside (one warning).
        restored = ckpt.restore_latest(checkpointing.abstract_like(state), train_iter)
        if restored is not None:
            latest, state = restored
            if jax.process_index() == 0:
                print(f"Resumed from step {latest} ({ckpt.directory})", flush=True)
        start_step = int(jax.device_get(state.step))

        writer = metrics.MetricWriter(
            workdir, resume_step=start_step if restored is not None else None
        )
        cleanup.callback(writer.close)
        summary: dict[str, Any] = {"workdir": workdir, "start_step": start_step}

        def run_eval(params, step: int) -> dict[str, float] | None:
            if eval_batches_fn is None:  # data.eval_every_kth_document = 0: no held-out split
                return None
            result = evaluate(run.step.eval_fn, params, teacher_params, eval_batches_fn(), mesh)
            writer.write(step, result, kind="eval")
            if jax.process_index() == 0:
                per = " ".join(
                    f"{k.removeprefix('loss/')} {v:.4f}" for k, v in result.items() if k != "loss"
                )
                print(f"eval step {step}: held-out loss {result['loss']:.4f} ({per})", flush=True)
            return result

        if start_step == 0 and config.eval_at_start:
            summary["eval_start"] = run_eval(state.params, 0)
        elif restored is not None:
            summary["eval_start"] = _logged_eval(workdir, step=0)  # from before the restart

        # Ctrl-C and SIGTERM: checkpoint the current step, then stop (checkpointing.stop_signal
        # for multi-host runs, where JAX's preemption service makes every host agree).
        stop = cleanup.enter_context(checkpointing.stop_signal())
        result = loop.run(
            lambda s, b: run.step.train_fn(s, b, run.step.schedule, teacher_params),
            state,
            lambda: next_train_batch(train_iter, mesh),
            cadence=loop.Cadence(
                total_steps=config.total_steps,
                log_every=config.log_every,
                checkpoint_every=config.checkpoint_every,
                eval_every=config.eval_every,
            ),
            start_step=start_step,
            writer=writer,
            progress=metrics.Progress(config.total_steps, start_step),
            checkpointer=ckpt,
            data_iterator=train_iter,
            evaluate=lambda s, step: run_eval(s.params, step),
            stop=stop,
            nonfinite_hint="Lower config.learning_rate or check the data.",
        )
        state = result.state
        if result.data_exhausted and jax.process_index() == 0:
            print(f"Data exhausted (data.num_epochs) after step {result.last_step}.", flush=True)
        if result.preempted_at is not None:
            summary["preempted_at"] = result.preempted_at
            summary["signal"] = result.signal
            summary["exit_code"] = result.exit_code
            if jax.process_index() == 0:
                print(
                    f"Stopped at step {result.preempted_at} on request; checkpoint saved. "
                    "Rerun the same command to resume.",
                    flush=True,
                )
            return summary
        summary["eval_end"] = run_eval(state.params, result.last_step)
    summary["last_checkpoint"] = result.last_step

    # Whole values on every host (fsdp shards gathered; every host takes part).
    host_params = parallel.gather(state.params)
    student_graphdef = run.step.spec.student_graphdef
    if config.export_hf:
        summary["hf_student"] = export_student(
            host_params, student_graphdef, run.student_cfg, run.teacher_path, workdir
        )
    if config.embedding_eval_paragraphs and jax.process_index() == 0:
        report = embedding_agreement(config, run, nnx.merge(student_graphdef, host_params))
        if report is not None:
            summary["embeddings"] = report
    if config.plots and jax.process_index() == 0:
        from minilm_jax import plots

        student = nnx.merge(student_graphdef, host_params)
        with paths.staged(workdir, inputs=("metrics.jsonl",)) as local:  # matplotlib: local
            written = plots.write_run_plots(
                local, run.teacher, student, run.tokenizer, config, eval_text=config.plot_text
            )
        summary["plots"] = {k: paths.join(workdir, os.path.basename(v)) for k, v in written.items()}
    if jax.process_index() == 0:
        with paths.open(paths.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=float)
    return summary


def embedding_agreement(config, run: Run, student) -> dict[str, Any] | None:
    """When the teacher is a sentence-transformers model: how well the student's sentence
    embeddings agree with the teacher's (and an untrained student's) on held-out paragraphs,
    printed and returned for summary.json; None for other teachers or without a held-out
    split. The whole teacher is reloaded (the run's copy stops at the distillation layer)."""
    from minilm_jax import embeddings

    st_config = hf.read_sentence_transformers(run.teacher_path)
    k = config.data.eval_every_kth_document
    if st_config is None or not k:
        return None
    _, held_out = data.held_out_split(data.load_documents(config.data), k)
    paragraphs = [held_out[i] for i in range(min(len(held_out), config.embedding_eval_paragraphs))]
    _, teacher = hf.load_pretrained(run.teacher_path, dtype=jnp.dtype(config.dtype))
    untrained = init_student(config, run.student_cfg, teacher, run.teacher_cfg)
    report = embeddings.agreement_report(
        teacher, student, run.tokenizer, paragraphs, untrained=untrained, config=st_config
    )
    sims, top1 = report["similarity_spearman"], report["retrieval_top1"]
    print(
        f"sentence embeddings on {report['num_paragraphs']} held-out paragraphs: Spearman of "
        f"pairwise cosine similarities vs the teacher: student {sims['student']:.3f}, untrained "
        f"{sims['untrained']:.3f}; top-1 retrieval of each paragraph's second half: teacher "
        f"{top1['teacher']:.3f}, student {top1['student']:.3f}, untrained {top1['untrained']:.3f}",
        flush=True,
    )
    return report


def _logged_eval(workdir: str, step: int) -> dict[str, float] | None:
    """A held-out result recorded in metrics.jsonl (the start loss of a resumed run)."""
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.exists(path):
        return None
    for record in metrics.read_jsonl(path):
        if record["kind"] == "eval" and record["step"] == step:
            return {k: v for k, v in record.items() if k not in ("kind", "step", "time")}
    return None


def export_student(host_params, graphdef, student_cfg, teacher_folder: str, workdir: str) -> str:
    """Writes the student (float32 config) with the teacher's tokenizer to WORKDIR/hf_student."""
    path = paths.join(workdir, "hf_student")
    if jax.process_index() == 0:
        model = nnx.merge(graphdef, host_params)
        # hf_student belongs to this run (its workdir): a re-export replaces it. A student of
        # a sentence-transformers teacher is written as one too. (A URL: written locally,
        # then uploaded.)
        with paths.staged(path) as local:
            hf.export_student(
                student_cfg.replace(dtype="float32"), model, teacher_folder, local, overwrite=True
            )
        print(f"Student written to {path}", flush=True)
    sync_hosts("export")
    return path
