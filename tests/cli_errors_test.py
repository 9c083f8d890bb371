"""Every command line fails on bad input with one `error:` line and exit code 2, naming the
file, field or folder and the fix, and writes nothing it should not (issue 9, point 5).

CASES is the table of cases: which CLI, the command line a user would type, and the line
expected. Each runs through the CLI's own `main(argv)` in this process (the same parsing,
error handling and exit code as `python -m ...`); `test_real_processes_*` checks that the
same holds for real processes, and `--debug` adds the traceback. Most cases fail before any
model loads; the ones that need one use the cached tiny smoke models (`tiny.smoke_model`).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from run_fixtures import (
    GLUE,
    QUICKSTART,
    REPO,
    cli_env,
    distill_argv,
    error_line,
    is_run_directory,
    run_in_process,
    snapshot,
    write_corpus,
    write_sweep_file,
)

from minilm_jax import finetune, hf, main, rundir, sweep, tiny


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every file and folder the cases point at, made once (nothing here is changed by a
    case: each case gets its own workdir)."""
    tmp = tmp_path_factory.mktemp("inputs")
    f = {"tmp": str(tmp), "corpus": write_corpus(tmp)}
    experiments = {
        "broken.py": "def get_config(arg=None):\n    return (\n",
        "raises.py": "raise RuntimeError('boom')\n",
        "no_get_config.py": "X = 1\n",
        "no_sweep.py": "from minilm_jax import configs\n\n"
        "def get_config(arg=None):\n    return configs.base_config()\n",
    }
    for name, text in experiments.items():
        (tmp / name).write_text(text)
        f[name.removesuffix(".py")] = str(tmp / name)
    f["two_points"] = write_sweep_file(tmp)
    (tmp / "notes.txt").write_text("my notes\n")
    f["file"] = str(tmp / "notes.txt")
    rng = np.random.default_rng(0)
    (tmp / "binary.txt").write_bytes(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    f["binary"] = str(tmp / "binary.txt")
    for role, sizes in (("teacher", tiny.SMOKE_TEACHER), ("student", tiny.SMOKE_STUDENT)):
        source = tiny.smoke_model("bert", sizes)
        f[role] = source
        truncated = tmp / f"{role}_truncated"
        shutil.copytree(source, truncated)
        weights = truncated / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        f[f"{role}_truncated"] = str(truncated)
    bad_json = tmp / "teacher_bad_json"
    shutil.copytree(f["teacher"], bad_json)
    (bad_json / "config.json").write_text('{"model_type": "bert",\n')
    f["teacher_bad_json"] = str(bad_json)
    return f


def fresh_copy(source, tmp_path, name):
    """A copy of a model folder that a case may point --workdir at."""
    target = tmp_path / name
    shutil.copytree(source, target)
    return str(target)


def broken_run_config(tmp_path):
    workdir = tmp_path / "run"
    rundir.acquire(
        str(workdir), {"seed": 0}, kind="distill", process_index=0, process_count=1
    ).release()
    (workdir / rundir.CONFIG_FILE).write_text('{"seed": 0,')
    return str(workdir)


def finetune_run_dir(tmp_path):
    workdir = str(tmp_path / "glue_run")
    rundir.acquire(
        workdir, {"task": "rte"}, kind="finetune", process_index=0, process_count=1
    ).release()
    return workdir


D, F, S = main.main, finetune.main, sweep.main
GLUE_SMOKE = f"{GLUE}:smoke,task=rte"

# (id, CLI, arguments with {placeholders} from `files`, the expected line (a regex), setup):
# setup(tmp_path) -> the workdir, for cases that need a particular one (default: a new
# folder). A case's workdir must hold afterwards exactly what it held before.
CASES = [
    # The experiment file and its argument.
    (
        "missing experiment file",
        D,
        ["--config", "{tmp}/nope.py"],
        r"no experiment file '.*/nope\.py'",
        None,
    ),
    (
        "experiment file does not parse",
        D,
        ["--config", "{broken}"],
        r"experiment file '.*broken\.py' does not parse: '\(' was never closed \(line 2\)",
        None,
    ),
    (
        "experiment file raises",
        D,
        ["--config", "{raises}"],
        r"experiment file '.*raises\.py' failed to load: RuntimeError: boom",
        None,
    ),
    (
        "experiment file without get_config",
        D,
        ["--config", "{no_get_config}"],
        r"experiment file '.*no_get_config\.py' defines no get_config\(arg\)",
        None,
    ),
    (
        "bad experiment argument",
        D,
        ["--config", f"{QUICKSTART}:smok"],
        r".*experiments/quickstart\.py:smok: unknown config argument 'smok' in 'smok'; allowed: \['smoke'\]",
        None,
    ),
    (
        "unknown config field",
        D,
        ["--config.foo=1"],
        r"config\.foo: unknown config field; known at this level: \['adam_b1', ",
        None,
    ),
    (
        "unknown config section",
        D,
        ["--config.techer.layer=3"],
        r"config\.techer\.layer: unknown config field 'techer'; known: \[",
        None,
    ),
    (
        "value of the wrong type",
        D,
        ["--config.total_steps=six"],
        r"config\.total_steps='six': expected int",
        None,
    ),
    (
        "missing --workdir",
        D,
        ["--config", f"{QUICKSTART}:smoke"],
        r"the following arguments are required: --workdir \(see `python -m minilm_jax\.main --help`\)",
        "no workdir",
    ),
    # The teacher.
    (
        "teacher.path=None",
        D,
        ["--config.teacher.path=None"],
        r"config\.teacher\.path=None: set it to a local Hugging Face checkpoint folder",
        None,
    ),
    (
        "teacher folder missing",
        D,
        ["--config.teacher.path=/nonexistent/teacher"],
        r"config\.teacher\.path='/nonexistent/teacher': checkpoint folder '/nonexistent/teacher' does not exist",
        None,
    ),
    (
        "teacher config.json not JSON",
        D,
        ["--config.teacher.path={teacher_bad_json}"],
        r"config\.teacher\.path='.*teacher_bad_json': .*teacher_bad_json/config\.json is not valid JSON \(",
        None,
    ),
    (
        "truncated teacher weights",
        D,
        ["--config.teacher.path={teacher_truncated}"],
        r".*teacher_truncated/model\.safetensors cannot be read \(.*\): the file is damaged or truncated",
        "claimed",
    ),
    (
        "max_len < 3, before the weights load",
        D,
        ["--config.teacher.path={teacher_truncated}", "--config.max_len=2"],
        r"config\.max_len=2: must be >= 3 \(two special tokens and one text token\)",
        None,
    ),
    (
        "relation module missing",
        D,
        ["--config.distill.relation_modules=('no_such_relations',)"],
        r"No module named 'no_such_relations'",
        None,
    ),
    # Silent-wrong settings.
    (
        "learning rate zero",
        D,
        ["--config.learning_rate=0"],
        r"config\.learning_rate=0\.0: must be > 0",
        None,
    ),
    (
        "learning rate negative",
        D,
        ["--config.learning_rate=-1e-4"],
        r"config\.learning_rate=-0\.0001: must be > 0",
        None,
    ),
    (
        "warmup longer than the run",
        D,
        ["--config.warmup_steps=10"],
        r"config\.warmup_steps=10: must be in 0\.\.total_steps=6",
        None,
    ),
    (
        "corpus not UTF-8",
        D,
        ["--config.data.text_files={binary}"],
        r"data\.text_files: .*binary\.txt is not UTF-8 text: \d+\.\d% of the 200,000 bytes checked are invalid UTF-8 or NUL \(at most 0\.1% allowed\)",
        "claimed",
    ),
    (
        "corpus glob matching nothing",
        D,
        ["--config.data.text_files={tmp}/none/*.txt"],
        r"data\.text_files: the glob '.*/none/\*\.txt' matched no files",
        None,
    ),
    # The workdir.
    (
        "workdir is a file",
        D,
        [],
        r"workdir .*notes\.txt is a file, not a folder: choose a folder path",
        "file",
    ),
    (
        "workdir is the teacher's folder",
        D,
        [],
        r"workdir .*/teacher_copy is not empty and is not a minilm_jax run directory \(it holds config\.json, model\.safetensors, tokenizer\.json; no \.minilm_jax_run\): nothing was written\. Choose a new or empty folder",
        "teacher",
    ),
    (
        "run_config.json not JSON",
        D,
        [],
        r".*/run/run_config\.json is not a valid saved config \(.*\): the run cannot be checked for changes\. Start a fresh run with a new --workdir",
        broken_run_config,
    ),
    (
        "workdir of a fine-tuning run",
        D,
        [],
        r"workdir .*/glue_run is a finetune run directory; a distill run needs its own --workdir",
        finetune_run_dir,
    ),
    # Fine-tuning.
    (
        "unknown task",
        F,
        ["--config", f"{GLUE}:task=sst3"],
        r".*glue\.py:task=sst3: config\.task='sst3' is not a GLUE task",
        None,
    ),
    (
        "bad fine-tuning argument",
        F,
        ["--config", f"{GLUE}:smok"],
        r".*glue\.py:smok: unknown config argument 'smok'",
        None,
    ),
    (
        "student_path=None",
        F,
        ["--config.student_path=None"],
        r"config\.student_path=None: set it to a Hugging Face folder",
        None,
    ),
    (
        "student folder missing",
        F,
        ["--config.student_path=/nonexistent/student"],
        r"config\.student_path='/nonexistent/student': checkpoint folder '/nonexistent/student' does not exist",
        None,
    ),
    (
        "truncated student weights",
        F,
        ["--config.student_path={student_truncated}"],
        r".*student_truncated/model\.safetensors cannot be read \(.*\): the file is damaged or truncated",
        "claimed",
    ),
    (
        "fine-tuning learning rate zero",
        F,
        ["--config.sweep.learning_rates=(0.0,)"],
        r"config\.sweep\.learning_rates=\(0\.0,\): needs one or more positive rates",
        None,
    ),
    (
        "fine-tuning learning rate negative",
        F,
        ["--config.sweep.learning_rates=(2e-5,-1e-5)"],
        r"config\.sweep\.learning_rates=\(2e-05, -1e-05\): needs one or more positive rates",
        None,
    ),
    (
        "warmup over the whole run",
        F,
        ["--config.warmup_fraction=1.0"],
        r"config\.warmup_fraction=1\.0: must be in \[0, 1\)",
        None,
    ),
    (
        "fine-tuning workdir is a file",
        F,
        [],
        r"workdir .*notes\.txt is a file, not a folder",
        "file",
    ),
    (
        "fine-tuning workdir is the student's folder",
        F,
        [],
        r"workdir .*/student_copy is not empty and is not a minilm_jax run directory \(it holds config\.json, model\.safetensors, tokenizer\.json; no \.minilm_jax_run\)",
        "student",
    ),
    # Sweeps.
    (
        "missing sweep file",
        S,
        ["--config", "{tmp}/nope.py"],
        r"no experiment file '.*/nope\.py'",
        None,
    ),
    (
        "sweep file without sweep()",
        S,
        ["--config", "{no_sweep}"],
        r".*no_sweep\.py defines no sweep\(arg\) function",
        None,
    ),
    (
        "bad sweep argument",
        S,
        ["--config", "{two_points}:pairs"],
        r".*two_points\.py:pairs: unknown sweep 'pairs'; allowed: none",
        None,
    ),
    (
        "unknown --evaluate task",
        S,
        ["--evaluate", "mnli2"],
        r"--evaluate: unknown task 'mnli2'; allowed: \['cola', ",
        None,
    ),
    ("sweep workdir is a file", S, [], r"workdir .*notes\.txt is a file, not a folder", "file"),
    (
        "sweep workdir is the teacher's folder",
        S,
        [],
        r"workdir .*/teacher_copy is not empty and is not a minilm_jax run directory",
        "teacher",
    ),
    # Only distillation writes through the path layer; the others refuse a URL.
    (
        "sweep workdir is a URL",
        S,
        [],
        r"workdir gs://bucket/sweep: a sweep writes to a local folder; only distillation .*",
        lambda tmp: "gs://bucket/sweep",
    ),
    (
        "fine-tuning workdir is a URL",
        F,
        [],
        r"workdir gs://bucket/glue: a finetune run writes to a local folder; only distillation .*",
        lambda tmp: "gs://bucket/glue",
    ),
]


def command_line(cli, args, workdir, files):
    """What the user types: the CLI's usual command with ``args`` added (a --config in
    ``args`` replaces the usual one; ``workdir`` None leaves --workdir out)."""
    args = [a.format(**files) for a in args]
    if cli is D:
        base = distill_argv(workdir or "", files["corpus"])
    elif cli is F:
        base = ["--config", GLUE_SMOKE, "--workdir", str(workdir or "")]
    else:
        base = ["--config", files["two_points"], "--workdir", str(workdir or "")]
    if "--config" in args:
        i = base.index("--config")
        base = base[:i] + base[i + 2 :]
    if workdir is None:
        i = base.index("--workdir")
        base = base[:i] + base[i + 2 :]
    return base + args


def _setup_workdir(setup, cli, files, tmp_path):
    if setup == "file":
        return files["file"]
    if setup == "teacher":
        return fresh_copy(files["teacher"], tmp_path, "teacher_copy")
    if setup == "student":
        return fresh_copy(files["student"], tmp_path, "student_copy")
    if setup == "no workdir":
        return None
    if callable(setup):
        return setup(tmp_path)
    return str(tmp_path / "run")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(case, files, tmp_path, capsys):
    name, cli, args, expected, setup = case
    workdir = _setup_workdir(setup, cli, files, tmp_path)
    before = snapshot(workdir) if workdir and os.path.isdir(workdir) else None
    file_before = open(files["file"]).read()
    code, _, err = run_in_process(cli, command_line(cli, args, workdir, files), capsys)
    assert code == 2, err[-3000:]
    line = error_line(err)
    assert re.fullmatch("error: " + expected + ".*", line), line
    # Nothing written where it should not be.
    assert open(files["file"]).read() == file_before
    if setup == "claimed":  # failed after the claim, before anything of the run was written
        assert sorted(os.listdir(workdir)) == sorted(
            [rundir.MARKER_FILE, rundir.CONFIG_FILE, rundir.HISTORY_FILE]
        )
    elif before is not None:
        assert snapshot(workdir) == before
    elif workdir and not os.path.isfile(workdir):
        assert not os.path.exists(workdir) and not os.path.exists(
            "gs:"
        )  # refused before the folder was made
    if setup in ("teacher", "student"):  # the model folder still loads
        cfg, _ = hf.load_pretrained(workdir)
        assert (
            cfg.hidden_size
            == (tiny.SMOKE_TEACHER if setup == "teacher" else tiny.SMOKE_STUDENT)["hidden_size"]
        )


def test_debug_shows_the_traceback_then_the_line(files, tmp_path, capsys):
    argv = distill_argv(files["file"], files["corpus"], "--debug")
    code, _, err = run_in_process(main.main, argv, capsys)
    assert code == 2
    assert err.startswith("Traceback (most recent call last):")
    assert "minilm_jax.rundir.RunDirError: workdir" in err
    assert err.strip().splitlines()[-1].startswith("error: workdir ")


def test_real_processes_fail_in_one_line(files, tmp_path):
    """The three CLIs as separate processes (started together: they spend their time
    importing), and a read-only workdir, which needs a process without root's override."""
    readonly = tempfile.mkdtemp(prefix="minilm_ro_")  # outside tmp_path: all must traverse it
    os.chmod(readonly, 0o755)
    os.chmod(readonly, 0o555)
    commands = {
        "main": ["-m", "minilm_jax.main", *distill_argv(files["file"], files["corpus"])],
        "finetune": [
            "-m",
            "minilm_jax.finetune",
            "--config",
            GLUE_SMOKE,
            "--workdir",
            str(tmp_path / "ft"),
            "--config.student_path=None",
        ],
        "sweep": [
            "-m",
            "minilm_jax.sweep",
            "--config",
            files["no_sweep"],
            "--workdir",
            str(tmp_path / "sw"),
        ],
        "read-only": ["-m", "minilm_jax.main", *distill_argv(readonly, files["corpus"])],
    }
    prefix = {name: [sys.executable] for name in commands}
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            del commands["read-only"]
        else:
            prefix["read-only"] = [
                "setpriv",
                "--bounding-set=-dac_override,-dac_read_search",
                sys.executable,
            ]
    try:
        procs = {
            name: subprocess.Popen(
                prefix[name] + argv,
                cwd=REPO,
                env=cli_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, argv in commands.items()
        }
        results = {name: (p.wait(timeout=300), p.stderr.read()) for name, p in procs.items()}
        for p in procs.values():
            p.stdout.close()
            p.stderr.close()
    finally:
        os.chmod(readonly, 0o755)
        os.rmdir(readonly)
    expected = {
        "main": "error: workdir {file} is a file, not a folder: choose a folder path",
        "finetune": "error: config.student_path=None: set it to a Hugging Face folder",
        "sweep": "error: {no_sweep} defines no sweep(arg) function",
        "read-only": f"error: workdir {readonly} is not writable by this user: choose a "
        "folder you can write to",
    }
    for name, (code, err) in results.items():
        assert code == 2, (name, err[-3000:])
        assert error_line(err).startswith(expected[name].format(**files)), (name, err)
    assert not is_run_directory(tmp_path / "ft") and not os.path.exists(tmp_path / "sw")
