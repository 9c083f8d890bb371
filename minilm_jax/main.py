"""Command line: ``python -m minilm_jax.main --config experiments/NAME.py[:ARGS] --workdir DIR``.

Any config field can be overridden, e.g. ``--config.teacher.layer=10``. Library logs are
at WARNING by default; ``--verbosity=0`` shows INFO (Orbax, data loading, ...). ``DIR`` is the
run's directory (docs/run_directory.md): a new or empty folder, or this run's own, which it
resumes from its newest intact checkpoint; the student goes to ``DIR/hf_student`` at the end.
Exit codes: 0 done, 2 bad input (one ``error:`` line; ``--debug`` adds the traceback), 3 stopped
on a non-finite loss, 130 / 143 stopped by Ctrl-C / SIGTERM after checkpointing the current
step (rerun the same command to resume).
"""

from __future__ import annotations

from minilm_jax import cli


def distill(args, config) -> int:
    from minilm_jax import train  # imports JAX: after the command line is known to be fine

    summary = train.train_and_evaluate(config, args.workdir)
    return summary.get("exit_code") or 0


def main(argv=None) -> None:
    cli.run(
        distill,
        argv,
        prog="minilm_jax.main",
        description="MiniLMv2 distillation of a teacher into a student.",
        flags=[cli.flag("--workdir", required=True, help="Run directory.")],
    )


if __name__ == "__main__":
    main()
