r"""SQuAD 2.0 (or 1.1) fine-tuning of a distilled student: the paper's SQuAD 2.0 column.

What it reproduces: the SQuAD 2.0 dev F1 of every English row of the paper (docs/method.md,
"Results"; e.g. 72.9 for the BERT-base -> 6x384 student) with the recipe of the released
MiniLM checkpoints: fine-tune the whole student with a span head on the train split, sweep
learning rates x seeds, report dev EM/F1 with the official metric (evaluate-v2.0.py),
its HasAns/NoAns split, and the best null threshold found from the null-score differences.
``version=1`` is SQuAD 1.1 (EM/F1 of evaluate-v1.1.py; no unanswerable questions).

Launch (after preparing the data once, below):
    python -m minilm_jax.finetune --config experiments/squad.py:version=2 \
        --workdir runs/squad2 --config.student_path=runs/distill/hf_student
With the official JSON files instead of TFDS:
    ... --config.train_file=data/train-v2.0.json --config.eval_file=data/dev-v2.0.json

Data preparation (once, with network access; the error of a missing dataset prints it):
    python -c "import tensorflow_datasets as tfds; \
        tfds.builder('squad/v2.0').download_and_prepare(file_format='array_record')"
(``squad/v1.1`` for version=1; add data_dir='DIR' and pass --config.data_dir=DIR to keep it
elsewhere.)

Arguments after the colon: version=2|1; size=small|base picks the learning-rate grid;
``smoke`` shrinks it to a CPU run of seconds with the cached tiny random student of
``family=bert|roberta|xlm-roberta`` (the tests run it on TFDS mock data).

Where each number comes from:
  * learning rate 4e-5, 4 epochs, max length 384, doc stride 128, batch 48: the MiniLM
    README's SQuAD 2.0 command for the released MiniLM-L12xH384 (microsoft/unilm,
    minilm/README.md: --learning_rate 4e-5 --num_train_epochs 4 --max_seq_length 384
    --doc_stride 128 --per_gpu_train_batch_size=12 on 4 GPUs = 48).
  * the grid around it: size=small (H384 students, the README's size) (3e-5, 4e-5, 6e-5): the
    recipe's rate, one below it and one above, since the paper fine-tunes small students at
    higher rates than base ones; size=base (H768) (2e-5, 3e-5, 4e-5): the top of the paper's
    base-size range (1e-5 to 4e-5), which ends at the recipe's rate. Seeds: 3 ("several
    seeds", paper). Epochs stay at the recipe's 4.
  * no warmup, no weight decay, Adam eps 1e-8, clipping at 1.0, question at most 64 tokens,
    n-best 20, answers at most 30 tokens, null threshold 0.0: the defaults of transformers'
    (legacy) run_squad.py, which the README's command leaves in place (it passes no
    --warmup_steps or --weight_decay). Dropout 0.1: the checkpoints' own rate.
  * SQuAD 1.1: no source gives MiniLM's 1.1 recipe; the 2.0 recipe is used as is.
Hardware/runtime: one accelerator or a pod slice; not yet measured at full size (SQuAD 2.0
train has 130,319 questions, ~132k windows at 384; dev 11,873 questions).
"""

from minilm_jax import configs, tasks

VERSIONS = {"1": "squad1", "1.1": "squad1", "2": "squad2", "2.0": "squad2"}
LEARNING_RATES = {"small": (3e-5, 4e-5, 6e-5), "base": (2e-5, 3e-5, 4e-5)}


def get_config(arg=None):
    a = configs.parse_arg(arg, version="2", size="small", smoke=False, family="bert")
    if a.version not in VERSIONS:
        raise ValueError(f"version={a.version!r}; allowed: 1, 2")
    if a.size not in LEARNING_RATES:
        raise ValueError(f"size={a.size!r}; allowed: {sorted(LEARNING_RATES)}")
    c = configs.finetune_base_config()
    c.task = VERSIONS[a.version]  # squad2 | squad1
    tasks.add_qa_fields(c)  # windows 384/128, question <= 64, n-best 20, batch 48, no warmup
    c.eval_file = ""  # SQuAD-format JSON dev file (e.g. dev-v2.0.json); "" = TFDS
    if c.task == "squad2":
        c.null_threshold = 0.0  # answer "" when null score - best span score exceeds this
    c.sweep.learning_rates = LEARNING_RATES[a.size]
    c.sweep.epochs = (4,)
    c.sweep.seeds = (0, 1, 2)
    if a.smoke:
        tasks.apply_qa_smoke(c, a.family)
    return c
