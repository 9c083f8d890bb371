r"""GLUE fine-tuning of a distilled student: the paper's evaluation protocol for one task.

What it reproduces: the GLUE dev columns of the paper's results (MNLI-m for the students of
PAPER.md; the same protocol for QNLI, QQP, RTE, SST-2, MRPC, CoLA, STS-B): fine-tune the whole
student with a task head, sweep learning rate x epochs x seeds, report dev accuracy (MCC for
CoLA, Pearson/Spearman for STS-B, F1 and accuracy for MRPC/QQP, matched and mismatched
accuracy for MNLI), the mean over seeds and the best run.

Launch (after `tfds build glue/rte --file_format=array_record`, once per task):
    python -m minilm_jax.finetune --config experiments/glue.py:task=rte \
        --workdir runs/glue_rte --config.student_path=runs/distill/hf_student

Arguments after the colon: task=NAME (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte);
``smoke`` shrinks it to a CPU run of under a minute on TFDS mock data with a tiny random student of
``family=bert|roberta|xlm-roberta`` written into the workdir (the tests run that).

Grid: learning rates (3e-5, 6e-5, 1e-4) for small (H384) students, or with ``size=base``
(H768 students) the paper's 1e-5..4e-5: (1e-5, 2e-5, 3e-5, 4e-5); 3 or 5 epochs for the large tasks (MNLI, QQP, QNLI, SST-2) and 5 or 10 for the
small ones, 3 seeds: 18 runs (24 with size=base). Override with e.g. ``--config.sweep.learning_rates='(5e-5,)'``.
Hardware/runtime: sized for one accelerator or a pod slice (batch 32, length 128); the
full-size runtime has not been measured yet. The smoke run takes well under a minute on a
2-core CPU, most of it compiling.
"""

import ml_collections

from minilm_jax import configs

LARGE_TASKS = ("mnli", "qqp", "qnli", "sst2")
# PAPER.md: 1e-5..4e-5 for base-size (H768) students, higher for small (H384) ones.
LEARNING_RATES = {"base": (1e-5, 2e-5, 3e-5, 4e-5), "small": (3e-5, 6e-5, 1e-4)}


def get_config(arg=None):
    a = configs.parse_arg(arg, task="sst2", smoke=False, family="bert", size="small")
    if a.size not in LEARNING_RATES:
        raise ValueError(f"size={a.size!r}; allowed: {sorted(LEARNING_RATES)}")
    c = ml_collections.ConfigDict()
    c.task = a.task  # cola | sst2 | mrpc | qqp | stsb | mnli | qnli | rte
    c.student_path = ""  # Hugging Face folder of the student (e.g. DISTILL_WORKDIR/hf_student)
    c.tiny_student_family = ""  # smoke runs: write a tiny random student of this family instead
    c.data_dir = ""  # TFDS data_dir holding glue/<task> ("" = TFDS default, ~/tensorflow_datasets)
    c.tfds_mock_examples = 0  # > 0: read TFDS under tfds.testing.mock_data (random text; tests)
    c.max_train_examples = 0  # first N training examples only (0 = all)
    c.max_eval_examples = 0  # first N dev examples only (0 = all)

    c.max_len = 128  # tokens per example after longest-first truncation of the pair
    c.length_buckets = (64,)  # shorter padded lengths besides max_len (one compile each)
    c.batch_size = 32  # global training batch, split over every device
    c.eval_batch_size = 128  # global dev batch
    c.head = "auto"  # "auto" (pooler for BERT, <s> head for RoBERTa/XLM-R) | "pooler" | "cls"
    c.dropout = 0.1  # encoder and head dropout while fine-tuning
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)

    c.warmup_fraction = 0.1  # linear warmup over this fraction of the steps, then linear decay
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-6
    c.weight_decay = 0.01  # AdamW; not applied to biases and LayerNorm parameters
    c.grad_clip_norm = 1.0  # global-norm clipping (0 = off)
    c.log_every = 100  # steps between training-loss lines

    c.sweep = ml_collections.ConfigDict()
    c.sweep.learning_rates = LEARNING_RATES[a.size]  # peak learning rates
    c.sweep.epochs = (3, 5) if a.task.lower() in LARGE_TASKS else (5, 10)  # passes over train
    c.sweep.seeds = (0, 1, 2)  # head init, dropout and data order of each run

    c.distributed = configs.base_config().distributed  # multi-host settings, as for distillation

    if a.smoke:
        c.tiny_student_family = a.family
        c.tfds_mock_examples = 48
        c.max_len = 32
        c.length_buckets = (16,)
        c.batch_size = 16
        c.eval_batch_size = 16
        c.sweep.learning_rates = (1e-3, 3e-4)
        c.sweep.epochs = (1,)
        c.sweep.seeds = (0,)
        c.log_every = 1
    return c
