r"""MLQA, zero-shot cross-lingual extractive QA: the paper's MLQA column for multilingual
students.

What it reproduces: the MLQA test F1 of the multilingual rows (docs/method.md, "Results": 64.9
for XLM-R-large -> 12x384, 59.0 for -> 6x384) with the protocol of the released multilingual
MiniLM (after Lewis et al., 2019): fine-tune the whole student with a span head on SQuAD 1.1
(English), select on MLQA's English dev set (F1), report test EM/F1 per language (ar, de, en,
es, hi, vi, zh; context and question in the same language) with MLQA's own metric, and the
mean over the 7.

Launch (after preparing the data once, below):
    python -m minilm_jax.finetune --config experiments/mlqa.py \
        --workdir runs/mlqa --config.student_path=runs/distill_xlmr/hf_student

Data preparation (once, with network access; the error of a missing dataset prints it):
    for name in squad/v1.1 mlqa/ar mlqa/de mlqa/en mlqa/es mlqa/hi mlqa/vi mlqa/zh; do \
        python -c "import tensorflow_datasets as tfds; \
        tfds.builder('$name').download_and_prepare(file_format='array_record')"; done
(add data_dir='DIR' and pass --config.data_dir=DIR to keep it elsewhere; the official
train-v1.1.json works too: --config.train_file=data/train-v1.1.json.)

Arguments after the colon: ``smoke`` shrinks it to a CPU run of seconds with the cached tiny
random student of ``family=bert|roberta|xlm-roberta`` (default bert, whose compiled programs
the SQuAD smoke runs share; the tests run it on TFDS mock data with family=xlm-roberta).

Where each number comes from:
  * no source gives the MLQA fine-tuning settings of the multilingual MiniLM: its README says
    only "SQuAD 1.1 as training data and MLQA English development data for early stopping".
    We take the same README's SQuAD command (the closest published MiniLM QA recipe): learning
    rate 4e-5, max length 384, doc stride 128, batch 48 (12 per GPU x 4), and the defaults of
    transformers' run_squad.py that it leaves in place (no warmup, no weight decay, Adam eps
    1e-8, clipping at 1.0, question <= 64 tokens, n-best 20, answers <= 30 tokens).
  * epochs (2, 3, 4): "early stopping" on the English dev set, as a choice among runs of 2, 3
    and 4 epochs (the README's SQuAD 2.0 recipe trains 4); each run has its own linear decay,
    so this is not the same as stopping one 4-epoch run early.
  * seeds: 3, as the other tasks ("several seeds", paper).
Hardware/runtime: one accelerator or a pod slice; not yet measured at full size (SQuAD 1.1
train 87,599 questions; MLQA dev 1,148 (en) and test 4,517-11,590 questions per language).
"""

from minilm_jax import configs, mlqa, tasks


def get_config(arg=None):
    a = configs.parse_arg(arg, smoke=False, family="bert")
    c = configs.finetune_base_config()
    c.task = "mlqa"
    tasks.add_qa_fields(c)  # the SQuAD recipe: windows 384/128, batch 48, no warmup
    c.languages = mlqa.LANGUAGES  # test languages (selection: mlqa/en validation)
    c.sweep.learning_rates = (4e-5,)
    c.sweep.epochs = (2, 3, 4)
    c.sweep.seeds = (0, 1, 2)
    if a.smoke:
        tasks.apply_qa_smoke(c, a.family)
        c.max_eval_examples = 16  # per evaluation set (8 of them)
    return c
