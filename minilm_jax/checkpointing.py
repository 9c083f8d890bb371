"""The only module that imports Orbax: save, restore and resume the student's training state.

A checkpoint holds what the run cannot recompute: the student's parameters, the optimizer
state, the step, the RNG key (all inside one ``state`` pytree) and the data iterator's
position (one small JSON file per host, written by Grain's Orbax handler). The teacher is
never saved: it is reloaded from its Hugging Face folder.

Restoring never takes the process down. ``Checkpointer.restore`` first compares the
checkpoint's own metadata (every array's path, shape and dtype) with the state to restore
into, so a checkpoint of another model or optimizer is a ``CheckpointError`` naming what
differs, before any array is read. It then restores the state and only after that the data
iterator: Grain's handler starts the iterator's prefetch thread, and a daemon thread still
running when Python exits aborts the process (exit 134, "terminate called without an active
exception": the thread, inside Grain's pybind11 index shuffle, is killed while re-taking the
GIL during interpreter shutdown). Orbax restores the items of one call in sorted order,
``data`` before ``state``, so restoring both at once started that thread before a state
mismatch was found. ``restore_latest`` walks back from the newest checkpoint to the newest
one that restores (one warning line; the broken ones are moved aside, not deleted).

Elastic resume: arrays are restored with the shardings of the state to restore into, so a
checkpoint written on one mesh (say data 2 x fsdp 4 on 8 chips) continues on another (8 x 1,
or 4 chips); Orbax reads each device's part. With the same number of hosts the data
position restores too; with another number it cannot (``_hosts_changed``).
"""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import sys
import threading
from typing import Any

import grain
import grain.checkpoint  # noqa: F401  (registers Grain's Orbax handler)
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from minilm_jax import paths

_STATE, _DATA = "state", "data"
DAMAGED_SUFFIX = ".damaged"  # a checkpoint that could not be restored is renamed STEP.damaged


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into this run; the message is one line."""


class Checkpointer:
    """(Async) checkpoints of ``{state, data iterator}`` in ``directory``, the newest ``keep``
    kept. The train loop decides when to save (periodically, on preemption, at the end)."""

    def __init__(self, directory: str, *, keep: int, use_async: bool = True):
        self.directory = paths.resolve(directory)  # a URL (gs://) goes to Orbax as it is
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=use_async,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(_STATE, _DATA)
        )
        self.data_restarted_at: int | None = None  # see _hosts_changed

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Starts saving ``state`` and the iterator's position as ``step``."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    _STATE: ocp.args.StandardSave(state),
                    _DATA: grain.checkpoint.CheckpointSave(data_iterator),
                }
            ),
            force=True,  # the caller chose this step; skip Orbax's own interval policy
        )

    def check(self, step: int, abstract_state: Any) -> None:
        """Raises CheckpointError unless checkpoint ``step`` holds exactly the arrays of
        ``abstract_state`` (same paths, shapes and dtypes). Reads metadata only."""
        reason = _agree(self._mismatch(step, abstract_state))
        if reason:
            raise CheckpointError(f"checkpoint step {step} in {self.directory}: {reason}")

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """Restores ``state`` (shapes, dtypes and shardings of ``abstract_state``) and moves
        ``data_iterator`` to the saved position in place (not when the number of hosts
        changed: ``_hosts_changed``). Returns the restored state.

        Raises CheckpointError (one line) when the checkpoint does not fit ``abstract_state``
        or a file in it is missing or unreadable; ``data_iterator`` is then untouched."""
        state, reason = self._try_restore(step, abstract_state, data_iterator)
        if reason:
            raise CheckpointError(f"checkpoint step {step} in {self.directory}: {reason}")
        return state

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest checkpoint that restores, or None if there is none.

        A newer checkpoint that cannot be restored (missing or truncated file, another
        structure or shape) is skipped with one warning line naming it and the step used, and
        renamed ``STEP.damaged`` so that the resumed run can save that step again. When no
        checkpoint restores, raises CheckpointError listing each step and why."""
        failures: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            state, reason = self._try_restore(step, abstract_state, data_iterator)
            if reason:
                failures.append((step, reason))
                continue
            moved = self._set_aside([s for s, _ in failures]) if failures else []
            if moved:  # process 0 only: it moves the folders and speaks for every host
                logging.warning(
                    "%s in %s cannot be restored (%s); resuming from step %d, the newest intact "
                    "one (moved aside: %s).",
                    _steps_phrase([s for s, _ in failures]),
                    self.directory,
                    "; ".join(f"step {s}: {r}" for s, r in failures),
                    step,
                    ", ".join(moved),
                )
            return step, state
        if not failures:
            return None
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored ("
            + "; ".join(f"step {s}: {r}" for s, r in failures)
            + "). Start a fresh run with a new --workdir, or move that folder aside"
        )

    def reached_preemption(self, step: int) -> bool:
        """True when the cluster's preemption notice reached every host (multi-host runs)."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until async saves are on disk (before exiting or reading them)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    # -----------------------------------------------------------------------------------------

    def _try_restore(self, step: int, abstract_state: Any, data_iterator: Any):
        """(state, None) or (None, one-line reason). Every phase ends with all processes
        agreeing, so no host goes on to a collective restore that another host skipped."""
        reason = _agree(self._mismatch(step, abstract_state))
        if reason:
            return None, reason
        state, reason = None, None
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_state)})
            )
            state = restored[_STATE]
        except Exception as e:  # noqa: BLE001  (Orbax/TensorStore raise many types)
            reason = f"the state cannot be read ({_first_line(e)})"
        if reason:
            _silence_abandoned_reads()
        reason = _agree(reason)
        if reason:
            return None, reason
        if self._hosts_changed(step):
            return state, None  # the iterator starts its epoch afresh (_hosts_changed)
        # Last, since Grain's handler starts the iterator's prefetch thread (module docstring).
        try:
            self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{_DATA: grain.checkpoint.CheckpointRestore(data_iterator)}
                ),
            )
        except Exception as e:  # noqa: BLE001
            reason = f"the data position cannot be read ({_first_line(e)})"
        reason = _agree(reason)
        return (None, reason) if reason else (state, None)

    def saved_process_count(self, step: int) -> int | None:
        """How many hosts wrote checkpoint ``step`` (Grain writes one data-position file per
        host, ``process_I-of-N.json``); None when the folder does not say."""
        counts = set()
        try:
            for path in (epath.Path(self.directory) / str(step) / _DATA).iterdir():
                match = re.fullmatch(r"process_\d+-of-(\d+)\.json", path.name)
                if match:
                    counts.add(int(match.group(1)))
        except OSError:
            return None
        return counts.pop() if len(counts) == 1 else None

    def _hosts_changed(self, step: int) -> bool:
        """Elastic resume onto another number of hosts: the state restores onto any mesh, but
        each host's data position belongs to its shard of the documents, which the new host
        count redraws. Then the iterators are left at the start of their (new) epoch order
        and the run goes on from the saved step, with one warning line."""
        saved = self.saved_process_count(step)
        if saved is None or saved == jax.process_count():
            return False
        self.data_restarted_at = step
        if jax.process_index() == 0:
            logging.warning(
                "Checkpoint step %d in %s was written by %d host(s), this run has %d: the "
                "training state is restored onto this mesh, but the data position is not (the "
                "documents are resharded over %d host(s)); the data order restarts at the "
                "beginning of an epoch, so documents read before step %d are read again.",
                step,
                self.directory,
                saved,
                jax.process_count(),
                jax.process_count(),
                step,
            )
        return True

    def _mismatch(self, step: int, abstract_state: Any) -> str | None:
        """Why checkpoint ``step`` cannot hold ``abstract_state``, from its metadata; None if
        it can."""
        path = epath.Path(self.directory) / str(step) / _STATE
        try:
            saved = _shapes(ocp.StandardCheckpointHandler().metadata(path).tree)
        except Exception as e:  # noqa: BLE001
            return f"its metadata cannot be read ({_first_line(e)})"
        wanted = _shapes(abstract_state)
        only_saved = _collapse(set(saved) - set(wanted), wanted)
        only_wanted = _collapse(set(wanted) - set(saved), saved)
        other = [
            f"{name}: checkpoint {_fmt(saved[name])}, this run {_fmt(wanted[name])}"
            for name in sorted(set(saved) & set(wanted))
            if saved[name] != wanted[name]
        ]
        if not (only_saved or only_wanted or other):
            return None
        parts = []
        if only_saved:
            parts.append("only in the checkpoint: " + _few(only_saved))
        if only_wanted:
            parts.append("only in this run: " + _few(only_wanted))
        if other:
            parts.append(f"{len(other)} arrays of another shape or dtype: " + _few(other, 2))
        return "it was written for another model or optimizer (" + "; ".join(parts) + ")"

    def _set_aside(self, steps: list[int]) -> list[str]:
        """Process 0 renames checkpoints ``steps`` to ``STEP.damaged`` (``.damaged-2``... if
        taken) and returns the new paths; the other processes wait for it and return []."""
        moved = []
        if jax.process_index() == 0:
            for step in steps:
                source = os.path.join(self.directory, str(step))
                target, n = source + DAMAGED_SUFFIX, 1
                while os.path.exists(target):
                    n += 1
                    target = f"{source}{DAMAGED_SUFFIX}-{n}"
                os.rename(source, target)
                moved.append(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

            multihost_utils.sync_global_devices("checkpoints_set_aside")
        self._manager.reload()
        return moved


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves with the shardings of ``tree``, for restoring into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def read_state(directory: str, step: int | None = None) -> Any:
    """The saved ``state`` pytree (host numpy arrays) of ``step`` (default: the latest), for
    inspection in tests and notebooks; training restores with ``Checkpointer.restore``."""
    with ocp.CheckpointManager(
        paths.resolve(directory),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=(_STATE, _DATA),
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {directory}")
        # Onto this process's first device, whatever mesh and host count wrote it.
        saved = ocp.StandardCheckpointHandler().metadata(
            epath.Path(paths.resolve(directory)) / str(step) / _STATE
        )
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved.tree
        )
        restored = manager.restore(
            step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)})
        )
    return jax.tree.map(np.asarray, restored[_STATE])


# ---------------------------------------------------------------------------------------------
# Metadata comparison.
# ---------------------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
    """One step of a pytree path as Orbax names it (dict key, attribute or index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"params.layers.0.attention.query.kernel.value": (shape, dtype)}`` of the array
    leaves of a state (ShapeDtypeStructs, arrays) or of a checkpoint's metadata tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(_key_name(k) for k in path): _shape_dtype(leaf) for path, leaf in leaves}


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], str]:
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    if shape is None:  # a Python scalar
        value = np.asarray(leaf)
        shape, dtype = value.shape, value.dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    return tuple(int(d) for d in shape), name


def _collapse(names: set[str], other: dict[str, Any]) -> list[str]:
    """Names cut to their shortest prefix that the other side lacks entirely: a missing layer
    is named once (``params.layers.2``), not once per array in it."""
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if not any(o == prefix or o.startswith(prefix + ".") for o in other):
                out.add(prefix)
                break
    return sorted(out, key=lambda n: (n.count("."), n))  # whole layers first


def _fmt(shape_dtype: tuple[tuple[int, ...], str]) -> str:
    shape, dtype = shape_dtype
    return f"{dtype}{list(shape)}"


def _steps_phrase(steps: list[int]) -> str:
    if len(steps) == 1:
        return f"Checkpoint step {steps[0]}"
    return "Checkpoint steps " + ", ".join(str(s) for s in steps)


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of the innermost cause: Orbax wraps TensorStore's precise error (which
    file, which byte range) in a generic one."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _silence_abandoned_reads() -> None:
    """After one array fails to read, Orbax leaves the reads of the others running in an
    event loop it has closed. Each such coroutine, when finished or collected, reports
    "Exception ignored in: <coroutine ...>" with two tracebacks, some of them seconds later
    from TensorStore's threads. They say nothing the one warning line does not, so from the
    first failed restore on, those reports (and only those) are dropped; everything else
    still reaches the previous hook."""
    global _ABANDONED_READS_SILENCED
    if _ABANDONED_READS_SILENCED:
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if code is not None and f"orbax{os.sep}checkpoint" in code.co_filename:
            return
        previous(unraisable)

    sys.unraisablehook = hook
    _ABANDONED_READS_SILENCED = True
    gc.collect()  # the reads abandoned so far


_ABANDONED_READS_SILENCED = False


def _agree(reason: str | None) -> str | None:
    """``reason`` if this process failed; in multi-process runs, a failure on any process
    fails all of them (with that process's reason, or a note), so all take the same path."""
    if jax.process_count() == 1:
        return reason
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    failed = np.asarray(multihost_utils.process_allgather(np.int32(reason is not None)))
    if reason is None and failed.any():
        return f"it failed on process {int(np.argmax(failed))}"
    return reason


# ---------------------------------------------------------------------------------------------
# Signals.
# ---------------------------------------------------------------------------------------------


class StopSignal:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the train loop polls, so the run saves a
    checkpoint at the next step boundary and exits cleanly instead of dying mid-step.

    A second signal is a hard stop: the first one puts back the operating system's default
    action, so the second ends the process at once even when it is stuck inside a C call
    (a compile, a collective) where no Python handler could run. Checkpoints already on disk
    stay intact (Orbax writes each into a temporary folder and renames it when complete).

    ``received`` is the first signal's number (None before one arrives); ``exit_code`` is
    the shell's convention for it, 128 + number (130 for SIGINT, 143 for SIGTERM). Use as a
    context manager, or call ``restore_handlers()`` when the loop ends.

    ``forward``: a signal this process sends itself on the first one. Multi-host runs (see
    ``stop_signal``) forward Ctrl-C as SIGTERM to JAX's preemption service, which makes every
    host stop at the same step.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), *, forward: int | None = None):
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}
        self._signals = tuple(signals)
        self._forward = forward
        self.received: int | None = None
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):  # noqa: ARG002 (signal handler signature)
        self.received = signum
        self._event.set()
        for sig in self._signals:  # the next signal ends the process at once
            signal.signal(sig, signal.SIG_DFL)
        logging.warning(
            "Received %s: checkpointing at the next step, then stopping (send it again to stop "
            "at once, without a checkpoint).",
            signal.Signals(signum).name,
        )
        if self._forward is not None:
            os.kill(os.getpid(), self._forward)

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def exit_code(self) -> int | None:
        return None if self.received is None else 128 + int(self.received)

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> StopSignal:
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore_handlers()


def stop_signal() -> StopSignal:
    """The ``StopSignal`` a training loop installs.

    Single-process runs: SIGTERM and SIGINT. Multi-host runs: every host must checkpoint the
    same step, which JAX's preemption service (started by ``jax.distributed.initialize``)
    arranges for SIGTERM, from its own handler (a Python one would replace it); the loop asks
    it through ``Checkpointer.reached_preemption``. So there only SIGINT is ours, and it is
    forwarded to that service as SIGTERM: Ctrl-C on any host stops all of them at one step.
    Without the service (``jax_enable_preemption_service=False``) no host could tell the
    others, so no handler is installed: Ctrl-C and SIGTERM end the processes at once.
    """
    if jax.process_count() == 1:
        return StopSignal()
    if not (jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service):
        return StopSignal(signals=())
    return StopSignal(signals=(signal.SIGINT,), forward=signal.SIGTERM)
