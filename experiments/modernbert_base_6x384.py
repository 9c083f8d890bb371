r"""MiniLMv2 ModernBERT-base -> 6x384 ModernBERT student (not in the paper).

What it does: the MiniLMv2 recipe on a ModernBERT teacher (answerdotai/ModernBERT-base,
22 x 768, 12 heads; rotary positions, pre-LayerNorm, GeGLU, global attention every third
layer and a 128-token sliding window elsewhere). The student is a ModernBERT too: 6 x 384,
12 heads (head size 32), GeGLU width 576 (the teacher's 1.5 x hidden), the teacher's layer
pattern (layers 0 and 3 global), window and rotary bases; exported as a `modernbert` model.
For a BERT-architecture student of the same teacher see modernbert_base_bert6x384.py.

Relations: Q-Q + K-K + V-V of the teacher's q and k **after** the rotary embedding (what its
attention multiplies) and v; computed over all valid tokens of the sequence (docs/models.md).

Teacher layer and relation heads: no paper gives them for ModernBERT; chosen by analogy with
the paper's. Layer 19 of 22 (0.86 of the depth): the paper distils deep teachers from an
upper-middle layer (19 or 21 of 24), and 19 is the global-attention layer (layers 1, 4, 7,
..., 22 are global) nearest 0.8 of the depth. 48 relation heads, as for the paper's 768-wide
teachers (d_r 16 for the teacher, 8 for the student). Check both with the teacher-layer and
relation-head ablations:
    python -m minilm_jax.sweep --config \
        experiments/ablations.py:ablation=teacher_layer,teacher=modernbert-base \
        --workdir runs/ablations/modernbert_layer

Recipe otherwise the paper's: sequence length 512, batch 1024, 400k steps, Adam (0.9, 0.999,
eps 1e-6), peak lr 6e-4, 4k warmup then linear decay, weight decay 0.01, dropout 0.1 (the
released ModernBERT uses none; the student gets the paper's), random init; bfloat16 compute
with float32 parameters.

Data: ModernBERT's 2T-token pretraining mix is not distributed; English Wikipedia (TFDS
wikipedia/20230601.en) + English web text as local files in corpora/roberta/*.txt
(blank-line separated documents) stand in.

Teacher: download once on a machine with network access, e.g.
    hf download answerdotai/ModernBERT-base --local-dir teachers/modernbert-base
(or set MINILM_TEACHERS to the folder holding it; --config.teacher.path=DIR also works).

Launch, one 8-GPU host:
    python -m minilm_jax.main --config experiments/modernbert_base_6x384.py \
        --workdir runs/modernbert_base_6x384
Launch, TPU pod slice (every worker runs the same command; JAX finds its peers):
    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
      "cd minilm_jax && python -m minilm_jax.main --config experiments/modernbert_base_6x384.py \
       --workdir /shared/runs/modernbert_base_6x384 --config.distributed.auto=True"
Not yet run at full scale with this codebase.

Smoke test (tiny random ModernBERT teacher with a 16-token window, a few CPU steps):
    python -m minilm_jax.main --config experiments/modernbert_base_6x384.py:smoke \
        --workdir /tmp/modernbert_base_6x384
"""

from minilm_jax import configs


def get_config(arg=None):
    return configs.paper_experiment("modernbert-base", "6x384", arg)
