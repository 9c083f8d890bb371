"""Relation-loss benchmark: "direct" vs "blocked", loss + gradient w.r.t. the student q/k/v.

    python -m minilm_jax.bench relations [--sizes 8x128,8x512,1x2048,1x4096] [--repeats 3]
        [--block_size 128] [--memory_budget_gb G]

The setting of the paper's BERT-base row: R = 48 relation heads, teacher width 768, student
width 384, pairs qq/kk/vv. Per (B, T) and implementation it prints one JSON line with the
compiled temporary memory (XLA's memory analysis, so nothing is allocated to get it), the
median wall time of `jit(value_and_grad)` over `--repeats` runs after one warm-up, and which
implementation "auto" picks. A variant whose compiled memory does not fit the budget
(default: 80% of the memory available when the benchmark starts) is compiled but not run:
its line says `"measured": false` and gives the memory only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from minilm_jax import relations

NUM_RELATION_HEADS = 48
TEACHER_WIDTH = 768
STUDENT_WIDTH = 384
PAIRS = ("qq", "kk", "vv")


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    try:
        sizes = [tuple(int(n) for n in item.lower().split("x")) for item in text.split(",") if item]
    except ValueError:
        sizes = []
    if not sizes or any(len(s) != 2 or min(s) <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes={text!r}: expected BxT pairs like 8x128,1x2048")
    return sizes


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _loss_and_grad(implementation: str, block_size: int | None):
    def loss(student_qkv, teacher_qkv, attention_mask):
        return relations.minilmv2_loss(
            teacher_qkv,
            student_qkv,
            attention_mask,
            NUM_RELATION_HEADS,
            PAIRS,
            implementation=implementation,
            block_size=block_size,
        )[0]

    return jax.jit(jax.value_and_grad(loss))


def _inputs(batch: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    triple = lambda width: tuple(
        jnp.asarray(rng.standard_normal((batch, length, width), np.float32)) for _ in range(3)
    )
    # Ragged lengths: every sequence but the first loses up to a quarter of its tokens.
    lengths = length - rng.integers(0, length // 4 + 1, batch)
    lengths[0] = length
    mask = jnp.asarray(np.arange(length)[None, :] < lengths[:, None], jnp.int32)
    return triple(STUDENT_WIDTH), triple(TEACHER_WIDTH), mask


def _case(
    batch: int, length: int, implementation: str, block_size: int | None, repeats: int, budget: int
) -> dict:
    shapes = (
        tuple(jax.ShapeDtypeStruct((batch, length, STUDENT_WIDTH), jnp.float32) for _ in range(3)),
        tuple(jax.ShapeDtypeStruct((batch, length, TEACHER_WIDTH), jnp.float32) for _ in range(3)),
        jax.ShapeDtypeStruct((batch, length), jnp.int32),
    )
    start = time.perf_counter()
    compiled = _loss_and_grad(implementation, block_size).lower(*shapes).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    needed = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    record = {
        "bench": "relations",
        "B": batch,
        "T": length,
        "implementation": implementation,
        "auto_picks": relations.resolve_implementation("auto", length, block_size),
        "block_size": (block_size or relations.DEFAULT_BLOCK_SIZE)
        if implementation == "blocked"
        else None,
        "R": NUM_RELATION_HEADS,
        "teacher_width": TEACHER_WIDTH,
        "student_width": STUDENT_WIDTH,
        "pairs": list(PAIRS),
        "temp_bytes": memory.temp_size_in_bytes,
        "temp_gib": round(memory.temp_size_in_bytes / 2**30, 3),
        "compile_s": round(compile_s, 2),
        "device": jax.devices()[0].device_kind,
        "host_cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if needed > budget:
        record.update(
            measured=False,
            note=f"needs {needed / 2**30:.1f} GiB, over the "
            f"{budget / 2**30:.1f} GiB budget: memory only, time not measured",
        )
        return record
    args = _inputs(batch, length)
    loss, _ = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    record.update(
        measured=True,
        loss=float(loss),
        median_s=round(statistics.median(times), 4),
        times_s=[round(t, 4) for t in times],
    )
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minilm_jax.bench relations", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--sizes",
        type=_parse_sizes,
        default=_parse_sizes("8x128,8x512,1x2048,1x4096"),
        help="comma-separated BxT cases (default: 8x128,8x512,1x2048,1x4096)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument(
        "--block_size",
        type=int,
        default=None,
        help=f"query rows per block (default {relations.DEFAULT_BLOCK_SIZE})",
    )
    parser.add_argument(
        "--implementations",
        default="direct,blocked",
        help="comma-separated subset of direct,blocked",
    )
    parser.add_argument(
        "--memory_budget_gb",
        type=float,
        default=None,
        help="skip timing variants needing more (default: 80%% of available)",
    )
    args = parser.parse_args(argv)
    implementations = [i for i in args.implementations.split(",") if i]
    bad = [i for i in implementations if i not in ("direct", "blocked")]
    if bad or args.repeats <= 0 or (args.block_size is not None and args.block_size <= 0):
        parser.error(
            f"need --implementations within direct,blocked (got {bad}), --repeats > 0, "
            "--block_size > 0"
        )
    budget = (
        int(args.memory_budget_gb * 2**30)
        if args.memory_budget_gb
        else int(0.8 * _available_bytes())
    )
    for batch, length in args.sizes:
        for implementation in implementations:
            print(
                json.dumps(
                    _case(batch, length, implementation, args.block_size, args.repeats, budget)
                ),
                flush=True,
            )
    return 0
