"""Runs an experiment file's ``sweep(arg)`` one config after another, or prints the commands.

    python -m minilm_jax.sweep --config experiments/ablations.py:ablation=pairs \
        --workdir runs/ablations/pairs [--print_only] [--config.field=value ...]

Each sweep point trains into ``WORKDIR/NAME`` (resuming there if interrupted; finished runs
are skipped), then ``WORKDIR/summary.md`` and ``summary.json`` tabulate the final held-out
losses. ``--config.*`` overrides apply to every point, before the point's own overrides.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any, Sequence

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from minilm_jax import configs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file with a sweep(arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory; each point gets WORKDIR/NAME.")
_PRINT_ONLY = flags.DEFINE_bool("print_only", False, "Print one command per point and exit.")
flags.mark_flags_as_required(["config", "workdir"])


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node[name]
    node[leaf] = value


def sweep_points(config_spec: str) -> list[tuple[str, dict[str, Any]]]:
    path, _, arg = config_spec.partition(":")
    module = configs.load_experiment_module(path)
    if not hasattr(module, "sweep"):
        raise ValueError(f"{path} defines no sweep(arg) function")
    points = module.sweep(arg or None)
    names = [name for name, _ in points]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: sweep point names must be unique, got {names}")
    return points


def point_config(
    base: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(base.to_dict())  # a deep, unlocked copy per point
    for dotted, value in overrides.items():
        set_field(config, dotted, value)
    return config


def command_line(
    config_spec: str, workdir: str, overrides: dict[str, Any], argv: Sequence[str]
) -> str:
    """The equivalent ``minilm_jax.main`` command for one point (for a cluster scheduler)."""
    passthrough = [a for a in argv if a.startswith("--config.")]
    own = [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]
    parts = ["python", "-m", "minilm_jax.main", "--config", config_spec, "--workdir", workdir]
    return shlex.join(parts + passthrough + own)


def _flag_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def config_argument(argv: Sequence[str]) -> str:
    """The ``--config`` value as typed (``PATH[:ARGS]``): sweep(ARGS) needs the ARGS."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    raise app.UsageError("--config is required")


def summarize(root: str, names: Sequence[str]) -> list[dict[str, Any]]:
    """Final held-out losses of every finished point -> summary.json and a markdown table."""
    rows = []
    for name in names:
        path = os.path.join(root, name, "summary.json")
        if not os.path.exists(path):
            rows.append({"name": name, "status": "not finished"})
            continue
        with open(path, encoding="utf-8") as f:
            s = json.load(f)
        end, start = s.get("eval_end") or {}, s.get("eval_start") or {}
        rows.append(
            {
                "name": name,
                "status": "done",
                "held_out_start": start.get("loss"),
                "held_out_end": end.get("loss"),
                "per_relation_end": {k[5:]: v for k, v in end.items() if k.startswith("loss/")},
            }
        )
    with open(os.path.join(root, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    table = markdown_table(rows)
    with open(os.path.join(root, "summary.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        "| run | held-out loss at start | held-out loss at end | per relation at end |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "done":
            lines.append(f"| {r['name']} | | {r['status']} | |")
            continue
        per = ", ".join(f"{k} {v:.4f}" for k, v in r["per_relation_end"].items())
        lines.append(
            f"| {r['name']} | {fmt(r['held_out_start'])} | {fmt(r['held_out_end'])} | {per} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config_spec = config_argument(sys.argv[1:])
    root = os.path.abspath(_WORKDIR.value)
    try:
        points = sweep_points(config_spec)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if _PRINT_ONLY.value:
        for name, overrides in points:
            print(command_line(config_spec, os.path.join(root, name), overrides, sys.argv[1:]))
        return
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    from minilm_jax import train

    os.makedirs(root, exist_ok=True)
    for i, (name, overrides) in enumerate(points, 1):
        workdir = os.path.join(root, name)
        if os.path.exists(os.path.join(workdir, "summary.json")):
            print(f"[{i}/{len(points)}] {name}: finished already, skipped", flush=True)
            continue
        print(f"[{i}/{len(points)}] {name}: {overrides}", flush=True)
        try:
            summary = train.train_and_evaluate(point_config(_CONFIG.value, overrides), workdir)
        except (ValueError, FileNotFoundError, train.TrainingError) as e:
            print(f"error in sweep point {name}: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        if summary.get("preempted_at"):
            print(
                f"Sweep stopped: {name} was preempted at step {summary['preempted_at']}; "
                "rerun the same command to resume.",
                flush=True,
            )
            sys.exit(3)
    rows = summarize(root, [name for name, _ in points])
    print(markdown_table(rows))
    print(f"Summary written to {os.path.join(root, 'summary.md')}", flush=True)


if __name__ == "__main__":
    app.run(main)
