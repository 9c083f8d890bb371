"""The run directory (minilm_jax.rundir): ownership, one writer, config-checked resume.

Each test does what a user would do (point a run at a folder, start two runs, change the
config and start again) and checks the one-line message and that nothing was lost.
"""

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from minilm_jax import configs, hf, rundir, tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINGLE = dict(process_index=0, process_count=1)  # what a single-process run passes


def distill_config(**overrides):
    config = configs.base_config()
    for name, value in overrides.items():
        node = config
        *parents, leaf = name.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def snapshot(folder):
    """{relative path: sha256} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def read_history(workdir):
    with open(os.path.join(workdir, rundir.HISTORY_FILE)) as f:
        return [json.loads(line) for line in f]


def one_line(error):
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- ownership


def test_model_folder_is_refused_and_still_loads(tmp_path):
    model = str(tmp_path / "teacher")
    tiny.write_tiny_model(
        "bert", model, ["a few words of text"] * 8, **tiny.SMOKE_TEACHER, vocab_size=64
    )
    before = snapshot(model)
    with pytest.raises(rundir.RunDirError) as error:
        with rundir.claim(model, distill_config(), kind="distill", **SINGLE):
            pass
    message = one_line(error)
    assert f"workdir {model} is not empty and is not a minilm_jax run directory" in message
    assert "config.json" in message and "model.safetensors" in message
    assert "nothing was written" in message
    assert snapshot(model) == before  # not one file added, removed or changed
    cfg, _ = hf.load_pretrained(model)
    assert cfg.num_layers == tiny.SMOKE_TEACHER["num_layers"]


def test_new_and_empty_folders_are_created_marked_and_resumed(tmp_path):
    config = distill_config()
    for workdir in (str(tmp_path / "new" / "run"), str(tmp_path / "empty")):
        os.makedirs(str(tmp_path / "empty"), exist_ok=True)
        with rundir.claim(workdir, config, kind="distill", **SINGLE) as run:
            assert (run.resumed, run.changed, run.is_main) == (False, {}, True)
            assert os.path.exists(os.path.join(workdir, rundir.LOCK_FILE))
        assert not os.path.exists(os.path.join(workdir, rundir.LOCK_FILE))
        with open(os.path.join(workdir, rundir.MARKER_FILE)) as f:
            marker = json.load(f)
        assert marker["kind"] == "distill" and marker["version"] == "0.1.0"
        with open(run.config_path) as f:
            assert json.load(f)["teacher"]["layer"] == 12
        assert not os.path.exists(os.path.join(workdir, "config.json"))  # no clash with HF
        with rundir.claim(workdir, config, kind="distill", **SINGLE) as again:
            assert (again.resumed, again.changed) == (True, {})
        assert [h["resumed"] for h in read_history(workdir)] == [False, True]


def test_a_file_or_a_run_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(rundir.RunDirError) as error:
        rundir.acquire(str(path), distill_config(), kind="distill", **SINGLE)
    assert one_line(error) == f"workdir {path} is a file, not a folder: choose a folder path"
    assert path.read_text() == "mine"
    workdir = str(tmp_path / "run")
    rundir.acquire(workdir, distill_config(), kind="distill", **SINGLE).release()
    with pytest.raises(rundir.RunDirError, match="is a distill run directory; a finetune run"):
        rundir.acquire(workdir, {"task": "rte"}, kind="finetune", **SINGLE)


def test_read_only_workdir_is_one_error():
    """As a user without write permission. Root writes anywhere, so when the tests run as
    root the claim runs in a child without the capability to override file permissions."""
    base = tempfile.mkdtemp(prefix="minilm_ro_")
    try:
        os.chmod(base, 0o755)
        readonly = os.path.join(base, "readonly")
        os.mkdir(readonly, 0o555)
        os.chmod(readonly, 0o555)
        code = (
            "import sys; from minilm_jax import rundir\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        rundir.acquire(path, {'seed': 0}, kind='distill', process_index=0,"
            " process_count=1)\n"
            "    except rundir.RunDirError as e:\n"
            "        print(e)\n"
        )
        command = [sys.executable, "-c", code, readonly, os.path.join(readonly, "run")]
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv (util-linux) to drop privileges")
            command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] + command
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"workdir {readonly} is not writable by this user: choose a folder you can write to",
            f"cannot create workdir {readonly}/run: permission denied",
        ]
        assert os.listdir(readonly) == []
    finally:
        os.chmod(os.path.join(base, "readonly"), 0o755)
        os.rmdir(os.path.join(base, "readonly"))
        os.rmdir(base)


# --------------------------------------------------------------------------- one writer


def test_live_lock_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from minilm_jax import rundir\n"
            "with rundir.claim(sys.argv[1], {'seed': 0}, kind='distill', process_index=0,"
            " process_count=1):\n"
            "    print('claimed', flush=True)\n"
            "    time.sleep(120)\n",
            workdir,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(rundir.RunDirError) as error:
            rundir.acquire(workdir, {"seed": 0}, kind="distill", **SINGLE)
        message = one_line(error)
        assert f"is in use by process {holder.pid} on this host" in message
        assert f"this is process {os.getpid()} on host {socket.gethostname()}" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # as `kill -9`: the lock stays behind
        holder.wait(timeout=30)
        holder.stdout.close()
    with open(os.path.join(workdir, rundir.LOCK_FILE)) as f:
        assert json.load(f)["pid"] == holder.pid
    with caplog.at_level(logging.WARNING):
        with rundir.claim(workdir, {"seed": 0}, kind="distill", **SINGLE) as run:
            assert run.resumed
            with open(os.path.join(workdir, rundir.LOCK_FILE)) as f:
                assert json.load(f)["pid"] == os.getpid()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"{workdir}: took over the lock of process {holder.pid} on this host, which is no "
        "longer running"
    ]
    assert not os.path.exists(os.path.join(workdir, rundir.LOCK_FILE))


def test_lock_from_another_host_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    rundir.acquire(workdir, {"seed": 0}, kind="distill", **SINGLE).release()
    lock = {"host": "node-7", "pid": 4242, "time": "2026-01-01T00:00:00+00:00"}
    with open(os.path.join(workdir, rundir.LOCK_FILE), "w") as f:
        json.dump(lock, f)
    with pytest.raises(rundir.RunDirError) as error:
        rundir.acquire(workdir, {"seed": 0}, kind="distill", **SINGLE)
    message = one_line(error)
    assert "in use by process 4242 on host node-7" in message
    assert f"this is process {os.getpid()} on host {socket.gethostname()}" in message
    assert "a lock from another host cannot be checked" in message
    with open(os.path.join(workdir, rundir.LOCK_FILE)) as f:
        assert json.load(f) == lock  # left for its owner


# --------------------------------------------------------------------------- resume


def test_unsafe_change_is_refused_and_the_saved_config_kept(tmp_path):
    workdir = str(tmp_path / "run")
    rundir.acquire(workdir, distill_config(), kind="distill", **SINGLE).release()
    os.makedirs(os.path.join(workdir, "checkpoints", "2"))
    (tmp_path / "run" / "checkpoints" / "2" / "state").write_text("the old run's state")
    before = snapshot(workdir)
    changed = distill_config(**{"teacher.layer": 10, "max_len": 256, "total_steps": 10})
    with pytest.raises(rundir.RunDirError) as error:
        rundir.acquire(workdir, changed, kind="distill", **SINGLE)
    message = one_line(error)
    assert "(max_len 512 -> 256; teacher.layer 12 -> 10)" in message
    assert "total_steps" not in message  # safe fields are not the problem
    assert "Start a fresh run with a new --workdir" in message
    assert snapshot(workdir) == before  # config, marker and history untouched, no lock left


def test_a_start_that_wrote_nothing_takes_a_corrected_config(tmp_path):
    """A start that failed on bad input after its claim (a corpus that is not text, damaged
    teacher weights) left only the claim's files: a corrected config is no change of a run."""
    workdir = str(tmp_path / "run")
    rundir.acquire(workdir, distill_config(), kind="distill", **SINGLE).release()
    os.makedirs(os.path.join(workdir, "checkpoints"))  # an empty folder holds no result
    fixed = distill_config(**{"data.text_files": "corpus/*.txt"})
    with rundir.claim(workdir, fixed, kind="distill", **SINGLE) as run:
        assert not run.resumed and run.changed == {"data.text_files": ["", "corpus/*.txt"]}
    with open(os.path.join(workdir, rundir.CONFIG_FILE)) as f:
        assert json.load(f)["data"]["text_files"] == "corpus/*.txt"
    assert [h["resumed"] for h in read_history(workdir)] == [False, False]


def test_a_sweep_root_of_separately_run_points_is_adopted(tmp_path):
    """Points run as separate jobs (``minilm_jax.sweep --print_only``) leave an unmarked root
    that holds only run directories: the sweep may claim it; any other content is refused,
    and a distillation run never adopts such a folder."""
    root = tmp_path / "sweep"
    for name in ("heads-2", "layer-3"):
        rundir.acquire(str(root / name), distill_config(), kind="distill", **SINGLE).release()
    with pytest.raises(rundir.RunDirError, match="is not empty and is not a minilm_jax run"):
        rundir.acquire(str(root), {"seed": 0}, kind="distill", **SINGLE)
    with rundir.claim(str(root), {"seed": 0}, kind="sweep", holds_runs=True, **SINGLE) as run:
        assert not run.resumed
    assert os.path.isfile(root / rundir.MARKER_FILE)
    other = tmp_path / "other"
    rundir.acquire(str(other / "layer-3"), distill_config(), kind="distill", **SINGLE).release()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(rundir.RunDirError, match=r"it holds layer-3, notes.txt"):
        rundir.acquire(str(other), {"seed": 0}, kind="sweep", holds_runs=True, **SINGLE)


def test_safe_change_is_accepted_and_recorded(tmp_path):
    workdir = str(tmp_path / "run")
    rundir.acquire(workdir, distill_config(), kind="distill", **SINGLE).release()
    longer = distill_config(**{"total_steps": 500_000, "log_every": 10, "data.prefetch_batches": 4})
    longer.distributed.auto = True
    with rundir.claim(workdir, longer, kind="distill") as run:  # process 0 of 1, asked of JAX
        expected = {
            "data.prefetch_batches": [2, 4],
            "distributed.auto": [False, True],
            "log_every": [100, 10],
            "total_steps": [400_000, 500_000],
        }
        assert run.resumed and run.changed == expected
    with open(os.path.join(workdir, rundir.CONFIG_FILE)) as f:
        assert json.load(f)["total_steps"] == 500_000
    history = read_history(workdir)
    assert [h["changed"] for h in history] == [{}, expected]
    assert all(h["pid"] == os.getpid() and h["kind"] == "distill" for h in history)


def test_safe_fields_are_config_fields():
    """Every name in SAFE_FIELDS is a field of the distillation or the fine-tuning config
    (a typo would silently make nothing safe)."""
    glue = configs.load_experiment(os.path.join(REPO, "experiments", "glue.py"))
    names = set(rundir.flatten_config(configs.base_config())) | set(rundir.flatten_config(glue))
    for pattern in rundir.SAFE_FIELDS:
        assert any(rundir.is_safe_field(n) for n in names if n.startswith(pattern[:-1])), pattern
    assert not rundir.is_safe_field("distributed_x") and rundir.is_safe_field("distributed.auto")


def test_safe_fields_are_the_documented_ones():
    with open(os.path.join(REPO, "docs", "run_directory.md")) as f:
        text = f.read()
    table = text.split("| field | why it is safe |")[1].split("\n\n")[0]
    documented = [
        name for row in table.splitlines()[2:] for name in row.split("|")[1].split("`")[1::2]
    ]
    assert documented == list(rundir.SAFE_FIELDS)


# --------------------------------------------------------------------------- multi-host


def test_two_processes_share_process_zeros_decision(tmp_path):
    """A real 2-process jax.distributed run (gloo on 127.0.0.1): process 0 decides, process
    1 gets the same outcome and never touches the files."""
    import portpicker

    port = portpicker.pick_unused_port()
    foreign, fresh = str(tmp_path / "foreign"), str(tmp_path / "fresh")
    os.makedirs(foreign)
    with open(os.path.join(foreign, "config.json"), "w") as f:
        f.write("{}")
    code = (
        "import json, sys, jax\n"
        "jax.config.update('jax_cpu_collectives_implementation', 'gloo')\n"
        f"jax.distributed.initialize('127.0.0.1:{port}', num_processes=2,"
        " process_id=int(sys.argv[1]))\n"
        "from minilm_jax import rundir\n"
        "out = []\n"
        f"for path in ({foreign!r}, {fresh!r}, {fresh!r}):\n"
        "    try:\n"
        "        with rundir.claim(path, {'seed': 0}, kind='distill') as run:\n"
        "            out.append([run.resumed, run.is_main])\n"
        "    except rundir.RunDirError as e:\n"
        "        out.append(str(e))\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    main, other = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert "is not empty and is not a minilm_jax run directory" in main[0]
    assert other[0] == main[0]
    assert main[1:] == [[False, True], [True, True]]
    assert other[1:] == [[False, False], [True, False]]
    assert len(read_history(fresh)) == 2  # written by process 0 only
