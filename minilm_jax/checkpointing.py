"""The only module that imports Orbax: save, restore and resume the student's training state.

A checkpoint holds what the run cannot recompute: the student's parameters, the optimizer
state, the step, the RNG key (all inside one ``state`` pytree) and the data iterator's
position (one small JSON file per host, written by Grain's Orbax handler). The teacher is
never saved: it is reloaded from its Hugging Face folder.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import grain
import grain.checkpoint  # noqa: F401  (registers Grain's Orbax handler)
import jax
import numpy as np
import orbax.checkpoint as ocp

_STATE, _DATA = "state", "data"


class Checkpointer:
    """(Async) checkpoints of ``{state, data iterator}`` in ``directory``, the newest ``keep``
    kept. The train loop decides when to save (periodically, on preemption, at the end)."""

    def __init__(self, directory: str, *, keep: int, use_async: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=use_async,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(_STATE, _DATA)
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

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

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """Restores ``state`` (shapes, dtypes and shardings of ``abstract_state``) and moves
        ``data_iterator`` to the saved position in place. Returns the restored state."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    _STATE: ocp.args.StandardRestore(abstract_state),
                    _DATA: grain.checkpoint.CheckpointRestore(data_iterator),
                }
            ),
        )
        return restored[_STATE]

    def reached_preemption(self, step: int) -> bool:
        """True when the cluster's preemption notice reached every host (multi-host runs)."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until async saves are on disk (before exiting or reading them)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves with the shardings of ``tree``, for restoring into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def read_state(directory: str, step: int | None = None) -> Any:
    """The saved ``state`` pytree (host numpy arrays) of ``step`` (default: the latest), for
    inspection in tests and notebooks; training restores with ``Checkpointer.restore``."""
    with ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=(_STATE, _DATA),
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {directory}")
        restored = manager.restore(
            step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore()})
        )
    return jax.tree.map(np.asarray, restored[_STATE])


class StopSignal:
    """Turns SIGTERM into a flag the train loop polls, so a preempted run saves a
    checkpoint at the next step boundary instead of dying mid-step."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self._event = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):  # noqa: ARG002 (signal handler signature)
        logging.warning(
            "Received signal %d: checkpointing at the next step, then stopping.", signum
        )
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
