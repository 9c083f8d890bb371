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
import run_fixtures

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


# --------------------------------------------------------------------------- through the CLIs
# What a user does with `python -m minilm_jax.main` (and .finetune, .sweep): the same smoke run
# (run_fixtures.distill_argv), run once and copied for each test that starts it again.


def _run_main(argv):
    """``python -m minilm_jax.main ARGV`` in this process; returns the exit code."""
    from minilm_jax import main

    with pytest.raises(SystemExit) as exit_info:
        main.main(list(argv))
    return exit_info.value.code or 0


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """(workdir, corpus) of a finished 6-step smoke distillation: checkpoints 2, 4 and 6."""
    tmp = tmp_path_factory.mktemp("smoke")
    corpus = run_fixtures.write_corpus(tmp)
    workdir = tmp / "run"
    assert _run_main(run_fixtures.distill_argv(workdir, corpus)) == 0
    assert run_fixtures.checkpoint_steps(workdir) == [2, 4, 6]
    return workdir, corpus


def _copy_run(smoke_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run[0], workdir)
    return workdir


def _train_losses(workdir):
    from minilm_jax import metrics

    records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def test_cli_damaged_latest_checkpoint_falls_back_and_training_goes_on(
    smoke_run, tmp_path, capsys, caplog
):
    """The newest checkpoint lost a file: the rerun resumes from the one before (one warning
    naming both steps), and steps 5 and 6 repeat the uninterrupted run's losses and state."""
    import numpy as np

    from minilm_jax import checkpointing, main

    workdir = _copy_run(smoke_run, tmp_path)
    run_fixtures.damage_checkpoint(workdir, 6)
    with caplog.at_level(logging.WARNING):
        code, out, err = run_fixtures.run_in_process(
            main.main, run_fixtures.distill_argv(workdir, smoke_run[1]), capsys
        )
    assert code == 0, err[-3000:]
    assert f"Resumed from step 4 ({workdir}/checkpoints)" in out
    warnings = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(
        f"Checkpoint step 6 in {workdir}/checkpoints cannot be restored (step 6: the state "
        "cannot be read ("
    )
    assert warnings[0].endswith(
        f"resuming from step 4, the newest intact one (moved aside: "
        f"{workdir}/checkpoints/6.damaged)."
    )
    assert run_fixtures.checkpoint_steps(workdir) == [2, 4, 6]
    losses, reference = _train_losses(workdir), _train_losses(smoke_run[0])
    assert sorted(losses) == list(range(1, 7))
    np.testing.assert_allclose(
        [losses[s] for s in (5, 6)], [reference[s] for s in (5, 6)], rtol=1e-6
    )
    resumed = checkpointing.read_state(os.path.join(workdir, "checkpoints"))
    uninterrupted = checkpointing.read_state(os.path.join(smoke_run[0], "checkpoints"))
    assert int(resumed["step"]) == int(uninterrupted["step"]) == 6
    for a, b in zip(
        jax_leaves(resumed["params"]), jax_leaves(uninterrupted["params"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_cli_no_restorable_checkpoint_is_one_line_and_moves_nothing(smoke_run, tmp_path, capsys):
    from minilm_jax import main

    workdir = _copy_run(smoke_run, tmp_path)
    for step in (2, 4, 6):
        run_fixtures.damage_checkpoint(workdir, step)
    before = snapshot(workdir)
    code, _, err = run_fixtures.run_in_process(
        main.main, run_fixtures.distill_argv(workdir, smoke_run[1]), capsys
    )
    assert code == 2
    line = run_fixtures.error_line(err)
    assert line.startswith(
        f"error: no checkpoint in {workdir}/checkpoints can be restored (step 6: "
    )
    assert "; step 4: " in line and "; step 2: " in line
    assert line.endswith("Start a fresh run with a new --workdir, or move that folder aside")
    after = snapshot(workdir)
    history = after.pop(rundir.HISTORY_FILE)  # the start is recorded; nothing else changed
    assert history != before.pop(rundir.HISTORY_FILE) and after == before


def test_cli_unsafe_change_is_refused_and_the_run_kept(smoke_run, tmp_path, capsys):
    from minilm_jax import main

    workdir = _copy_run(smoke_run, tmp_path)
    before = snapshot(workdir)
    argv = run_fixtures.distill_argv(
        workdir, smoke_run[1], "--config.max_len=16", "--config.seed=1", "--config.total_steps=8"
    )
    code, _, err = run_fixtures.run_in_process(main.main, argv, capsys)
    assert code == 2
    assert run_fixtures.error_line(err) == (
        f"error: {workdir} holds a run whose config differs in fields that change what is "
        "trained (max_len 32 -> 16; seed 0 -> 1): resuming would mix two runs. Start a fresh "
        "run with a new --workdir, or restore those values to resume (only fields in "
        "minilm_jax.rundir.SAFE_FIELDS may change; the saved config is run_config.json)"
    )
    assert snapshot(workdir) == before  # config, history, checkpoints, metrics: as they were


def test_cli_safe_change_is_accepted_and_recorded(smoke_run, tmp_path, capsys):
    from minilm_jax import main

    workdir = _copy_run(smoke_run, tmp_path)
    argv = run_fixtures.distill_argv(workdir, smoke_run[1], "--config.total_steps=8")
    code, out, err = run_fixtures.run_in_process(main.main, argv, capsys)
    assert code == 0, err[-3000:]
    assert "Resumed from step 6" in out and "step 8/8" in out
    assert run_fixtures.checkpoint_steps(workdir) == [4, 6, 8]
    with open(os.path.join(workdir, rundir.CONFIG_FILE)) as f:
        assert json.load(f)["total_steps"] == 8
    history = read_history(workdir)
    assert [(h["resumed"], h["changed"]) for h in history] == [
        (False, {}),
        (True, {"total_steps": [6, 8]}),
    ]


def test_cli_two_runs_in_one_workdir_one_is_refused_the_other_finishes(tmp_path, capsys):
    """Run A holds the workdir (paused mid-run, so the timing cannot decide); run B, started
    in it, is refused naming both processes and writes nothing; A then finishes with a
    checkpoint that restores."""
    import numpy as np

    from minilm_jax import checkpointing, main

    corpus = run_fixtures.write_corpus(tmp_path)
    workdir = tmp_path / "run"
    argv = run_fixtures.distill_argv(workdir, corpus)
    first = run_fixtures.start_cli("minilm_jax.main", argv)
    try:
        for line in first.stdout:  # the first progress line: A is inside its loop
            if line.startswith("step 1/6"):
                break
        first.send_signal(signal.SIGSTOP)
        before = snapshot(workdir)
        code, _, err = run_fixtures.run_in_process(main.main, argv, capsys)
        first.send_signal(signal.SIGCONT)
        assert code == 2
        assert run_fixtures.error_line(err).startswith(
            f"error: workdir {workdir} is in use by process {first.pid} on this host (since "
        )
        assert f"this is process {os.getpid()} on host {socket.gethostname()}" in err
        assert snapshot(workdir).keys() >= before.keys()  # B removed nothing of A's
        first_out, first_err = first.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait()
    assert first.returncode == 0, first_err[-3000:]
    assert "step 6/6" in first_out
    state = checkpointing.read_state(str(workdir / "checkpoints"))
    assert int(state["step"]) == 6
    assert all(np.isfinite(x).all() for x in jax_leaves(state["params"]))
    assert [h["pid"] for h in read_history(workdir)] == [first.pid]  # B's start: not recorded
    assert not os.path.exists(workdir / rundir.LOCK_FILE)


def test_cli_ctrl_c_checkpoints_the_current_step_and_exits_130(tmp_path):
    """Ctrl-C (SIGINT) in the middle of a run: the step under way is finished and
    checkpointed, the process exits 130 without a traceback, and the checkpoint holds that
    step's state and data position."""
    import numpy as np

    from minilm_jax import checkpointing

    corpus = run_fixtures.write_corpus(tmp_path)
    workdir = tmp_path / "run"
    argv = run_fixtures.distill_argv(
        workdir, corpus, "--config.total_steps=100000", "--config.checkpoint_every=100000"
    )
    run = run_fixtures.start_cli("minilm_jax.main", argv)
    try:
        for line in run.stdout:
            if line.startswith("step 3/"):
                break
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "Received SIGINT: checkpointing at the next step" in err
    (stopped,) = [line for line in out.splitlines() if line.startswith("Stopped at step ")]
    step = int(stopped.split()[3])
    assert step >= 3
    assert run_fixtures.checkpoint_steps(workdir) == [step]
    assert max(_train_losses(workdir)) == step  # every step up to it logged, none after
    state = checkpointing.read_state(str(workdir / "checkpoints"))
    assert int(state["step"]) == step
    assert all(np.isfinite(x).all() for x in jax_leaves(state["params"]))
    assert not os.path.exists(workdir / rundir.LOCK_FILE)


def _mock_tfds():
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE)


def _signal_at_call(monkeypatch, module, name, call, signum):
    """Makes the ``call``-th call of ``module.name`` send ``signum`` to this process first
    (the user's Ctrl-C arriving during that training step)."""
    real, calls = getattr(module, name), {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_cli_fine_tuning_ctrl_c_then_a_damaged_checkpoint(tmp_path, capsys, caplog, monkeypatch):
    """Fine-tuning (one run of 3 steps, a checkpoint after each): Ctrl-C during step 2 stops
    the sweep with exit 130 and a checkpoint of step 2. With that checkpoint damaged, the
    rerun falls back to step 1 and finishes the run (that a resumed run repeats the
    uninterrupted one is finetune_test's test_a_stopped_run_resumes_where_it_stopped)."""
    from minilm_jax import finetune

    def argv(workdir):
        return [
            "--config",
            f"{run_fixtures.GLUE}:smoke,task=rte",
            "--workdir",
            str(workdir),
            "--config.sweep.learning_rates=(0.001,)",
            "--config.checkpoint_every=1",
        ]

    run_dir = tmp_path / "part" / "runs" / "lr0.001_ep1_seed0"
    with _mock_tfds():
        with monkeypatch.context() as patch:
            _signal_at_call(patch, finetune.parallel, "to_global", 2, signal.SIGINT)
            code, out, err = run_fixtures.run_in_process(
                finetune.main, argv(tmp_path / "part"), capsys
            )
        assert code == 130, err[-3000:]
        assert "Stopped at step 2 on request; checkpoint saved." in out
        assert "Traceback" not in err
        assert run_fixtures.checkpoint_steps(run_dir) == [1, 2]
        assert not os.path.exists(tmp_path / "part" / "results.jsonl")
        run_fixtures.damage_checkpoint(run_dir, 2)
        with caplog.at_level(logging.WARNING):
            code, out, err = run_fixtures.run_in_process(
                finetune.main, argv(tmp_path / "part"), capsys
            )
    assert code == 0, err[-3000:]
    assert "lr0.001_ep1_seed0: resumed from step 1" in out
    (warning,) = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
    assert warning.startswith(f"Checkpoint step 2 in {run_dir}/checkpoints cannot be restored")
    assert "resuming from step 1, the newest intact one" in warning
    with open(tmp_path / "part" / "results.jsonl") as f:
        (line,) = [json.loads(text) for text in f]
    assert line["name"] == "lr0.001_ep1_seed0" and line["result"]["steps"] == 3
    assert sorted(_train_losses(run_dir)) == [1, 2, 3]  # each step once
    assert not os.path.exists(run_dir / "checkpoints")  # a finished run keeps no checkpoints


def test_cli_sweep_ctrl_c_stops_the_sweep_with_130(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the first point of a distillation sweep: that point checkpoints the step
    under way, the sweep stops with 130 and says how to resume. The root is a run directory
    of kind sweep, the point one of kind distill inside it."""
    from minilm_jax import sweep, train

    corpus = run_fixtures.write_corpus(tmp_path)
    root = tmp_path / "sweep"
    argv = [
        "--config",
        run_fixtures.write_sweep_file(tmp_path),
        "--workdir",
        str(root),
        *run_fixtures.SMOKE_FLAGS,
        f"--config.data.text_files={corpus}",
    ]
    _signal_at_call(monkeypatch, train, "next_train_batch", 2, signal.SIGINT)
    code, out, err = run_fixtures.run_in_process(sweep.main, argv, capsys)
    assert code == 130, err[-3000:]
    assert (
        "Sweep stopped: heads-2 was stopped at step 2 (checkpoint saved); rerun the same "
        "command to resume." in out
    )
    assert run_fixtures.checkpoint_steps(root / "heads-2") == [2]
    assert sorted(os.listdir(root)) == sorted(
        [rundir.MARKER_FILE, rundir.CONFIG_FILE, rundir.HISTORY_FILE, "heads-2"]
    )
    for folder, kind in ((root, "sweep"), (root / "heads-2", "distill")):
        with open(folder / rundir.MARKER_FILE) as f:
            assert json.load(f)["kind"] == kind
        assert not os.path.exists(folder / rundir.LOCK_FILE)
    with open(root / rundir.CONFIG_FILE) as f:
        saved = json.load(f)
    assert saved["sweep"] == {"experiment": str(tmp_path / "two_points.py"), "evaluate": []}
    assert saved["data"]["text_files"] == corpus
