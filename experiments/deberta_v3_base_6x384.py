r"""MiniLMv2 DeBERTa-v3-base -> 6x384 DeBERTa student (not in the paper).

What it does: the MiniLMv2 recipe on microsoft/deberta-v3-base (12 x 768, 12 heads,
disentangled attention with 256 log-bucketed relative positions, no absolute positions).
The student is a DeBERTa-v3 too: 6 x 384, 12 heads, FFN 4 x 384, the teacher's relative
layout (buckets, shared keys, LayerNormed relative table); exported as a `deberta-v2` model.
`--config.student.family=bert` gives a BERT-architecture student instead (docs/models.md).

Relations: Q-Q + K-K + V-V of the teacher's **content** query/key/value projections; the
relative-position terms of DeBERTa's attention are not in the relation (docs/models.md).

Teacher layer and relation heads: no paper gives them for DeBERTa; chosen by analogy with
the paper's 12-layer teacher (BERT-base): its last layer (12) and 48 relation heads (d_r 16
for the teacher, 8 for the student). Check with the teacher-layer ablation:
    python -m minilm_jax.sweep --config \
        experiments/ablations.py:ablation=teacher_layer,teacher=deberta-v3-base \
        --workdir runs/ablations/deberta_layer

Recipe otherwise the paper's: sequence length 512, batch 1024, 400k steps, Adam (0.9, 0.999,
eps 1e-6), peak lr 6e-4, 4k warmup then linear decay, weight decay 0.01, dropout 0.1, random
init; bfloat16 compute with float32 parameters.

Data: DeBERTa-v3 was pretrained on RoBERTa's 160 GB: English Wikipedia (TFDS
wikipedia/20230601.en) + the rest of it (BookCorpus, CC-News, OpenWebText, Stories) as local
text files in corpora/roberta/*.txt (blank-line separated documents).

Teacher: download once on a machine with network access, then write its tokenizer.json
(the hub folder ships only spm.model; converting needs sentencepiece and protobuf):
    hf download microsoft/deberta-v3-base --local-dir teachers/deberta-v3-base
    python -c "from transformers import AutoTokenizer as T; \
        T.from_pretrained('teachers/deberta-v3-base').save_pretrained('teachers/deberta-v3-base')"
(or set MINILM_TEACHERS to the folder holding it; --config.teacher.path=DIR also works).

Launch, one 8-GPU host:
    python -m minilm_jax.main --config experiments/deberta_v3_base_6x384.py \
        --workdir runs/deberta_v3_base_6x384
Launch, TPU pod slice (every worker runs the same command; JAX finds its peers):
    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
      "cd minilm_jax && python -m minilm_jax.main --config experiments/deberta_v3_base_6x384.py \
       --workdir /shared/runs/deberta_v3_base_6x384 --config.distributed.auto=True"
Not yet run at full scale with this codebase.

Smoke test (tiny random DeBERTa-v3-layout teacher, a few CPU steps):
    python -m minilm_jax.main --config experiments/deberta_v3_base_6x384.py:smoke \
        --workdir /tmp/deberta_v3_base_6x384
"""

from minilm_jax import configs


def get_config(arg=None):
    return configs.paper_experiment("deberta-v3-base", "6x384", arg)
