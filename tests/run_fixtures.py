"""What the run-directory and command-line tests share: the smoke distillation command (the
cached tiny teacher of `experiments/quickstart.py:smoke`, a small text corpus instead of the
Python documentation, whose indexing alone takes seconds), running a CLI in this process as
the user's shell would, and looking at a run folder afterwards.

In-process runs go through the same `cli.run` as `python -m ...` (parsing, the one-line
errors, exit codes); tests that need a real process (signals, two runs at once, file
permissions) start one.
"""

import glob
import hashlib
import os
import subprocess
import sys

import pytest
from conftest import TEST_XLA_FLAGS

from minilm_jax import rundir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.py")
GLUE = os.path.join(REPO, "experiments", "glue.py")

# The smoke run, a few seconds: 6 steps, a checkpoint every 2 (all three kept), a train
# record every step, no held-out evaluation or export (their own tests cover them).
SMOKE_FLAGS = (
    "--config.plots=False",
    "--config.export_hf=False",
    "--config.eval_at_start=False",
    "--config.eval_every=0",
    "--config.log_every=1",
    "--config.checkpoint_every=2",
    "--config.keep_checkpoints=3",
    "--config.data.python_docs=False",
)


def write_corpus(folder) -> str:
    """A text corpus of a few hundred paragraphs: this repository's own documentation."""
    paths = [
        os.path.join(REPO, "README.md"),
        *sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))),
    ]
    path = os.path.join(str(folder), "corpus.txt")
    with open(path, "w", encoding="utf-8") as out:
        for name in paths:
            with open(name, encoding="utf-8") as f:
                out.write(f.read() + "\n\n")
    return path


SWEEP_FILE = """
from minilm_jax import configs

def get_config(arg=None):
    return configs.load_experiment({quickstart!r} + ":smoke")

def sweep(arg=None):
    if arg:
        raise ValueError(f"unknown sweep {{arg!r}}; allowed: none")
    return [("heads-2", {{"distill.num_relation_heads": 2}}), ("layer-3", {{"teacher.layer": 3}})]
"""


def write_sweep_file(folder) -> str:
    """An experiment file with a two-point sweep of the smoke distillation."""
    path = os.path.join(str(folder), "two_points.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(SWEEP_FILE.format(quickstart=QUICKSTART))
    return path


def distill_argv(workdir, corpus, *extra) -> list[str]:
    """`python -m minilm_jax.main` arguments of the smoke run into ``workdir``."""
    return [
        "--config",
        f"{QUICKSTART}:smoke",
        "--workdir",
        str(workdir),
        *SMOKE_FLAGS,
        f"--config.data.text_files={corpus}",
        *extra,
    ]


def run_in_process(main, argv, capsys):
    """(exit code, stdout, stderr) of a CLI's ``main(argv)``, as the shell would see them."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err


def error_line(err: str) -> str:
    """The one line a failing CLI prints: asserts there is nothing else on stderr."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


def cli_env(**extra) -> dict:
    """The environment of a CLI subprocess: this checkout's package first (not an installed
    one), one CPU device as a user's laptop, the fast-compile flag and caches of conftest."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "XLA_FLAGS": TEST_XLA_FLAGS,
        **extra,
    }


def start_cli(module, argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *argv],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def snapshot(folder) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def checkpoint_steps(workdir) -> list[int]:
    folder = os.path.join(str(workdir), "checkpoints")
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def damage_checkpoint(workdir, step: int) -> None:
    """Deletes the largest array file of checkpoint ``step`` (as a copy cut short would)."""
    files = [
        p
        for p in glob.glob(f"{workdir}/checkpoints/{step}/state/**/d/*", recursive=True)
        if os.path.isfile(p)
    ]
    os.remove(max(files, key=os.path.getsize))


def is_run_directory(folder) -> bool:
    return os.path.isfile(os.path.join(str(folder), rundir.MARKER_FILE))
