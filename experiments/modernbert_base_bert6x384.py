r"""MiniLMv2 ModernBERT-base -> 6x384 BERT student (not in the paper).

What it does: distils ModernBERT-base (answerdotai/ModernBERT-base, 22 x 768) into a
BERT-architecture student (`student.family="bert"`: post-LayerNorm, absolute positions,
GELU feed-forward 4 x hidden, 12 heads), the shape of the paper's L6xH384 students. Relations
only need the student to read the teacher's token ids: the student gets ModernBERT's
vocabulary (its embedding table has the teacher's 50368 rows) and pad id, and BERT's own
conventions otherwise: 512 absolute positions, 2 token types, LayerNorm epsilon 1e-12
(docs/models.md, "Students"). It is exported as a `bert` model with ModernBERT's tokenizer,
so it loads wherever BERT does (transformers' AutoModel, sentence-transformers, ONNX
exporters) and is fine-tuned like a BERT student (`[CLS] a [SEP] b [SEP]`, types 0/1).

Teacher layer and relation heads as modernbert_base_6x384.py (chosen by analogy, not from a
paper): layer 19 of 22 (a global-attention layer, 0.86 of the depth), 48 relation heads;
check them with the teacher-layer ablation:
    python -m minilm_jax.sweep --config \
        experiments/ablations.py:ablation=teacher_layer,teacher=modernbert-base \
        --workdir runs/ablations/modernbert_layer --config.student.family=bert

Recipe: the paper's (sequence length 512, batch 1024, 400k steps, Adam (0.9, 0.999, eps
1e-6), peak lr 6e-4, 4k warmup then linear decay, weight decay 0.01, dropout 0.1, random
init; bfloat16 compute with float32 parameters).

Data: English Wikipedia (TFDS wikipedia/20230601.en) + English web text in
corpora/roberta/*.txt, as modernbert_base_6x384.py.

Teacher: download once on a machine with network access, e.g.
    hf download answerdotai/ModernBERT-base --local-dir teachers/modernbert-base
(or set MINILM_TEACHERS to the folder holding it; --config.teacher.path=DIR also works).

Launch, one 8-GPU host:
    python -m minilm_jax.main --config experiments/modernbert_base_bert6x384.py \
        --workdir runs/modernbert_base_bert6x384
Not yet run at full scale with this codebase.

Smoke test (tiny random ModernBERT teacher -> tiny BERT student, a few CPU steps):
    python -m minilm_jax.main --config experiments/modernbert_base_bert6x384.py:smoke \
        --workdir /tmp/modernbert_base_bert6x384
"""

from minilm_jax import configs


def get_config(arg=None):
    c = configs.paper_experiment("modernbert-base", "6x384", arg)
    c.student.family = "bert"
    return c
