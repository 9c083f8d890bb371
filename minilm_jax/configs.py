"""Experiment configs: the shared defaults (the paper's distillation recipe, the fine-tuning
recipe), loading experiment files, command-line overrides, and the ``smoke`` shrinker.

Experiment files in ``experiments/`` start from ``base_config()`` (distillation) or
``finetune_base_config()`` (fine-tuning) and override what their row of the paper changes.
Every field has a one-line comment; ``--config.a.b=v`` on any command line overrides it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any

import ml_collections

from minilm_jax.data import default_data_config


def base_config() -> ml_collections.ConfigDict:
    """The paper's recipe (docs/method.md, "Settings"), BERT-base -> 6x384 by default."""
    c = ml_collections.ConfigDict()

    c.teacher = ml_collections.ConfigDict()
    c.teacher.path = ""  # local Hugging Face folder (config.json + model.safetensors)
    c.teacher.layer = 12  # 1-based teacher layer whose relations are distilled
    # Storage dtype of the frozen teacher's weights: "float32" or "bfloat16" (half the HBM;
    # the teacher still computes in `dtype`). See docs/scaling.md for its effect on relations.
    c.teacher.param_dtype = "float32"

    c.student = ml_collections.ConfigDict()
    c.student.spec = "6x384"  # LAYERSxHIDDEN
    c.student.num_heads = 12  # attention heads of the student
    c.student.intermediate_size = ml_collections.FieldReference(
        None, field_type=int
    )  # None: 4 x hidden
    c.student.dropout = 0.1  # hidden and attention dropout while distilling
    # The student's architecture family: "" = the teacher's; "bert" (or "roberta",
    # "xlm-roberta", "xlm-roberta-xl") for a student of another family that reads the teacher's
    # token ids, e.g. a BERT student of a ModernBERT or DeBERTa teacher (docs/models.md).
    c.student.family = ""
    # "random" (the paper), "teacher" (copy teacher layers; same family, widths and layer
    # structure) or "pretrained" (continue from student.path; its tokenizer must be the teacher's)
    c.student.init = "random"
    # Teacher layers (0-based) copied into the student when init="teacher"; None: evenly spaced.
    c.student.init_layers = ml_collections.FieldReference(None, field_type=tuple)
    # init="pretrained": the student's Hugging Face folder (e.g. a released MiniLM); student.spec
    # and student.num_heads must state its shape.
    c.student.path = ""

    c.distill = ml_collections.ConfigDict()
    c.distill.relations = ("qq", "kk", "vv")  # pair names (two of q/k/v) or registered relations
    c.distill.weights = ml_collections.FieldReference(
        None, field_type=tuple
    )  # per relation; None: all 1
    c.distill.num_relation_heads = 48  # A_r: 48 for base-size teachers, 64 for large ones
    c.distill.implementation = "auto"  # "auto" | "direct" | "blocked" (memory-bounded) relation KL
    c.distill.block_size = ml_collections.FieldReference(
        None, field_type=int
    )  # query rows per block
    # Python modules imported before validation, so relations they register can be named above.
    c.distill.relation_modules = ()

    c.data = default_data_config()
    c.max_len = 512  # tokens per packed sequence
    c.batch_size = 1024  # global batch (sequences), split over every device of every host
    c.grad_accum_steps = 1  # micro-batches per optimizer step (the batch is split into them)
    # Student activations recomputed in the backward pass instead of kept: "none" | "attention"
    # (scores, softmax, GELU, LayerNorms) | "layer" (all of each layer). Same results, less HBM.
    c.remat = "none"
    c.eval_batch_size = 64  # global batch for the held-out loss
    c.data.max_eval_batches = (
        20  # held-out batches per evaluation (None = the whole held-out split)
    )

    c.total_steps = 400_000  # optimizer steps
    c.warmup_steps = 4000  # linear warmup, then linear decay to 0 at total_steps
    c.learning_rate = 6e-4  # peak learning rate
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-6
    c.weight_decay = 0.01  # not applied to biases and LayerNorm parameters
    c.grad_clip_norm = 1.0  # global-norm clipping (0 = off)
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)
    c.seed = 0  # student init, dropout and data order

    c.log_every = 100  # steps between progress lines / metric records
    c.eval_every = 2000  # steps between held-out evaluations (0 = only at start and end)
    c.eval_at_start = True  # held-out loss of the untrained student
    c.checkpoint_every = 2000  # steps between checkpoints
    c.keep_checkpoints = 3  # checkpoints kept on disk
    c.async_checkpoints = True  # write checkpoints in the background
    c.export_hf = True  # write the student to WORKDIR/hf_student at the end
    c.plots = False  # write loss curves and relation heatmaps (PNG) into the workdir
    c.plot_text = ""  # held-out sentence for the relation heatmaps ("" = first held-out text)
    # Sentence-transformers teachers: held-out paragraphs for the end-of-run report of how well
    # the student's sentence embeddings agree with the teacher's (0 = no report).
    c.embedding_eval_paragraphs = 256

    # Multi-host: all None = single process (or auto=True to let the cluster say).
    c.distributed = distributed_config()
    c.mesh = mesh_config()  # how the devices split the work (docs/scaling.md)
    return c


def mesh_config() -> ml_collections.ConfigDict:
    """The device mesh: slices x data x fsdp = every device of every host. The batch is split
    over all of them; `fsdp` devices also split the parameters, the optimizer state and the
    frozen teacher (the default, fsdp=1, is pure data parallelism: everything replicated)."""
    c = ml_collections.ConfigDict()
    c.data = -1  # data-parallel devices per slice (-1: all the other axes leave)
    c.fsdp = 1  # devices that shard parameters and optimizer state (-1: all the others leave)
    c.slices = 1  # TPU slices joined by the data-centre network (outer data parallelism)
    return c


def distributed_config() -> ml_collections.ConfigDict:
    """Multi-host settings: all None = single process (or auto=True to let the cluster say)."""
    c = ml_collections.ConfigDict()
    c.auto = False
    c.coordinator_address = ml_collections.FieldReference(None, field_type=str)
    c.num_processes = ml_collections.FieldReference(None, field_type=int)
    c.process_id = ml_collections.FieldReference(None, field_type=int)
    c.local_device_ids = ml_collections.FieldReference(None, field_type=tuple)
    c.cpu_collectives = ""  # e.g. "gloo" for multi-process runs on CPU
    return c


def finetune_base_config() -> ml_collections.ConfigDict:
    """Fine-tuning a student on one task: transformers' recipe (AdamW, 10% linear warmup then
    linear decay, dropout 0.1, Adam eps 1e-8), a learning-rate x epochs x seeds grid.
    Task experiment files (experiments/glue.py, squad.py, xnli.py, mlqa.py) set the task and
    the grid."""
    c = ml_collections.ConfigDict()
    c.task = ""  # the task's name (the experiment file sets it)
    c.student_path = ""  # Hugging Face folder of the student (e.g. DISTILL_WORKDIR/hf_student)
    c.data_dir = ""  # TFDS data_dir holding the task's datasets ("" = TFDS default)
    c.max_train_examples = 0  # first N training examples only (0 = all)
    c.max_eval_examples = 0  # first N evaluation examples only (0 = all)

    c.max_len = 128  # tokens per example (pairs truncated longest-first; QA: window length)
    c.length_buckets = (64,)  # shorter padded lengths besides max_len (one compile each)
    c.batch_size = 32  # global training batch, split over every device
    c.eval_batch_size = 128  # global evaluation batch
    c.head = (
        "auto"  # classification: "auto" (pooler for BERT, <s> head otherwise) | "pooler" | "cls"
    )
    c.dropout = 0.1  # encoder and head dropout while fine-tuning
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)

    c.warmup_fraction = 0.1  # linear warmup over this fraction of the steps, then linear decay
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8  # transformers' default (run_glue.py, run_qa.py)
    c.weight_decay = 0.01  # AdamW; not applied to biases and LayerNorm parameters
    c.grad_clip_norm = 1.0  # global-norm clipping, transformers' max_grad_norm (0 = off)
    c.log_every = 100  # steps between training-loss lines
    c.checkpoint_every = 1000  # steps between checkpoints of a run (a stopped run resumes)

    c.sweep = ml_collections.ConfigDict()
    c.sweep.learning_rates = (3e-5,)  # peak learning rates
    c.sweep.epochs = (3,)  # passes over the training set
    c.sweep.seeds = (0, 1, 2)  # head init, dropout and data order of each run

    c.distributed = distributed_config()
    c.mesh = mesh_config()  # how the devices split the work (docs/scaling.md)
    return c


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """``"experiments/NAME.py[:ARGS]"`` -> that file's ``get_config(ARGS)``, as the CLIs do.

    Errors name the file and the argument: a missing file, a file that does not load, a
    file without ``get_config``, a bad argument after the colon.
    """
    path, _, arg = spec.partition(":")
    module = load_experiment_module(path)
    if not hasattr(module, "get_config"):
        raise ValueError(f"experiment file {path!r} defines no get_config(arg)")
    try:
        config = module.get_config(arg or None)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{spec}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"{path}: get_config() returned {type(config).__name__}, not a ConfigDict")
    return config


def load_experiment_module(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no experiment file {path!r}")
    name = "minilm_experiment_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None:
        raise ValueError(f"experiment file {path!r} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(f"experiment file {path!r} does not parse: {e.msg} (line {e.lineno})")
    except Exception as e:  # noqa: BLE001  (whatever the file raises, name the file)
        raise ValueError(f"experiment file {path!r} failed to load: {type(e).__name__}: {e}")
    return module


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses a config-file argument ``"smoke,layer=10"`` into typed fields.

    Bare names are booleans set to True; ``k=v`` takes the type of ``defaults[k]``. Unknown
    names fail with the list of allowed ones.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r} in {arg!r}; allowed: {sorted(defaults)}"
            )
        kind = type(defaults[key])
        if not value:
            out[key] = True
        elif kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            try:
                out[key] = kind(value)
            except ValueError:
                raise ValueError(
                    f"config argument {key}={value!r}: expected {kind.__name__}"
                ) from None
    return out


def _field_type(node: ml_collections.ConfigDict, name: str) -> type | None:
    try:
        return node.get_ref(name).get_type()
    except Exception:  # noqa: BLE001  (not a FieldReference: take the value's type)
        value = node[name]
        return None if value is None else type(value)


def _parse_value(text: str, kind: type | None, where: str) -> Any:
    if text == "None":
        return None
    if kind is bool:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{where}={text!r}: expected True or False")
        return lowered in ("true", "1", "yes")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{where}={text!r}: expected {kind.__name__}") from None
    if kind in (tuple, list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = tuple(x.strip() for x in text.split(",") if x.strip())  # a,b -> ('a', 'b')
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return kind(value)
    if kind is str or kind is None:
        return text
    try:
        return kind(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"{where}={text!r}: expected {kind.__name__}") from None


def override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """``--config.a.b=text``: sets an existing field, parsed with the field's type. An unknown
    field is an error that lists the known ones at that level."""
    where = f"config.{dotted}"
    node = config
    *parents, leaf = dotted.split(".")
    for i, name in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ValueError(
                f"{where}: unknown config field {'.'.join(parents[: i + 1])!r}; known: {known}"
            )
        node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ValueError(f"{where}: unknown config field; known at this level: {known}")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ValueError(f"{where} is a section; set one of its fields: {sorted(node[leaf])}")
    value = _parse_value(text, _field_type(node, leaf), where)
    try:
        node[leaf] = value
    except TypeError as e:
        raise ValueError(f"{where}={text!r}: {e}") from None


def set_fields(config: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
    """Sets dotted fields to Python values (a sweep point's overrides)."""
    for dotted, value in values.items():
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value


def apply_smoke(c: ml_collections.ConfigDict, family: str) -> ml_collections.ConfigDict:
    """Shrinks any distillation experiment to a CPU run of seconds, keeping its structure.

    The teacher becomes the cached tiny random model of ``family`` (``tiny.smoke_model``, a
    real Hugging Face folder written once; every model family has one), the student keeps its
    layer count up to 2 and its family (``student.family``) and shrinks to width 32 with a
    random init, the corpus is the built-in Python documentation, and every schedule is a few
    steps long.
    """
    from minilm_jax import tiny

    c.teacher.path = tiny.smoke_model(family)
    c.teacher.layer = min(c.teacher.layer, tiny.SMOKE_TEACHER["num_layers"])
    layers = min(int(c.student.spec.split("x")[0]), 2)
    c.student.spec = f"{layers}x32"
    c.student.num_heads = 4
    c.student.intermediate_size = None
    c.student.init = "random"
    c.student.init_layers = None
    c.student.path = ""
    c.distill.num_relation_heads = 4
    c.data.text_files = ""
    c.data.tfds_sources = ""
    c.data.python_docs = True
    c.max_len = 32
    c.batch_size = 8
    c.eval_batch_size = 8
    c.data.max_eval_batches = 2
    c.total_steps = 6
    c.warmup_steps = 2
    c.learning_rate = 1e-3
    c.log_every = 2
    c.eval_every = 3
    c.checkpoint_every = 3
    c.keep_checkpoints = 2
    c.async_checkpoints = False
    return c


# The paper's teachers (docs/method.md, "Settings"): where each comes from, the layer distilled
# (1-based) and the relation heads. Large teachers' layers come from secondary sources; the
# teacher-layer ablation (experiments/ablations.py) sweeps them.
TEACHERS = {
    "bert-base-uncased": dict(
        hub_id="google-bert/bert-base-uncased",
        family="bert",
        hidden=768,
        layers=12,
        layer=12,
        relation_heads=48,
    ),
    "bert-large-uncased": dict(
        hub_id="google-bert/bert-large-uncased",
        family="bert",
        hidden=1024,
        layers=24,
        layer=21,
        relation_heads=64,
    ),
    "roberta-large": dict(
        hub_id="FacebookAI/roberta-large",
        family="roberta",
        hidden=1024,
        layers=24,
        layer=19,
        relation_heads=64,
    ),
    "xlm-roberta-large": dict(
        hub_id="FacebookAI/xlm-roberta-large",
        family="xlm-roberta",
        hidden=1024,
        layers=24,
        layer=19,
        relation_heads=64,
    ),
    "xlm-roberta-base": dict(
        hub_id="FacebookAI/xlm-roberta-base",
        family="xlm-roberta",
        hidden=768,
        layers=12,
        layer=12,
        relation_heads=48,
    ),
}

# Teachers the paper did not use. No paper gives their layer or relation heads; both are
# chosen by analogy with the paper's choices and are to be checked with the teacher-layer
# ablation (experiments/ablations.py:ablation=teacher_layer,teacher=NAME):
# - layer: the last layer of 12-layer teachers (as BERT-base); about 0.8 of the depth for
#   deeper ones (the paper's large teachers: 19 or 21 of 24), on a global-attention layer for
#   ModernBERT (its layers 1, 4, 7, ... attend globally; the others see a 129-token window);
# - relation heads: 48 for 768-wide teachers and 64 for wider ones (the paper's), which divide
#   both the teacher's width and a 384-wide student's.
NEW_TEACHERS = {
    "modernbert-base": dict(  # 22 x 768, 12 heads; layer 19 = 0.86 of the depth, global
        hub_id="answerdotai/ModernBERT-base",
        family="modernbert",
        hidden=768,
        layers=22,
        layer=19,
        relation_heads=48,
    ),
    "modernbert-large": dict(  # 28 x 1024, 16 heads; layer 22 = 0.79 of the depth, global
        hub_id="answerdotai/ModernBERT-large",
        family="modernbert",
        hidden=1024,
        layers=28,
        layer=22,
        relation_heads=64,
    ),
    "deberta-v3-base": dict(  # 12 x 768: the last layer, as BERT-base
        hub_id="microsoft/deberta-v3-base",
        family="deberta-v2",
        hidden=768,
        layers=12,
        layer=12,
        relation_heads=48,
    ),
    "deberta-v3-large": dict(  # 24 x 1024: layer 19, as RoBERTa-large
        hub_id="microsoft/deberta-v3-large",
        family="deberta-v2",
        hidden=1024,
        layers=24,
        layer=19,
        relation_heads=64,
    ),
    "xlm-roberta-xl": dict(  # 36 x 2560 (3.5B); layer 28 = 0.78 of the depth, as 19 of 24
        hub_id="facebook/xlm-roberta-xl",
        family="xlm-roberta-xl",
        hidden=2560,
        layers=36,
        layer=28,
        relation_heads=64,
    ),
    "xlm-roberta-xxl": dict(  # 48 x 4096 (10.7B); layer 38 = 0.79 of the depth
        hub_id="facebook/xlm-roberta-xxl",
        family="xlm-roberta-xl",
        hidden=4096,
        layers=48,
        layer=38,
        relation_heads=64,
    ),
}
TEACHERS.update(NEW_TEACHERS)

# Corpora per teacher family. English Wikipedia comes through TFDS; BookCorpus, the rest of
# RoBERTa's 160 GB and CC-100 are not in the TFDS catalogue and are read as local text files
# (CC-100 is distributed as text: one paragraph per line, documents separated by blank lines).
# DeBERTa-v3 was pretrained on RoBERTa's 160 GB, so it gets RoBERTa's; ModernBERT's 2T tokens
# (web, code, scientific text) are not distributed, and RoBERTa's English web text stands in;
# XLM-R XL/XXL were pretrained on CC-100, as XLM-R.
_ENGLISH_WEB = dict(
    tfds_sources="wikipedia/20230601.en:text",
    text_files="corpora/roberta/*.txt",
    text_format="paragraph",
)
_CC100 = dict(tfds_sources="", text_files="corpora/cc100/*.txt", text_format="paragraph")
CORPORA = {
    "bert": dict(
        tfds_sources="wikipedia/20230601.en:text",
        text_files="corpora/bookcorpus/*.txt",
        text_format="paragraph",
    ),
    "roberta": _ENGLISH_WEB,
    "xlm-roberta": _CC100,
    "modernbert": _ENGLISH_WEB,
    "deberta-v2": _ENGLISH_WEB,
    "xlm-roberta-xl": _CC100,
}


def teacher_dir(name: str) -> str:
    """Local folder of a teacher: ``$MINILM_TEACHERS/NAME`` (default ``teachers/NAME``)."""
    return os.path.join(os.environ.get("MINILM_TEACHERS", "teachers"), name)


def paper_experiment(teacher: str, student: str, arg: str | None) -> ml_collections.ConfigDict:
    """One row of the paper's tables: ``teacher`` (a key of TEACHERS) -> ``student`` spec,
    with the paper's recipe. ``arg``: ``smoke`` shrinks it to a CPU run of seconds."""
    a = parse_arg(arg, smoke=False)
    setting = TEACHERS[teacher]
    c = base_config()
    c.teacher.path = teacher_dir(teacher)
    c.teacher.layer = setting["layer"]
    c.distill.num_relation_heads = setting["relation_heads"]
    c.student.spec = student
    # The corpus follows the teacher's family, a field of its entry (never a guess from the
    # path: a folder named "xlm-work" must not turn a BERT run into a CC-100 run).
    for field, value in CORPORA[setting["family"]].items():
        c.data[field] = value
    c.data.eval_every_kth_document = 1000  # 0.1% of documents held out
    c.dtype = "bfloat16"  # accelerator runs; parameters and the relation softmax stay float32
    if a.smoke:
        c = apply_smoke(c, setting["family"])
        c.dtype = "float32"
    return c


def apply_finetune_smoke(c: ml_collections.ConfigDict, family: str) -> ml_collections.ConfigDict:
    """Shrinks a fine-tuning experiment to a CPU run of seconds: the cached tiny random
    student of ``family`` (``tiny.smoke_model``), short sequences, one epoch, one seed. The
    data is still the task's (the tests provide TFDS mock data)."""
    from minilm_jax import tiny

    c.student_path = tiny.smoke_model(family, tiny.SMOKE_STUDENT)
    c.max_train_examples = 48
    c.max_eval_examples = 48
    c.max_len = 32
    c.length_buckets = (16,)
    c.batch_size = 16
    c.eval_batch_size = 16
    c.sweep.epochs = (1,)
    c.sweep.seeds = (0,)
    c.log_every = 1
    return c


def fail(field: str, value: Any, why: str):
    """Raises the ValueError every config check uses: ``config.FIELD=VALUE: why``."""
    raise ValueError(f"config.{field}={value!r}: {why}")


def check_positive(config: ml_collections.ConfigDict, *fields: str) -> None:
    for field in fields:
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            fail(field, value, "must be a positive integer")
