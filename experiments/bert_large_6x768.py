r"""MiniLMv2 bert-large-uncased -> 6x768: the paper's L6xH768 student of BERT-large (24x1024).

Reproduces: MiniLMv2 (Wang et al., Findings of ACL 2021), the released L6xH768 student
distilled from BERT-large (24x1024), layer 21, 64 relation heads. Paper numbers (dev sets,
after fine-tuning): 66M params, 2.0x speedup: MNLI-m 85.0, SQuAD 2.0 F1 77.7.

Recipe: Q-Q + K-K + V-V relations (64 relation heads) of the teacher's layer 21 into the
student's last layer; student 6x768 with 12 attention heads and FFN 4 x 768, random init;
sequence length 512, batch 1024, 400k steps, Adam (0.9, 0.999, eps 1e-6), peak lr 6e-4, 4k
warmup then linear decay, weight decay 0.01, dropout 0.1; bfloat16 compute with float32
parameters.

Data: English Wikipedia (TFDS wikipedia/20230601.en, prepared with
`tfds build wikipedia/20230601.en --file_format=array_record`) + BookCorpus as local text
files in corpora/bookcorpus/*.txt (blank-line separated documents, e.g. one book or
chapter each, so packed sequences span sentences; BookCorpus is not in TFDS).

Teacher: download once on a machine with network access, e.g.
    hf download google-bert/bert-large-uncased --local-dir teachers/bert-large-uncased
(or set MINILM_TEACHERS to the folder holding it; --config.teacher.path=DIR also works).

Launch, one 8-GPU host:
    python -m minilm_jax.main --config experiments/bert_large_6x768.py --workdir runs/bert_large_6x768
Launch, TPU pod slice (every worker runs the same command; JAX finds its peers):
    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
      "cd minilm_jax && python -m minilm_jax.main --config experiments/bert_large_6x768.py \
       --workdir /shared/runs/bert_large_6x768 --config.distributed.auto=True"
Hardware the paper's scale wants: v3-64 TPU slice or two 8-GPU hosts;
raise --config.grad_accum_steps when the per-device batch does not fit. Not yet run at full scale with this codebase (see README).

Smoke test (tiny random teacher of the same family, a few CPU steps):
    python -m minilm_jax.main --config experiments/bert_large_6x768.py:smoke --workdir /tmp/bert_large_6x768
"""

from minilm_jax import configs


def get_config(arg=None):
    return configs.paper_experiment("bert-large-uncased", "6x768", arg)
