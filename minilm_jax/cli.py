"""The command lines' shared shell: flags, the experiment config, and one-line errors.

Every CLI (`minilm_jax.main`, `minilm_jax.finetune`, `minilm_jax.sweep`, `minilm_jax.compile`)
is `cli.run(program, argv, ...)`: it parses `--config PATH[:ARGS]`, `--workdir DIR`,
`--config.field=value` overrides and the program's own flags, loads the experiment file,
and calls `program(args, config)`. Failures end the process with one line on stderr:

  exit 2  bad input: a config field, a file, a folder, a module (`error: ...` names it and the fix)
  exit 3  the run started and had to stop (a non-finite loss); the last good checkpoint is kept
  exit 130  stopped by Ctrl-C (SIGINT): a running trainer checkpoints the current step first
  exit 143  stopped by SIGTERM (a scheduler, a preemption notice): the same; rerun to resume

A stopped run exits with 128 + the signal (the shell's convention), not 0, so that a scheduler
or a script sees that the run has not finished. `--debug` prints the traceback as well.
Unexpected exceptions (bugs) keep their traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any, Callable, Sequence

import ml_collections

from minilm_jax import configs

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A command line that cannot be run as typed."""


def _parser(prog: str, description: str, flags: Sequence[tuple[tuple, dict]]):
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", required=True, help="Experiment file: PATH[:ARGS].")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks of errors.")
    parser.add_argument(
        "--verbosity",
        type=int,
        default=None,
        help="Library log level (absl: 0 = INFO, -1 = WARNING, the default).",
    )
    for names, kwargs in flags:
        parser.add_argument(*names, **kwargs)
    return parser


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.a.b=value` / `--config.a.b value` from the other arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            name, eq, value = arg[len("--config.") :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"--config.{name} needs a value (--config.{name}=VALUE)")
                value, i = argv[i + 1], i + 1
            overrides.append((name, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def parse(
    argv: Sequence[str],
    *,
    prog: str,
    description: str = "",
    flags: Sequence[tuple[tuple, dict]] = (),
) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    """(flags, config with the overrides applied). Raises ValueError/FileNotFoundError with a
    message naming the experiment file, argument or field."""
    rest, overrides = split_overrides(list(argv))
    parser = _parser(prog, description, flags)

    def usage_error(message):
        raise UsageError(f"{message} (see `python -m {prog} --help`)")

    parser.error = usage_error  # argparse would print usage and exit(2) itself
    args = parser.parse_args(rest)
    config = configs.load_experiment(args.config)
    for name, value in overrides:
        configs.override(config, name, value)
    return args, config


def _first_line(error: BaseException) -> str:
    """Our messages are one line; library errors may add pages (TFDS lists every dataset)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _out_of_memory(error: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


def run(
    program: Callable[[argparse.Namespace, ml_collections.ConfigDict], int | None],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str = "",
    flags: Sequence[tuple[tuple, dict]] = (),
) -> None:
    """Parses the command line, runs `program(args, config)` and exits with its code (0 when
    it returns None), turning the errors above into one line."""
    from minilm_jax.loop import TrainingError  # imports jax: after --help would have exited

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args, config = parse(argv, prog=prog, description=description, flags=flags)
        _quiet_libraries(args.verbosity)
        code = program(args, config)
    except SystemExit:
        raise
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which checkpoints instead)
        _report(
            "interrupted (Ctrl-C) outside a training loop: every checkpoint and finished result "
            "already written is kept; rerun the same command to resume",
            debug,
        )
        sys.exit(EXIT_INTERRUPTED)
    except TrainingError as e:
        _report(str(e), debug)
        sys.exit(EXIT_STOPPED)
    except (ValueError, OSError, ImportError) as e:  # OSError: missing files, permissions...
        if _out_of_memory(e):
            _report(
                f"out of device memory: {_first_line(e)} -- lower batch_size, raise "
                "grad_accum_steps, or use dtype='bfloat16'",
                debug,
            )
        else:
            _report(_first_line(e), debug)
        sys.exit(EXIT_BAD_INPUT)
    except Exception as e:  # noqa: BLE001
        if not _out_of_memory(e):
            raise  # a bug: keep the traceback
        _report(
            f"out of device memory: {_first_line(e)} -- lower batch_size, raise "
            "grad_accum_steps, or use dtype='bfloat16'",
            debug,
        )
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(code or 0)


def _report(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr, flush=True)


def _quiet_libraries(verbosity: int | None) -> None:
    """Orbax and Grain log every step of a save at INFO; the progress lines are ours. absl's
    flags are marked parsed so absl logging (and Grain's worker processes) work without
    absl.app."""
    from absl import flags
    from absl import logging as absl_logging

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    absl_logging.set_verbosity(absl_logging.WARNING if verbosity is None else verbosity)
    logging.getLogger().setLevel(logging.WARNING if verbosity is None else logging.INFO)


def flag(*names: str, **kwargs: Any) -> tuple[tuple, dict]:
    """A program-specific flag for `run(..., flags=[...])` (argparse's add_argument)."""
    return names, kwargs
