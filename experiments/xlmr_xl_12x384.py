r"""MiniLMv2 XLM-R XL (3.5B) -> 12x384 multilingual student (not in the paper).

What it does: the paper's multilingual L12xH384 recipe (xlmr_large_12x384.py) with the
3.5B-parameter facebook/xlm-roberta-xl (36 x 2560, 32 heads, pre-LayerNorm) as the teacher.
The student is of the teacher's family: a pre-LayerNorm XLM-R XL-architecture 12 x 384, 12
heads, FFN 4 x 384, exported as an `xlm-roberta-xl` model. `--config.student.family=xlm-roberta`
gives the paper's post-LayerNorm XLM-R student shape instead (same tokenizer, positions and
token types; docs/models.md).

Teacher layer and relation heads: no paper gives them for XLM-R XL; chosen by analogy with
the paper's XLM-R-large (layer 19 of 24, 64 relation heads): layer 28 of 36 (0.78 of the
depth, as 19/24 = 0.79) and 64 relation heads (they divide 2560 and 384: d_r 40 for the
teacher, 6 for the student, as with XLM-R-large). Check with the teacher-layer ablation
(36 runs; --print_only prints their commands for a cluster scheduler):
    python -m minilm_jax.sweep --config \
        experiments/ablations.py:ablation=teacher_layer,teacher=xlm-roberta-xl \
        --workdir runs/ablations/xlmr_xl_layer --print_only

Recipe otherwise the paper's: sequence length 512, batch 1024, 400k steps, Adam (0.9, 0.999,
eps 1e-6), peak lr 6e-4, 4k warmup then linear decay, weight decay 0.01, dropout 0.1, random
init; bfloat16 compute with float32 parameters.

Scale: the run keeps the teacher's embeddings and layers 1..28 (2.8B parameters, 11.4 GB in
float32) and runs them on every step. That does not fit one accelerator next to the
activations of the paper's batch: the teacher has to be sharded over devices and kept in
bfloat16 (the pod-scale work, issue 10); check the fit on a slice with the compile-only
command before booking it.

Data: CC-100 as local text files in corpora/cc100/*.txt (the distributed format: one
paragraph per line, documents separated by blank lines), as XLM-R.

Teacher: download once on a machine with network access, e.g.
    hf download facebook/xlm-roberta-xl --local-dir teachers/xlm-roberta-xl
(or set MINILM_TEACHERS to the folder holding it; --config.teacher.path=DIR also works).

Launch, TPU pod slice (every worker runs the same command; JAX finds its peers):
    gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
      "cd minilm_jax && python -m minilm_jax.main --config experiments/xlmr_xl_12x384.py \
       --workdir /shared/runs/xlmr_xl_12x384 --config.distributed.auto=True"
Not yet run at full scale with this codebase.

Smoke test (tiny random pre-LayerNorm XLM-R XL teacher, a few CPU steps):
    python -m minilm_jax.main --config experiments/xlmr_xl_12x384.py:smoke \
        --workdir /tmp/xlmr_xl_12x384
"""

from minilm_jax import configs


def get_config(arg=None):
    return configs.paper_experiment("xlm-roberta-xl", "12x384", arg)
