"""Checkpoints (minilm_jax.checkpointing): fallback to the newest intact checkpoint, one-line
errors instead of process aborts, and Ctrl-C / SIGTERM as a clean stop.

The state is a small stand-in for the trainer's (nested dicts and lists of arrays, a step);
the data iterator is a real Grain iterator with a prefetch thread, as the trainer's.
"""

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from minilm_jax import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_state(step, layers=2, width=64):
    rng = np.random.default_rng(step)  # random values: array files do not compress away
    return {
        "step": jnp.asarray(step, jnp.int32),
        "params": {
            "layers": [
                {"w": jnp.asarray(rng.normal(size=(width, width)), jnp.float32)}
                for _ in range(layers)
            ]
        },
    }


def data_iterator():
    dataset = grain.MapDataset.range(1000).batch(2).to_iter_dataset()
    return iter(grain.experimental.ThreadPrefetchIterDataset(dataset, prefetch_buffer_size=2))


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("grain-thread-prefetch")]


def save_run(directory, steps=(1, 2, 3)):
    """Checkpoints of ``steps``, one batch consumed per step; returns each step's next batch."""
    ckpt = checkpointing.Checkpointer(directory, keep=len(steps), use_async=False)
    it, following = data_iterator(), {}
    for step in steps:
        next(it)
        ckpt.save(step, make_state(step), it)
        ckpt.wait()
        position = it.get_state()
        following[step] = int(next(it)[0])  # the batch a resumed run must see first
        it.set_state(position)
    it.close()
    ckpt.close()
    return following


def array_files(step_dir):
    return sorted(
        (p for p in glob.glob(f"{step_dir}/state/**/d/*", recursive=True) if os.path.isfile(p)),
        key=os.path.getsize,
    )


def _remove_array_file(step_dir):
    os.remove(array_files(step_dir)[-1])


def _truncate_array_file(step_dir):
    path = array_files(step_dir)[-1]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _remove_data_position(step_dir):
    os.remove(os.path.join(step_dir, "data", "process_0-of-1.json"))


DAMAGE = {
    "missing array file": _remove_array_file,
    "truncated array file": _truncate_array_file,
    "missing data position": _remove_data_position,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One run's checkpoints 1, 2, 3, copied per test."""
    directory = str(tmp_path_factory.mktemp("run") / "checkpoints")
    return directory, save_run(directory)


def copy_of(saved, tmp_path):
    directory = str(tmp_path / "checkpoints")
    shutil.copytree(saved[0], directory)
    return directory


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(saved, tmp_path, caplog, damage):
    directory = copy_of(saved, tmp_path)
    DAMAGE[damage](os.path.join(directory, "3"))
    ckpt = checkpointing.Checkpointer(directory, keep=3, use_async=False)
    it = data_iterator()
    with caplog.at_level(logging.WARNING):
        step, state = ckpt.restore_latest(checkpointing.abstract_like(make_state(0)), it)
    assert step == 2
    np.testing.assert_array_equal(
        state["params"]["layers"][1]["w"], make_state(2)["params"]["layers"][1]["w"]
    )
    assert int(next(it)[0]) == saved[1][2]  # the data continues right after step 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    warnings = [w for w in warnings if "minilm" in w or "Checkpoint" in w]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"Checkpoint step 3 in {directory} cannot be restored")
    assert "resuming from step 2, the newest intact one" in warnings[0]
    # Nothing deleted: the damaged step is set aside, and the run can save step 3 again.
    assert os.path.isdir(os.path.join(directory, "3.damaged"))
    assert ckpt.all_steps() == [1, 2]
    next(it)
    ckpt.save(3, make_state(3), it)
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2, 3]
    it.close()
    ckpt.close()


def test_no_restorable_checkpoint_is_one_error(saved, tmp_path):
    directory = copy_of(saved, tmp_path)
    for step in (1, 2, 3):
        _remove_array_file(os.path.join(directory, str(step)))
    ckpt = checkpointing.Checkpointer(directory, keep=3, use_async=False)
    it = data_iterator()
    with pytest.raises(checkpointing.CheckpointError) as error:
        ckpt.restore_latest(checkpointing.abstract_like(make_state(0)), it)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint in {directory} can be restored (step 3: ")
    assert "; step 2: " in message and "; step 1: " in message
    assert message.endswith("Start a fresh run with a new --workdir, or move that folder aside")
    assert sorted(os.listdir(directory)) == ["1", "2", "3"]  # nothing moved
    assert not prefetch_threads()  # the iterator was never touched
    nothing = checkpointing.Checkpointer(str(tmp_path / "fresh"), keep=3, use_async=False)
    assert nothing.restore_latest(checkpointing.abstract_like(make_state(0)), it) is None
    it.close()
    ckpt.close()


@pytest.mark.parametrize(
    "target, message",
    [
        (dict(layers=3), "only in this run: params.layers.2)"),
        (dict(layers=1), "only in the checkpoint: params.layers.1)"),
        (dict(width=32), "params.layers.0.w: checkpoint float32[64, 64], this run float32[32, 32]"),
    ],
)
def test_another_structure_or_shape_is_an_error_before_anything_is_read(saved, target, message):
    ckpt = checkpointing.Checkpointer(saved[0], keep=3, use_async=False)
    it = data_iterator()
    position = it.get_state()
    with pytest.raises(checkpointing.CheckpointError, match="written for another model") as error:
        ckpt.restore(3, checkpointing.abstract_like(make_state(0, **target)), it)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert it.get_state() == position and not prefetch_threads()
    with pytest.raises(checkpointing.CheckpointError, match="written for another model"):
        ckpt.check(3, checkpointing.abstract_like(make_state(0, **target)))
    ckpt.check(3, checkpointing.abstract_like(make_state(0)))  # the right tree passes
    it.close()
    ckpt.close()


_ABORT_CHILD = """
import sys, threading
import grain, jax.numpy as jnp
sys.path.insert(0, {tests!r})
import checkpointing_test as t
from minilm_jax import checkpointing
ckpt = checkpointing.Checkpointer({directory!r}, keep=3, use_async=True)
it = t.data_iterator()
try:
    ckpt.restore_latest(checkpointing.abstract_like(t.make_state(0, layers=1)), it)
except checkpointing.CheckpointError as e:
    print("error:", e, flush=True)
    print("prefetch threads:", len(t.prefetch_threads()), flush=True)
    sys.exit(2)  # as the CLI does, without closing the iterator or the checkpointer
"""


def test_restoring_into_fewer_layers_exits_cleanly_not_with_an_abort(saved):
    """The trainer aborted here (exit 134): Grain's restore started the iterator's prefetch
    thread before the state failed, and that thread killed the process at exit."""
    code = _ABORT_CHILD.format(tests=os.path.dirname(__file__), directory=saved[0])
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"error: no checkpoint in {saved[0]} can be restored (step 3: ")
    assert "only in the checkpoint: params.layers.1" in lines[0]
    assert lines[1] == "prefetch threads: 0"
    assert "Fatal Python error" not in result.stderr


_SIGNAL_CHILD = """
import time
from minilm_jax import checkpointing
with checkpointing.StopSignal() as stop:
    print("ready", flush=True)
    while not stop.requested:  # the train loop: one step per iteration
        time.sleep(0.01)
    print("stopping", stop.received, stop.exit_code, flush=True)
    while True:  # a checkpoint that takes long: only a second signal ends this
        time.sleep(0.01)
"""


def test_ctrl_c_sets_the_flag_and_a_second_one_stops_at_once():
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGNAL_CHILD],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGINT)
        assert child.stdout.readline().split() == ["stopping", str(int(signal.SIGINT)), "130"]
        child.send_signal(signal.SIGINT)
        child.wait(timeout=30)
    finally:
        child.kill()
        stderr = child.stderr.read()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGINT  # the default action: no traceback, no cleanup
    assert "Received SIGINT: checkpointing at the next step" in stderr
    assert "Traceback" not in stderr


def test_sigterm_sets_the_flag_and_handlers_are_restored():
    previous = signal.getsignal(signal.SIGTERM)
    with checkpointing.StopSignal() as stop:
        assert not stop.requested and stop.exit_code is None
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.requested and stop.received == signal.SIGTERM and stop.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is previous


def test_multi_host_ctrl_c_is_forwarded_once():
    """Multi-host runs hand Ctrl-C to JAX's preemption service as SIGTERM (here SIGUSR1
    stands in for it): the first SIGINT is recorded and forwarded; the exit code is Ctrl-C's."""
    forwarded = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: forwarded.append(signum))
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with checkpointing.StopSignal(signals=(signal.SIGINT,), forward=signal.SIGUSR1) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 10
            while not forwarded and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stop.received == signal.SIGINT and stop.exit_code == 130
            assert forwarded == [signal.SIGUSR1]
            assert signal.getsignal(signal.SIGTERM) == sigterm  # left to JAX's handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_stopped_loop_exits_with_the_signals_code():
    from minilm_jax import loop

    assert loop.Result(None, 6).exit_code is None  # finished
    assert loop.Result(None, 4, preempted_at=4, signal=signal.SIGINT).exit_code == 130
    assert loop.Result(None, 4, preempted_at=4, signal=signal.SIGTERM).exit_code == 143
    # Stopped by the cluster's preemption notice (multi-host), no signal of this process.
    assert loop.Result(None, 4, preempted_at=4).exit_code == 143
