r"""MiniLMv2 bert-base-uncased -> 6x384: the paper's L6xH384 student of BERT-base (12x768).

Reproduces: MiniLMv2 (Wang et al., Findings of ACL 2021), the released L6xH384 student
distilled from BERT-base (12x768), layer 12, 48 relation heads. Paper numbers (dev sets,
after fine-tuning): 22M params, 5.3x speedup: MNLI-m 82.8, SQuAD 2.0 F1 72.9.

Recipe: Q-Q + K-K + V-V relations (48 relation heads) of the teacher's layer 12 (its last)
into the student's last layer; student 6x384 with 12 attention heads and FFN 4 x 384, random
init; sequence length 512, batch 1024, 400k steps, Adam (0.9, 0.999, eps 1e-6), peak lr
6e-4, 4k warmup then linear decay, weight decay 0.01, dropout 0.1; bfloat16 compute with
float32 parameters.

Data: English Wikipedia (TFDS wikipedia/20230601.en, prepared with
`tfds build wikipedia/20230601.en --file_format=array_record`) + BookCorpus as local text
files in corpora/bookcorpus/*.txt (blank-line separated documents, e.g. one book or
chapter each, so packed sequences span sentences; BookCorpus is not in TFDS).

Teacher: download once on a machine with network access, e.g.
    hf download google-bert/bert-base-uncased --local-dir teachers/bert-base-uncased
(or set MINILM_TEACHERS to the folder holding it; --config.teacher.path=DIR also works).

Launch, one 8-GPU host:
    python -m minilm_jax.main --config experiments/bert_base_6x384.py --workdir runs/bert_base_6x384
Launch, TPU pod slice (every worker runs the same command; JAX finds its peers):
    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
      "cd minilm_jax && python -m minilm_jax.main --config experiments/bert_base_6x384.py \
       --workdir /shared/runs/bert_base_6x384 --config.distributed.auto=True"
Hardware the paper's scale wants: v3-32 TPU slice or one 8-GPU host;
raise --config.grad_accum_steps when the per-device batch does not fit. Not yet run at full scale with this codebase (see README).

Smoke test (tiny random teacher of the same family, a few CPU steps):
    python -m minilm_jax.main --config experiments/bert_base_6x384.py:smoke --workdir /tmp/bert_base_6x384
"""

from minilm_jax import configs


def get_config(arg=None):
    return configs.paper_experiment("bert-base-uncased", "6x384", arg)
