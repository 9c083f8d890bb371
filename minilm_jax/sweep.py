"""The one sweep runner: a list of points, one resume rule, one summary writer; and the CLI
that runs an experiment file's ``sweep(arg)`` (distillation ablations), optionally scoring
every student end to end on fine-tuning tasks.

    python -m minilm_jax.sweep --config experiments/ablations.py:ablation=pairs \
        --workdir runs/ablations/pairs [--evaluate mnli,squad2] [--print_only]

Resume rule (every sweep: distillation points, fine-tuning grids): ``WORKDIR/results.jsonl``
holds one line per finished point with the settings that produced it. A point whose name and
settings are there is skipped; a point whose name is there with other settings is refused
(with the differing settings), so results of two configurations never mix in one table. A
point that was interrupted resumes from its own checkpoints.

Each distillation point trains into ``WORKDIR/NAME``; with ``--evaluate TASK,...`` its student
is then fine-tuned on each task (the task's experiment file next to the ablation file, its
default grid) in ``WORKDIR/NAME/eval/TASK``. ``WORKDIR/summary.md`` tabulates the points: the
held-out losses, and the tasks' dev scores (mean over seeds at the best learning rate and
epochs) as the paper's ablation tables do. ``--config.*`` overrides apply to every point.

Run directories nest (docs/run_directory.md): ``WORKDIR`` is a run directory of kind
``sweep`` (claimed for the whole sweep; its config is the experiment's base config plus
``sweep.experiment`` and ``sweep.evaluate``); each point's ``WORKDIR/NAME`` is a ``distill``
run directory of its own, claimed by ``train.train_and_evaluate`` (its own lock and config
check, as if started alone, which is what each job of ``--print_only`` does); each
``WORKDIR/NAME/eval/TASK`` is a ``finetune`` run directory claimed by ``finetune.run_sweep``.
An unmarked ``WORKDIR`` that holds only run directories (points that ran as separate jobs)
is adopted. A stopped point stops the sweep with its exit code (130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections

from minilm_jax import cli, configs, paths, rundir

RESULTS_FILE = "results.jsonl"


# ---------------------------------------------------------------------------------------------
# The runner.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    settings: dict[str, Any]  # JSON-able; every setting that changes this point's result


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class Runner:
    """Runs points one after another into ``workdir``; see the module docstring."""

    def __init__(self, workdir: str, *, log: Callable[[str], None] = print):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, RESULTS_FILE)
        self.log = log

    def finished(self) -> dict[str, dict[str, Any]]:
        """name -> {"settings", "result"} of every finished point."""
        if not os.path.exists(self.path):
            return {}
        with open(self.path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        return {line["name"]: line for line in lines}

    def check(self, points: Sequence[Point]) -> None:
        """Refuses (ValueError) points whose name has a result made with other settings."""
        names = [p.name for p in points]
        if len(set(names)) != len(names):
            raise ValueError(f"sweep point names must be unique, got {names}")
        done = self.finished()
        for point in points:
            if point.name not in done:
                continue
            old, new = done[point.name]["settings"], _jsonable(point.settings)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if changed:
                diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
                raise ValueError(
                    f"{self.path} already holds point {point.name!r} made with other settings "
                    f"({diff}); use a new --workdir for this configuration (or remove that "
                    "line to redo the point)"
                )

    def run(
        self, points: Sequence[Point], run_point: Callable[[Point], dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        """Runs the unfinished points in order; returns the results of the finished ones
        (in point order). ``run_point`` returns the point's result, or None when it was
        stopped (a signal): the sweep then stops too, to be resumed by a rerun."""
        self.check(points)
        done = self.finished()
        results = []
        for i, point in enumerate(points, 1):
            if point.name in done:
                self.log(f"[{i}/{len(points)}] {point.name}: finished already, skipped")
                results.append(done[point.name]["result"])
                continue
            self.log(f"[{i}/{len(points)}] {point.name}")
            result = run_point(point)
            if result is None:
                return results
            self.record(point, result)
            results.append(result)
        return results

    def record(self, point: Point, result: Mapping[str, Any]) -> None:
        import jax  # only host 0 writes

        if jax.process_index() != 0:
            return
        os.makedirs(self.workdir, exist_ok=True)
        line = {"name": point.name, "settings": _jsonable(point.settings), "result": result}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=float) + "\n")


# ---------------------------------------------------------------------------------------------
# Writing configs and summaries.
# ---------------------------------------------------------------------------------------------


def write_summary(workdir: str, summary: Any, markdown: str) -> None:
    """``summary.json`` and ``summary.md`` of a sweep."""
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=float)
    with open(os.path.join(workdir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(markdown if markdown.endswith("\n") else markdown + "\n")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rank(score: float | None) -> float:
    """Sort key of a score: NaN and missing rank last."""
    return -math.inf if score is None or not math.isfinite(score) else score


def percent(x: float | None) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


# ---------------------------------------------------------------------------------------------
# Distillation sweeps (experiment files with a sweep(arg)), with optional evaluation.
# ---------------------------------------------------------------------------------------------

# --evaluate task -> (experiment file next to the sweep's experiment file, its argument).
EVAL_EXPERIMENTS = {
    **{task: ("glue.py", f"task={task}") for task in ("mnli", "qnli", "qqp", "rte", "sst2")},
    **{task: ("glue.py", f"task={task}") for task in ("mrpc", "cola", "stsb")},
    "squad2": ("squad.py", "version=2"),
    "squad1": ("squad.py", "version=1"),
    "xnli": ("xnli.py", ""),
    "mlqa": ("mlqa.py", ""),
}


def sweep_points(config_spec: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``(name, {dotted field: value})`` list of an experiment file's ``sweep(arg)``."""
    path, _, arg = config_spec.partition(":")
    module = configs.load_experiment_module(path)
    if not hasattr(module, "sweep"):
        raise ValueError(f"{path} defines no sweep(arg) function")
    try:
        points = module.sweep(arg or None)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{config_spec}: {e}") from e
    names = [name for name, _ in points]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: sweep point names must be unique, got {names}")
    return points


def point_config(
    base: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(base.to_dict())  # a deep, unlocked copy per point
    configs.set_fields(config, overrides)
    return config


def _flag_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _command(module: str, config_spec: str, workdir: str, flags: Sequence[str]) -> str:
    return shlex.join(
        ["python", "-m", module, "--config", config_spec, "--workdir", workdir, *flags]
    )


def _experiment_folders(config_spec: str) -> list[str]:
    """Where --evaluate looks for task experiment files: next to the sweep's file, then the
    repository's experiments/ folder (for sweep files kept elsewhere)."""
    here = os.path.dirname(os.path.abspath(config_spec.partition(":")[0]))
    repo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
    return [here] + ([repo] if os.path.isdir(repo) and repo != here else [])


def eval_specs(config_spec: str, tasks: Sequence[str], smoke: bool) -> dict[str, str]:
    """task -> the fine-tuning experiment spec (``DIR/glue.py:task=mnli[,smoke]``) that
    ``--evaluate`` runs, DIR being the sweep's experiment folder (or the repository's)."""
    folders = _experiment_folders(config_spec)
    specs = {}
    for task in tasks:
        if task not in EVAL_EXPERIMENTS:
            raise ValueError(
                f"--evaluate: unknown task {task!r}; allowed: {sorted(EVAL_EXPERIMENTS)}"
            )
        file, arg = EVAL_EXPERIMENTS[task]
        args = ",".join(a for a in (arg, "smoke" if smoke else "") if a)
        found = [os.path.join(f, file) for f in folders if os.path.isfile(os.path.join(f, file))]
        if not found:
            raise FileNotFoundError(f"--evaluate {task}: no experiment file {file!r} in {folders}")
        path = found[0]
        specs[task] = f"{path}:{args}" if args else path
    return specs


def job_graph(
    config_spec: str,
    root: str,
    points: Sequence[tuple[str, dict[str, Any]]],
    passthrough: Sequence[str],
    evals: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Every job of the sweep for a cluster scheduler: id, the jobs it waits for, command."""
    jobs = []
    for name, overrides in points:
        own = [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]
        workdir = os.path.join(root, name)
        jobs.append(
            {
                "id": f"{name}/distill",
                "after": [],
                "command": _command("minilm_jax.main", config_spec, workdir, [*passthrough, *own]),
            }
        )
        for task, spec in evals.items():
            student = f"--config.student_path={os.path.join(workdir, 'hf_student')}"
            jobs.append(
                {
                    "id": f"{name}/eval/{task}",
                    "after": [f"{name}/distill"],
                    "command": _command(
                        "minilm_jax.finetune",
                        spec,
                        os.path.join(workdir, "eval", task),
                        [student],
                    ),
                }
            )
    return jobs


def _distill_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Every field of the point's resolved config (the key of the resume rule)."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config, "")
    return _jsonable(flat)


def summary_rows(results: Sequence[Mapping[str, Any]], tasks: Sequence[str]):
    """The paper-style table: one row per point, held-out losses, then each task's score."""
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    header = ["run", "held-out loss at start", "held-out loss at end", "per relation at end"]
    header += [f"{task} (dev, mean over seeds)" for task in tasks]
    rows = []
    for r in results:
        per = ", ".join(f"{k} {v:.4f}" for k, v in r.get("per_relation_end", {}).items())
        scores = [percent(r.get("eval", {}).get(task, {}).get("score")) for task in tasks]
        rows.append(
            [r["name"], fmt(r.get("held_out_start")), fmt(r.get("held_out_end")), per, *scores]
        )
    return header, rows


def _eval_result(summary: Mapping[str, Any]) -> dict[str, Any]:
    best = summary["best_mean"]
    return {
        "score": best["mean"]["score"],
        "metrics": {k: v for k, v in best["mean"].items() if k != "score"},
        "learning_rate": best["learning_rate"],
        "epochs": best["epochs"],
        "seeds": best["seeds"],
    }


def run_distillation_sweep(args, base_config: ml_collections.ConfigDict) -> int:
    if paths.is_url(args.workdir):  # the sweep's own files (results.jsonl, summary) are local
        raise rundir.RunDirError(
            f"workdir {args.workdir}: a sweep writes to a local folder; only distillation "
            "(python -m minilm_jax.main) takes a URL workdir"
        )
    root = os.path.abspath(args.workdir)
    points = sweep_points(args.config)
    tasks = [t for t in (args.evaluate or "").split(",") if t]
    smoke = "smoke" in args.config.partition(":")[2].split(",")
    evals = eval_specs(args.config, tasks, smoke)
    passthrough = args.overrides
    if args.print_only:
        for job in job_graph(args.config, root, points, passthrough, evals):
            print(json.dumps(job))
        return 0
    sweep_points_ = [
        Point(
            name,
            {"config": _distill_settings(point_config(base_config, overrides)), "evaluate": evals},
        )
        for name, overrides in points
    ]
    configs_by_name = {name: point_config(base_config, o) for name, o in points}
    Runner(root).check(sweep_points_)  # read-only: before the root is claimed
    from minilm_jax import parallel  # imports JAX

    parallel.initialize_distributed(base_config.get("distributed"))  # the claim asks JAX
    identity = {
        **base_config.to_dict(),
        "sweep": {"experiment": _experiment_id(args.config), "evaluate": list(evals)},
    }
    with rundir.claim(root, identity, kind="sweep", holds_runs=True):
        return _run_points(
            Runner(root, log=lambda s: print(s, flush=True)),
            sweep_points_,
            configs_by_name,
            evals,
            tasks,
            root,
        )


def _experiment_id(config_spec: str) -> str:
    """The sweep's experiment as ``/abs/path.py:ARGS`` (the same however it was typed)."""
    path, colon, arg = config_spec.partition(":")
    return os.path.realpath(path) + colon + arg


def _run_points(runner, sweep_points_, configs_by_name, evals, tasks, root) -> int:
    import jax

    from minilm_jax import finetune, train

    stopped = {}

    def run_point(point: Point) -> dict[str, Any] | None:
        workdir = os.path.join(root, point.name)
        summary = train.train_and_evaluate(configs_by_name[point.name], workdir)
        if summary.get("preempted_at") is not None:
            stopped.update(
                name=point.name, step=summary["preempted_at"], exit_code=summary["exit_code"]
            )
            return None
        end, start = summary.get("eval_end") or {}, summary.get("eval_start") or {}
        result = {
            "name": point.name,
            "held_out_start": start.get("loss"),
            "held_out_end": end.get("loss"),
            "per_relation_end": {k[5:]: v for k, v in end.items() if k.startswith("loss/")},
            "eval": {},
        }
        for task, spec in evals.items():
            config = configs.load_experiment(spec)
            config.student_path = summary["hf_student"]
            out = finetune.run_sweep(
                config, os.path.join(workdir, "eval", task), log=lambda s: print(s, flush=True)
            )
            if out.stopped is not None:
                stopped.update(
                    name=f"{point.name}/eval/{task}",
                    step=out.stopped.preempted_at,
                    exit_code=out.stopped.exit_code,
                )
                return None
            result["eval"][task] = _eval_result(out.summary)
        return result

    results = runner.run(sweep_points_, run_point)
    if stopped:
        print(
            f"Sweep stopped: {stopped['name']} was stopped at step {stopped['step']} "
            "(checkpoint saved); rerun the same command to resume.",
            flush=True,
        )
        return stopped["exit_code"]
    header, rows = summary_rows(results, tasks)
    markdown = markdown_table(header, rows)
    if jax.process_index() == 0:
        write_summary(root, results, markdown)
    print(markdown)
    print(f"Summary written to {os.path.join(root, 'summary.md')}", flush=True)
    return 0


def main(argv=None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    _, overrides = cli.split_overrides(argv)

    def program(args, config):
        args.overrides = [f"--config.{name}={value}" for name, value in overrides]
        return run_distillation_sweep(args, config)

    cli.run(
        program,
        argv,
        prog="minilm_jax.sweep",
        description="Run an experiment file's sweep(arg), one point after another.",
        flags=[
            cli.flag(
                "--workdir", required=True, help="Root directory; each point in WORKDIR/NAME."
            ),
            cli.flag(
                "--evaluate",
                default="",
                help=f"Fine-tune every student on these tasks: {','.join(EVAL_EXPERIMENTS)}.",
            ),
            cli.flag(
                "--print_only",
                action="store_true",
                help="Print the job graph (one JSON object per job) and exit.",
            ),
        ],
    )


if __name__ == "__main__":
    main()
