"""``python -m minilm_jax.bench step``: one distillation step, timed, with its model FLOPs.

Default case (CPU): a BERT-base-shaped teacher (12x768, random weights) distilled at layer 12
into a 6x384 student, batch 8, length 128, 48 relation heads, float32. It prints one JSON
object per case with the step time, tokens/s, model FLOPs per step and the fraction of this
machine's measured dense-matmul throughput the step achieves (for a GPU: MFU against
``--peak_tflops``).

Model FLOPs count the matmuls the step needs (2 per multiply-add): the teacher's forward up
to the q/k/v of layer L, the student's forward and backward up to the q/k/v of its last layer
(backward = 2x forward), and the relation logits of both models. Elementwise work (GELU, LayerNorm, softmax) is not counted,
as usual for MFU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minilm_jax import parallel, relations, steps, train
from minilm_jax.configs import base_config
from minilm_jax.models.transformer import Transformer, TransformerConfig, student_config


def encoder_forward_flops(
    cfg: TransformerConfig, num_layers: int, batch: int, length: int
) -> float:
    """Matmul FLOPs of ``num_layers`` encoder layers on ``batch x length`` tokens."""
    d, f, t = cfg.hidden_size, cfg.intermediate_size, length
    per_token = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * t * d  # projections + FFN + QK^T and AV
    return float(num_layers * batch * t * per_token)


def relation_flops(widths: tuple[int, ...], num_pairs: int, batch: int, length: int) -> float:
    """X·Yᵀ for every pair, for the teacher and the student (all relation heads together)."""
    return float(sum(2 * batch * length * length * w * num_pairs for w in widths))


def qkv_flops(cfg: TransformerConfig, batch: int, length: int) -> float:
    """The q/k/v projections of one layer: all the distillation reads of its top layer."""
    return float(batch * length * 2 * 3 * cfg.hidden_size * cfg.hidden_size)


def step_flops(teacher_cfg, student_cfg, layer, batch, length, num_pairs) -> float:
    """Only what the step computes: of the teacher's layer L and the student's last layer,
    only q/k/v feed the loss (XLA drops their attention and feed-forward), so those are not
    counted; the student's backward is counted as twice its forward."""
    teacher = encoder_forward_flops(teacher_cfg, layer - 1, batch, length)
    teacher += qkv_flops(teacher_cfg, batch, length)
    student_fwd = encoder_forward_flops(student_cfg, student_cfg.num_layers - 1, batch, length)
    student = 3 * (student_fwd + qkv_flops(student_cfg, batch, length))
    rel = relation_flops((teacher_cfg.hidden_size,), num_pairs, batch, length)
    rel += 3 * relation_flops((student_cfg.hidden_size,), num_pairs, batch, length)
    return teacher + student + rel


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_throughput(dtype, repeats: int) -> dict:
    """Best sustained FLOP/s over square and model-shaped matmuls in ``dtype``."""
    best = {"flops_per_s": 0.0}
    for m, k, n in ((2048, 2048, 2048), (1024, 768, 3072), (1024, 3072, 768), (4096, 1024, 1024)):
        a = jnp.asarray(np.random.default_rng(0).standard_normal((m, k)), dtype)
        b = jnp.asarray(np.random.default_rng(1).standard_normal((k, n)), dtype)
        f = jax.jit(jnp.matmul)
        jax.block_until_ready(f(a, b))
        seconds = median_time(lambda: f(a, b), repeats)
        rate = 2 * m * k * n / seconds
        if rate > best["flops_per_s"]:
            best = {"flops_per_s": rate, "shape": [m, k, n]}
    return best


def bench_case(args) -> dict:
    dtype = jnp.dtype(args.dtype)
    teacher_cfg = TransformerConfig(
        family="bert",
        vocab_size=30522,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        dtype=args.dtype,
    )
    student_cfg = student_config(
        args.student, teacher_cfg, hidden_dropout=args.dropout, attention_dropout=args.dropout
    )
    config = base_config()
    config.teacher.layer = args.layer
    config.distill.num_relation_heads = args.relation_heads
    config.distill.implementation = args.implementation
    config.batch_size = args.batch
    config.dtype = args.dtype
    config.total_steps, config.warmup_steps = 1000, 10

    # The trainer's own step builder: the benchmark times exactly the step training runs.
    built = train.build_step(config, teacher_cfg, student_cfg, parallel.make_mesh())
    mesh = built.mesh
    teacher = Transformer(teacher_cfg, rngs=nnx.Rngs(0))
    teacher = train.truncate_teacher(teacher, args.layer)
    student = Transformer(student_cfg, rngs=nnx.Rngs(1))
    state = parallel.place(
        steps.init_state(nnx.state(student, nnx.Param), built.tx, 0), built.state_sharding
    )
    teacher_params = parallel.place(nnx.state(teacher, nnx.Param), built.teacher_sharding)
    spec = built.spec
    schedule = built.schedule
    rng = np.random.default_rng(0)
    batch = parallel.to_global(
        {
            "input_ids": rng.integers(1000, 30000, (args.batch, args.length)).astype(np.int32),
            "attention_mask": np.ones((args.batch, args.length), np.int32),
            "token_type_ids": np.zeros((args.batch, args.length), np.int32),
        },
        mesh,
    )
    compiled = built.train_fn.lower(state, batch, schedule, teacher_params).compile()
    memory = compiled.memory_analysis()
    holder = {"state": state}

    def run():
        holder["state"], m = compiled(holder["state"], batch, schedule, teacher_params)
        return m["loss"]

    for _ in range(args.warmup):
        run()
    seconds = median_time(run, args.repeats)
    flops = step_flops(teacher_cfg, student_cfg, args.layer, args.batch, args.length, 3)
    result = {
        "case": "distill_step",
        "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "num_devices": jax.device_count(),
        "dtype": args.dtype,
        "teacher": "12x768",
        "teacher_layer": args.layer,
        "student": args.student,
        "batch": args.batch,
        "length": args.length,
        "relation_heads": args.relation_heads,
        "dropout": args.dropout,
        "step_seconds": seconds,
        "tokens_per_s": args.batch * args.length / seconds,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflops_per_s": flops / seconds / 1e12,
        "temp_memory_mb": getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory else None,
    }
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak:
        result["mfu"] = flops / seconds / peak
        result["peak_tflops"] = args.peak_tflops
    else:
        measured = matmul_throughput(dtype, args.repeats)
        peak = measured["flops_per_s"]
        result["matmul_peak_tflops_per_s"] = peak / 1e12
        result["matmul_peak_shape"] = measured["shape"]
        result["fraction_of_matmul_peak"] = flops / seconds / peak
    results = [result]
    if args.parts:
        results += bench_parts(args, spec, holder["state"].params, teacher_params, batch, peak)
    return results


def bench_parts(args, spec, params, teacher_params, batch, peak) -> list[dict]:
    """Where a step's time goes: the teacher's forward, the student's forward + backward
    (to its last q/k/v), and the relation KL with its gradient, each jitted on its own."""
    t_graph, s_graph, layer = spec.teacher_graphdef, spec.student_graphdef, spec.teacher_layer
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def teacher_qkv(tp):
        return nnx.merge(t_graph, tp)(ids, mask, num_layers=layer).qkv[layer - 1]

    def student_sq(sp):
        return sum(
            jnp.sum(jnp.square(x.astype(jnp.float32)))
            for x in nnx.merge(s_graph, sp)(ids, mask).qkv[-1]
        )

    t_qkv = jax.jit(teacher_qkv)(teacher_params)
    s_qkv = jax.jit(lambda sp: nnx.merge(s_graph, sp)(ids, mask).qkv[-1])(params)

    def relation_grad(t, s):
        return jax.grad(
            lambda s_: relations.distillation_loss(t, s_, mask, spec.relations, spec.context)[0]
        )(s)

    t_cfg, s_cfg = nnx.merge(t_graph, teacher_params).config, nnx.merge(s_graph, params).config
    b, n = args.batch, args.length
    cases = [
        (
            "teacher_forward",
            jax.jit(teacher_qkv),
            (teacher_params,),
            encoder_forward_flops(t_cfg, layer - 1, b, n) + qkv_flops(t_cfg, b, n),
        ),
        (
            "student_forward_backward",
            jax.jit(jax.grad(student_sq)),
            (params,),
            3 * (encoder_forward_flops(s_cfg, s_cfg.num_layers - 1, b, n) + qkv_flops(s_cfg, b, n)),
        ),
        (
            "relation_kl_with_grad",
            jax.jit(relation_grad),
            (t_qkv, s_qkv),
            relation_flops((t_cfg.hidden_size,), 3, b, n)
            + 3 * relation_flops((s_cfg.hidden_size,), 3, b, n),
        ),
    ]
    out = []
    for name, fn, fn_args, flops in cases:
        jax.block_until_ready(fn(*fn_args))
        seconds = median_time(lambda: fn(*fn_args), args.repeats)
        out.append(
            {
                "case": name,
                "seconds": seconds,
                "model_tflops": flops / 1e12,
                "achieved_tflops_per_s": flops / seconds / 1e12,
                "fraction_of_peak": flops / seconds / peak,
            }
        )
    return out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="python -m minilm_jax.bench step",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--student", default="6x384")
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--relation_heads", type=int, default=48)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--implementation", default="auto", choices=("auto", "direct", "blocked"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--peak_tflops",
        type=float,
        default=0.0,
        help="accelerator peak (e.g. 989 for H100 SXM bf16 dense) -> report MFU",
    )
    p.add_argument("--dropout", type=float, default=0.1, help="student dropout (paper: 0.1)")
    p.add_argument(
        "--parts",
        action="store_true",
        help="also time the teacher forward, student forward+backward and relation KL",
    )
    args = p.parse_args(argv)
    for result in bench_case(args):
        print(json.dumps(result), flush=True)
