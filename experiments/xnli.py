r"""XNLI, zero-shot cross-lingual: the paper's XNLI column for multilingual students.

What it reproduces: the XNLI test accuracy of the multilingual rows (docs/method.md,
"Results": 72.9 for XLM-R-large -> 12x384, 69.3 for -> 6x384) with the protocol of the
released multilingual MiniLM: fine-tune the whole student with a classification head on
English MNLI only, select on XNLI's validation set of all 15 languages joined, report test
accuracy per language and the mean over the 15.

Launch (after preparing the data once, below):
    python -m minilm_jax.finetune --config experiments/xnli.py \
        --workdir runs/xnli --config.student_path=runs/distill_xlmr/hf_student

Data preparation (once, with network access; the error of a missing dataset prints it):
    for name in glue/mnli xnli; do python -c "import tensorflow_datasets as tfds; \
        tfds.builder('$name').download_and_prepare(file_format='array_record')"; done
(add data_dir='DIR' and pass --config.data_dir=DIR to keep it elsewhere.)

Arguments after the colon: ``smoke`` shrinks it to a CPU run of seconds with the cached tiny
random student of ``family=bert|roberta|xlm-roberta`` (default bert; the tests run it on TFDS
mock data).

Where each number comes from:
  * learning rate 5e-5, 5 epochs, max length 128, batch 128, weight decay 0.001: the MiniLM
    README's XNLI command for the released Multilingual-MiniLM-L12xH384 (microsoft/unilm,
    minilm/README.md: --learning_rate 5e-5 --num_train_epochs 5 --max_seq_length 128
    --per_gpu_train_batch_size 128 --weight_decay 0.001 --warmup_steps 500; one process, so
    128 is the batch if it ran on one GPU, which the command does not say).
  * warmup: the README's 500 steps, as the fraction of this config's steps that it is:
    ceil(392,702 MNLI training pairs / 128) * 5 epochs = 15,340 steps, 500 / 15,340 = 3.26%.
    It stays 3.26% if max_train_examples, the batch or the epochs change (then it is no longer
    500 steps).
  * selection: the README (after Conneau et al., 2019) selects the best checkpoint on the joint
    dev set, evaluating a checkpoint every 1,500 steps (--eval_all_checkpoints); here each run
    is evaluated once, at its end, and the summary ranks runs (seeds) by joint dev accuracy:
    the best single run and the best mean over seeds.
  * seeds: 3, as the other tasks ("several seeds", paper). Adam eps 1e-8, clipping at 1.0,
    dropout 0.1: run_xnli.py's defaults. Head: "auto" (the <s> head of RobertaClassification-
    Head for XLM-R students; the README's BERT-architecture MiniLM used BERT's pooler head).
Hardware/runtime: one accelerator or a pod slice; not yet measured at full size (MNLI train
392,702 pairs; XNLI validation 2,490 x 15 and test 5,010 x 15 pairs).
"""

import math

from minilm_jax import configs, xnli

MNLI_TRAIN_PAIRS = 392_702  # glue/mnli train, the README's English training set
README_WARMUP_STEPS = 500


def get_config(arg=None):
    a = configs.parse_arg(arg, smoke=False, family="bert")
    c = configs.finetune_base_config()
    c.task = "xnli"
    c.languages = xnli.LANGUAGES  # evaluated languages (selection: their joint validation set)
    c.max_len = 128
    c.length_buckets = (64,)
    c.batch_size = 128
    c.eval_batch_size = 256
    c.weight_decay = 0.001
    c.sweep.learning_rates = (5e-5,)
    c.sweep.epochs = (5,)
    c.sweep.seeds = (0, 1, 2)
    steps = math.ceil(MNLI_TRAIN_PAIRS / c.batch_size) * c.sweep.epochs[0]
    c.warmup_fraction = README_WARMUP_STEPS / steps  # 500 of 15,340 steps
    if a.smoke:
        configs.apply_finetune_smoke(c, a.family)
        c.length_buckets = ()  # one padded length: one compile
        c.max_eval_examples = 8  # x 15 languages per split
        c.sweep.learning_rates = (1e-3,)
    return c
