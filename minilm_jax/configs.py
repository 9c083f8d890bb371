"""Shared experiment defaults: the paper's training recipe, and the ``smoke`` shrinker.

Experiment files in ``experiments/`` start from ``base_config()`` and override what their
row of the paper changes (teacher, layer, relation heads, student shape). Every field has a
one-line comment; ``python -m minilm_jax.main --config experiments/X.py --config.a.b=v``
overrides any of them.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from minilm_jax.data import default_data_config

# Sizes of the tiny random teacher a smoke run writes to its workdir.
SMOKE_TEACHER = dict(num_layers=4, hidden_size=64, num_heads=4, intermediate_size=128)


def base_config() -> ml_collections.ConfigDict:
    """The paper's recipe (section "Settings" of PAPER.md), BERT-base -> 6x384 by default."""
    c = ml_collections.ConfigDict()

    c.teacher = ml_collections.ConfigDict()
    c.teacher.path = ""  # local Hugging Face folder (config.json + model.safetensors)
    c.teacher.layer = 12  # 1-based teacher layer whose relations are distilled
    # Smoke runs: family of a tiny random teacher written into the workdir ("" = use path).
    c.teacher.tiny_random_family = ""

    c.student = ml_collections.ConfigDict()
    c.student.spec = "6x384"  # LAYERSxHIDDEN
    c.student.num_heads = 12  # attention heads of the student
    c.student.intermediate_size = ml_collections.FieldReference(
        None, field_type=int
    )  # None: 4 x hidden
    c.student.dropout = 0.1  # hidden and attention dropout while distilling
    c.student.init = (
        "random"  # "random" (the paper) or "teacher" (copy teacher layers; widths must match)
    )
    # Teacher layers (0-based) copied into the student when init="teacher"; None: evenly spaced.
    c.student.init_layers = ml_collections.FieldReference(None, field_type=tuple)

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

    # Multi-host: all None = single process (or auto=True to let the cluster say).
    c.distributed = ml_collections.ConfigDict()
    c.distributed.auto = False
    c.distributed.coordinator_address = ml_collections.FieldReference(None, field_type=str)
    c.distributed.num_processes = ml_collections.FieldReference(None, field_type=int)
    c.distributed.process_id = ml_collections.FieldReference(None, field_type=int)
    c.distributed.local_device_ids = ml_collections.FieldReference(None, field_type=tuple)
    c.distributed.cpu_collectives = ""  # e.g. "gloo" for multi-process runs on CPU
    return c


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """``"experiments/NAME.py[:ARGS]"`` -> that file's ``get_config(ARGS)``, as the CLI does."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No experiment file {path!r}")
    module = load_experiment_module(path)
    return module.get_config(arg or None)


def load_experiment_module(path: str):
    name = "minilm_experiment_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
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
                f"Unknown config argument {key!r} in {arg!r}; allowed: {sorted(defaults)}"
            )
        kind = type(defaults[key])
        if not value:
            out[key] = True
        elif kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = kind(value)
    return out


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks any experiment to a CPU run of seconds, keeping its structure.

    The teacher becomes a tiny random model of the same family (written into the workdir),
    the student keeps its layer count up to 2 and shrinks to width 32, the corpus is the
    built-in Python documentation, and every schedule is a few steps long.
    """
    family = c.teacher.tiny_random_family or family_of_experiment(c)
    c.teacher.path = ""
    c.teacher.tiny_random_family = family
    c.teacher.layer = min(c.teacher.layer, SMOKE_TEACHER["num_layers"])
    layers = min(int(c.student.spec.split("x")[0]), 2)
    c.student.spec = f"{layers}x32"
    c.student.num_heads = 4
    c.student.intermediate_size = None
    c.student.init = "random"
    c.student.init_layers = None
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


def family_of_experiment(c: ml_collections.ConfigDict) -> str:
    """The teacher family an experiment is about, for its smoke variant's tiny teacher."""
    path = (c.teacher.path or "").lower()
    if "xlm" in path:
        return "xlm-roberta"
    if "roberta" in path:
        return "roberta"
    return "bert"


# The paper's teachers (PAPER.md, "Settings"): where each comes from, the layer distilled
# (1-based) and the relation heads. Large teachers' layers come from secondary sources; the
# teacher-layer ablation (experiments/ablations.py) sweeps them.
TEACHERS = {
    "bert-base-uncased": dict(
        hub_id="google-bert/bert-base-uncased", hidden=768, layers=12, layer=12, relation_heads=48
    ),
    "bert-large-uncased": dict(
        hub_id="google-bert/bert-large-uncased", hidden=1024, layers=24, layer=21, relation_heads=64
    ),
    "roberta-large": dict(
        hub_id="FacebookAI/roberta-large", hidden=1024, layers=24, layer=19, relation_heads=64
    ),
    "xlm-roberta-large": dict(
        hub_id="FacebookAI/xlm-roberta-large", hidden=1024, layers=24, layer=19, relation_heads=64
    ),
    "xlm-roberta-base": dict(
        hub_id="FacebookAI/xlm-roberta-base", hidden=768, layers=12, layer=12, relation_heads=48
    ),
}

# Corpora per teacher family. English Wikipedia comes through TFDS; BookCorpus, the rest of
# RoBERTa's 160 GB and CC-100 are not in the TFDS catalogue and are read as local text files
# (CC-100 is distributed as text: one paragraph per line, documents separated by blank lines).
CORPORA = {
    "bert": dict(
        tfds_sources="wikipedia/20230601.en:text",
        text_files="corpora/bookcorpus/*.txt",
        text_format="paragraph",
    ),
    "roberta": dict(
        tfds_sources="wikipedia/20230601.en:text",
        text_files="corpora/roberta/*.txt",
        text_format="paragraph",
    ),
    "xlm-roberta": dict(tfds_sources="", text_files="corpora/cc100/*.txt", text_format="paragraph"),
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
    for field, value in CORPORA[family_of_experiment(c)].items():
        c.data[field] = value
    c.data.eval_every_kth_document = 1000  # 0.1% of documents held out
    c.dtype = "bfloat16"  # accelerator runs; parameters and the relation softmax stay float32
    if a.smoke:
        c = apply_smoke(c)
        c.dtype = "float32"
    return c
