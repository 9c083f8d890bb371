"""Command line: ``python -m minilm_jax.main --config experiments/NAME.py[:ARGS] --workdir DIR``.

Any config field can be overridden, e.g. ``--config.teacher.layer=10``. Library logs are
at WARNING by default; ``--verbosity=0`` shows INFO (Orbax, data loading, ...). A run resumes from
``DIR`` when a checkpoint is there, and writes the student to ``DIR/hf_student`` at the end.
Exit codes: 0 done (or stopped by SIGTERM with a checkpoint), 2 bad input, 3 stopped on a
non-finite loss, 130 stopped by Ctrl-C with a checkpoint.
"""

from __future__ import annotations

import signal

from minilm_jax import cli


def distill(args, config) -> int:
    from minilm_jax import train  # imports JAX: after the command line is known to be fine

    summary = train.train_and_evaluate(config, args.workdir)
    return cli.EXIT_INTERRUPTED if summary.get("signal") == signal.SIGINT else 0


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
