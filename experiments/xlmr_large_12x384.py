r"""MiniLMv2 xlm-roberta-large -> 12x384: the paper's L12xH384 student of XLM-R-large (24x1024).

Reproduces: MiniLMv2 (Wang et al., Findings of ACL 2021), the released L12xH384 student
distilled from XLM-R-large (24x1024), layer 19, 64 relation heads. Paper numbers (dev sets,
after fine-tuning): multilingual: XNLI 72.9, MLQA F1 64.9 (zero-shot cross-lingual test).

Recipe: Q-Q + K-K + V-V relations (64 relation heads) of the teacher's layer 19 into the
student's last layer; student 12x384 with 12 attention heads and FFN 4 x 384, random init;
sequence length 512, batch 1024, 400k steps, Adam (0.9, 0.999, eps 1e-6), peak lr 6e-4, 4k
warmup then linear decay, weight decay 0.01, dropout 0.1; bfloat16 compute with float32
parameters.

Data: CC-100 as local text files in corpora/cc100/*.txt (the distributed format: one paragraph
per line, documents separated by blank lines).

Teacher: download once on a machine with network access, e.g.
    hf download FacebookAI/xlm-roberta-large --local-dir teachers/xlm-roberta-large
(or set MINILM_TEACHERS to the folder holding it; --config.teacher.path=DIR also works).

Launch, one 8-GPU host:
    python -m minilm_jax.main --config experiments/xlmr_large_12x384.py --workdir runs/xlmr_large_12x384
Launch, TPU pod slice (every worker runs the same command; JAX finds its peers):
    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
      "cd minilm_jax && python -m minilm_jax.main --config experiments/xlmr_large_12x384.py \
       --workdir /shared/runs/xlmr_large_12x384 --config.distributed.auto=True"
Hardware the paper's scale wants: v3-64 TPU slice or two 8-GPU hosts;
raise --config.grad_accum_steps when the per-device batch does not fit. Not yet run at full scale with this codebase (see README).

Smoke test (tiny random teacher of the same family, a few CPU steps):
    python -m minilm_jax.main --config experiments/xlmr_large_12x384.py:smoke --workdir /tmp/xlmr_large_12x384
"""

from minilm_jax import configs


def get_config(arg=None):
    return configs.paper_experiment("xlm-roberta-large", "12x384", arg)
