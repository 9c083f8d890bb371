r"""``python -m minilm_jax.fit_table``: the smallest TPU slice of each generation that every
paper experiment fits, and the settings it needs (the README's fit table).

    python -m minilm_jax.fit_table [--generations v5e,v5p,v4] [--experiments a.py,b.py]
        [--results fit_table.jsonl] [--markdown fit_table.md] [--goal_free 0.2] [--no_compile]

For each experiment (default: the paper's rows, ``PAPER_EXPERIMENTS``, at their own batch
1024 x 512 in bf16) and chip generation it walks the slices from small to large and, on each,
the lever settings ``LADDER`` from cheapest to dearest (``--config`` overrides: pure data
parallelism; rematerialised attention; whole-layer remat with the teacher in bf16; the same
with fsdp over every chip, only where the replicated arguments fill over
``FSDP_ARGUMENTS_SHARE`` of HBM; then gradient accumulation), compiling the trainer's step for the slice with
``python -m minilm_jax.compile`` (one process per compile: a compiler crash is recorded, not
fatal). The first setting that fits with at least ``--goal_free`` of the chip's HBM left
ends the walk. Compiles whose outcome the results so far make certain are skipped: memory
per chip is the arguments (parameters, optimizer state, teacher, batch) plus temporaries,
and temporaries grow with the per-chip micro-batch, so a setting that needed more than the
HBM with B rows per chip needs more with 2B. ``--no_compile`` compiles nothing and prints the
table from the results so far, naming the compiles it lacks.

Each compile takes minutes (most of it XLA:TPU's optimisation passes); results are kept in
``--results`` (one JSON line per compile) and reused by the next call, so an interrupted
table resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

GIB = 2**30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_EXPERIMENTS = (
    "experiments/bert_base_6x384.py",
    "experiments/bert_base_6x768.py",
    "experiments/bert_large_6x384.py",
    "experiments/bert_large_6x768.py",
    "experiments/roberta_large_6x384.py",
    "experiments/roberta_large_6x768.py",
    "experiments/roberta_large_12x384.py",
    "experiments/xlmr_large_6x384.py",
    "experiments/xlmr_large_12x384.py",
    "experiments/xlmr_xl_12x384.py",  # when the teachers issue has added it
)
# Slices per generation, smallest first (single slices; v4/v5p as Cloud sells them).
SLICES = {
    "v5e": ("v5e:1x1", "v5e:2x2", "v5e:2x4", "v5e:4x4", "v5e:4x8", "v5e:8x8", "v5e:8x16"),
    "v4": ("v4:2x2x1", "v4:2x2x2", "v4:2x2x4", "v4:2x4x4", "v4:4x4x4", "v4:4x4x8"),
    "v5p": ("v5p:2x2x1", "v5p:2x2x2", "v5p:2x2x4", "v5p:2x4x4", "v5p:4x4x4"),
    "v6e": ("v6e:1x1", "v6e:2x2", "v6e:2x4", "v6e:4x4", "v6e:4x8", "v6e:8x8"),
}
ALL_CHIPS = "all"  # mesh.fsdp over every chip of the slice
# Lever settings, cheapest first (what each costs: docs/scaling.md): pure data parallelism;
# the student's attention rematerialised; its whole layers, with the teacher stored in bf16;
# fsdp over every chip where the arguments are a large share of HBM (FSDP_ARGUMENTS_SHARE);
# then gradient accumulation on top.
LADDER: tuple[dict[str, Any], ...] = (
    {},
    {"remat": "attention"},
    {"remat": "layer", "teacher.param_dtype": "bfloat16"},
    {"remat": "layer", "teacher.param_dtype": "bfloat16", "mesh.fsdp": ALL_CHIPS},
    {"remat": "layer", "teacher.param_dtype": "bfloat16", "grad_accum_steps": 2},
)
# The fsdp step is tried only where the replicated arguments (parameters, optimizer state,
# teacher) take more than this share of a chip's HBM: a teacher like XLM-R XL, whose bf16
# weights alone are 5.6 GB; for the paper's teachers it costs more temporaries than it saves.
FSDP_ARGUMENTS_SHARE = 0.25


def chips(topology: str) -> int:
    from minilm_jax import tpu

    return tpu.parse_topology(topology).num_chips


def overrides_for(levers: Mapping[str, Any], topology: str) -> dict[str, Any]:
    """The ``--config`` overrides of one ladder step on one slice."""
    out = dict(levers)
    if out.get("mesh.fsdp") == ALL_CHIPS:
        out["mesh.fsdp"] = chips(topology)
    return out


def _key(experiment: str, topology: str, overrides: Mapping[str, Any]) -> str:
    return json.dumps([experiment, topology, sorted(overrides.items())])


class Results:
    """The JSONL file of compiles done so far (kept across calls)."""

    def __init__(self, path: str | None):
        self.path, self.rows = path, {}
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        self.rows[_key(row["experiment"], row["topology"], row["overrides"])] = row

    def get(self, experiment, topology, overrides):
        return self.rows.get(_key(experiment, topology, overrides))

    def add(self, row: dict[str, Any]) -> None:
        self.rows[_key(row["experiment"], row["topology"], row["overrides"])] = row
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def compile_one(experiment: str, topology: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """One ``python -m minilm_jax.compile`` run, summarised."""
    command = [
        sys.executable,
        "-m",
        "minilm_jax.compile",
        "--config",
        experiment,
        "--topology",
        topology,
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]
    start = time.time()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    row: dict[str, Any] = {
        "experiment": experiment,
        "topology": topology,
        "overrides": dict(overrides),
        "exit": proc.returncode,
        "seconds": round(time.time() - start),
    }
    if proc.returncode in (0, 3):
        report = json.loads(proc.stdout)
        row.update(
            {
                k: report.get(k)
                for k in (
                    "num_devices",
                    "mesh",
                    "per_device_bytes",
                    "hbm_usable_bytes",
                    "fits",
                    "hbm_free_fraction",
                    "flops_per_device",
                    "step_seconds",
                    "run_hours",
                    "total_steps",
                    "batch_size",
                    "grad_accum_steps",
                    "compile_seconds",
                )
            }
        )
    else:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        crash = next((line for line in lines if "SIGSEGV" in line or "error:" in line), None)
        row["error"] = (crash or (lines[-1] if lines else f"exit {proc.returncode}"))[:300]
    return row


def rows_per_chip(topology: str, overrides: Mapping[str, Any]) -> int:
    """Sequences each chip holds at once (the per-chip micro-batch) at the paper's batch."""
    return 1024 // (chips(topology) * int(overrides.get("grad_accum_steps", 1)))


def _generation(topology: str) -> str:
    from minilm_jax import tpu

    return tpu.parse_topology(topology).chip.name


def _levers(overrides: Mapping[str, Any]) -> tuple:
    """The settings without the slice-dependent fsdp size."""
    return tuple(sorted((k, v) for k, v in overrides.items() if k != "mesh.fsdp")) + (
        ("fsdp", "mesh.fsdp" in overrides),
    )


def estimate(results: Results, experiment: str, topology: str, overrides) -> float | None:
    """Bytes per chip predicted from a compiled result of the same experiment and settings on
    another slice: arguments as compiled (fsdp arguments scaled by the chip count),
    temporaries scaled by the rows per chip. A result of the same chip generation is preferred:
    XLA:TPU compiles differently per generation (measured: BERT-large -> 6x768, remat=layer,
    bf16 teacher, 256 rows per chip: 17.05 GiB of temporaries on v5e, 13.80 GiB on v4)."""
    rows = rows_per_chip(topology, overrides)
    best = None
    for row in results.rows.values():
        if row["experiment"] != experiment or row.get("per_device_bytes") is None:
            continue
        if _levers(row["overrides"]) != _levers(overrides):
            continue
        sizes = row["per_device_bytes"]
        arguments = sizes["arguments"]
        if "mesh.fsdp" in overrides:
            arguments *= row["num_devices"] / chips(topology)
        other = (sizes.get("outputs") or 0) - (sizes.get("aliased") or 0) + (sizes.get("code") or 0)
        temporaries = (
            (sizes.get("temporaries") or 0)
            * rows
            / rows_per_chip(row["topology"], row["overrides"])
        )
        guess = arguments + temporaries + other
        # The same generation predicts better than another (even by the figure of an
        # out-of-memory message, the temporaries XLA gave up at: a lower bound, so a skip it
        # implies is still certain), a compiled program better than such a message, and the
        # nearest rows per chip better than far ones.
        ratio = rows / rows_per_chip(row["topology"], row["overrides"])
        other_generation = _generation(row["topology"]) != _generation(topology)
        rank = (other_generation, not row.get("fits"), abs(math.log(ratio)))
        if best is None or rank < best[0]:
            best = (rank, guess)
    return None if best is None else best[1]


def usable(topology: str) -> int:
    from minilm_jax import tpu

    return tpu.parse_topology(topology).chip.hbm_usable_bytes


def meets(row: Mapping[str, Any] | None, goal_free: float) -> bool:
    return bool(row and row.get("fits") and (row.get("hbm_free_fraction") or 0) >= goal_free)


class _NotCompiled(Exception):
    """A compile the walk needs is not in the results (``search(..., compile=False)``)."""


def search(
    experiment: str,
    generation: str,
    results: Results,
    goal_free: float,
    log=print,
    *,
    compile: bool = True,  # noqa: A002  (False: only what the results hold)
) -> dict[str, Any]:
    """The smallest slice of ``generation`` on which some ``LADDER`` setting fits
    ``experiment`` with ``goal_free`` of HBM left, and the cheapest such setting there.

    Slices are walked from the smallest, settings from the cheapest; a compile is skipped when
    the prediction from results so far (``estimate``: the same setting compiled on another
    slice, preferably of this generation, its temporaries scaled by the rows per chip) is over
    the goal by more than 25%. With ``compile=False`` nothing is compiled: a walk that needs a
    missing compile ends there and the result names it (``missing``, or ``no_accum_missing``
    for the walk without gradient accumulation)."""
    slices = [t for t in SLICES[generation] if 1024 % chips(t) == 0]
    notes: list[str] = []

    def run(topology, levers):
        overrides = overrides_for(levers, topology)
        if 1024 % (chips(topology) * int(overrides.get("grad_accum_steps", 1))):
            return None
        row = results.get(experiment, topology, overrides)
        if row is None and not compile:
            raise _NotCompiled(f"{topology} {overrides or 'plain'}")
        if row is None:
            log(f"compiling {experiment} on {topology} with {overrides or 'no levers'} ...")
            row = compile_one(experiment, topology, overrides)
            results.add(row)
            log(f"  -> {_one_line(row)} ({row['seconds']} s)")
        return row

    def clearly_over(topology, levers) -> float | None:
        guess = estimate(results, experiment, topology, overrides_for(levers, topology))
        limit = (1 - goal_free) * usable(topology)
        return guess if guess is not None and guess > 1.25 * limit else None

    def large_arguments(topology) -> bool:
        replicated = [
            row["per_device_bytes"]["arguments"]
            for row in results.rows.values()
            if row["experiment"] == experiment
            and row.get("per_device_bytes")
            and "mesh.fsdp" not in row["overrides"]
            and row["overrides"].get("teacher.param_dtype") == "bfloat16"
        ]
        return bool(replicated) and min(replicated) > FSDP_ARGUMENTS_SHARE * usable(topology)

    def walk(start: int, ladder) -> tuple[int, dict | None]:
        for index in range(start, len(slices)):
            topology = slices[index]
            for levers in ladder:
                overrides = overrides_for(levers, topology)
                if "mesh.fsdp" in levers and (
                    chips(topology) == 1 or not large_arguments(topology)
                ):
                    continue
                guess = clearly_over(topology, levers)
                if guess is not None and results.get(experiment, topology, overrides) is None:
                    notes.append(
                        f"{topology} {overrides or 'plain'}: predicted {guess / GIB:.1f} GiB"
                    )
                    continue
                row = run(topology, levers)
                if meets(row, goal_free):
                    return index, row
                if row is not None:
                    notes.append(f"{topology} {overrides or 'plain'}: {_one_line(row)}")
        return len(slices), None

    # No seeding: the walk starts on the one-chip slice, whose compiles are the cheapest (no
    # partitioning, and an out-of-memory program stops early) and whose figures, scaled by the
    # rows per chip, let the walk skip the hopeless settings of the slices above.
    try:
        index, row = walk(0, LADDER)
    except _NotCompiled as missing:
        return {
            "experiment": experiment,
            "generation": generation,
            "row": None,
            "no_accum": None,
            "notes": notes,
            "missing": str(missing),
        }
    # The goal prefers no gradient accumulation: where the smallest slice needs it, also the
    # smallest slice that does without.
    no_accum, no_accum_missing = row, None
    if row is not None and "grad_accum_steps" in row["overrides"]:
        try:
            _, no_accum = walk(index, [lv for lv in LADDER if "grad_accum_steps" not in lv])
        except _NotCompiled as missing:
            no_accum, no_accum_missing = None, str(missing)
    return {
        "experiment": experiment,
        "generation": generation,
        "row": row,
        "no_accum": no_accum,
        "no_accum_missing": no_accum_missing,
        "notes": notes,
    }


def _one_line(row: Mapping[str, Any]) -> str:
    if row.get("error"):
        return f"compile failed: {row['error']}"
    sizes = row["per_device_bytes"]
    total = sizes.get("total") or 0
    verdict = f"fits, {row['hbm_free_fraction']:.0%} free" if row["fits"] else "does not fit"
    return (
        f"{total / GIB:.2f} GiB per chip (arguments {sizes['arguments'] / GIB:.2f}, "
        f"temporaries {(sizes.get('temporaries') or 0) / GIB:.2f}): {verdict}"
    )


def _settings(row: Mapping[str, Any]) -> str:
    o = row["overrides"]
    parts = []
    if o.get("mesh.fsdp"):
        parts.append(f"fsdp {o['mesh.fsdp']}")
    else:
        parts.append(f"data {row['num_devices']}")
    if o.get("remat"):
        parts.append(f"remat={o['remat']}")
    if o.get("teacher.param_dtype"):
        parts.append("bf16 teacher")
    if o.get("grad_accum_steps"):
        parts.append(f"grad accum {o['grad_accum_steps']}")
    return ", ".join(parts)


def markdown(found: Sequence[Mapping[str, Any]]) -> str:
    header = (
        "| experiment | chip | smallest slice | mesh and levers | GiB per chip (args + temps) "
        "| HBM left | step at peak / 40% | 400k steps at 40% |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for item in found:
        name = os.path.splitext(os.path.basename(item["experiment"]))[0]
        if item.get("missing"):
            lines.append(
                f"| {name} | {item['generation']} | not compiled yet (next: {item['missing']}) "
                "| | | | | |"
            )
            continue
        if item["row"] is None:
            lines.append(f"| {name} | {item['generation']} | none of the slices tried | | | | | |")
            continue
        rows = [item["row"]]
        if item.get("no_accum") is not None and item["no_accum"] is not item["row"]:
            rows.append(item["no_accum"])
        for row in rows:
            sizes = row["per_device_bytes"]
            step = row["step_seconds"] or {}
            hours = (row["run_hours"] or {}).get("at_40pct")
            lines.append(
                f"| {name} | {item['generation']} | {row['topology']} ({row['num_devices']} "
                f"chips) | {_settings(row)} | {sizes['total'] / GIB:.2f} "
                f"({sizes['arguments'] / GIB:.2f} + {sizes['temporaries'] / GIB:.2f}) | "
                f"{row['hbm_free_fraction']:.0%} | {step.get('at_peak', 0):.2f} s / "
                f"{step.get('at_40pct', 0):.2f} s | {hours:.0f} h |"
            )
        if item.get("no_accum_missing"):
            lines.append(
                f"| {name} | {item['generation']} | without accumulation: not compiled yet "
                f"(next: {item['no_accum_missing']}) | | | | | |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minilm_jax.fit_table", description=__doc__)
    parser.add_argument("--generations", default="v5e,v5p,v4")
    parser.add_argument("--experiments", default=",".join(PAPER_EXPERIMENTS))
    parser.add_argument("--results", default="fit_table.jsonl")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--goal_free", type=float, default=0.2)
    parser.add_argument(
        "--no_compile",
        action="store_true",
        help="compile nothing: the table from --results so far (missing compiles are named)",
    )
    args = parser.parse_args(argv)
    generations = [g.strip() for g in args.generations.split(",") if g.strip()]
    unknown = [g for g in generations if g not in SLICES]
    if unknown:
        print(f"error: --generations: unknown {unknown}; known: {sorted(SLICES)}", file=sys.stderr)
        return 2
    experiments = []
    for path in (p.strip() for p in args.experiments.split(",") if p.strip()):
        if os.path.isfile(os.path.join(REPO, path)):
            experiments.append(path)
        else:
            print(f"note: {path} does not exist here; left out", file=sys.stderr, flush=True)
    results = Results(args.results)
    found = []
    for experiment in experiments:
        for generation in generations:
            found.append(
                search(
                    experiment,
                    generation,
                    results,
                    args.goal_free,
                    log=lambda s: print(s, file=sys.stderr, flush=True),
                    compile=not args.no_compile,
                )
            )
    table = markdown(found)
    print(table, flush=True)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
