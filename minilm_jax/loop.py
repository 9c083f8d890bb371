"""The training loop every trainer runs: steps, metric window and progress line, held-out
evaluations, checkpoints, preemption and the NaN stop.

    result = loop.run(step_fn, state, batches, cadence=..., checkpointer=..., ...)

`step_fn(state, batch) -> (state, metrics)` is a jitted step with everything else bound
(`steps.train_step`). Metrics of a step are read one step late, so the host never waits for
the device between steps; a checkpoint is only written once every step before it has been
checked finite, so no checkpoint holds a NaN state.
"""

from __future__ import annotations

import dataclasses
import signal as signal_lib
from typing import Any, Callable, Iterator

import jax

from minilm_jax import checkpointing, metrics

# Metrics of a step that are bookkeeping, not values to average over a logging window.
_NOT_AVERAGED = ("finite", "tokens", "lr")


class TrainingError(RuntimeError):
    """A run that had to stop (a non-finite loss); the message says what is kept on disk."""


@dataclasses.dataclass(frozen=True)
class Cadence:
    total_steps: int  # the run ends after this step
    log_every: int  # steps between metric records and progress lines
    checkpoint_every: int  # steps between checkpoints (one is also written at the end)
    eval_every: int = 0  # steps between held-out evaluations (0 = none inside the loop)


@dataclasses.dataclass
class Result:
    state: Any
    last_step: int  # the last step done (< total_steps when preempted or data ran out)
    preempted_at: int | None = None  # the step checkpointed on a stop request
    signal: int | None = None  # the signal this process received (None: the cluster's notice)
    data_exhausted: bool = False

    @property
    def exit_code(self) -> int | None:
        """The shell's code for a stopped run, 128 + signal: 130 after Ctrl-C, 143 after
        SIGTERM or a preemption notice from the cluster; None when the run was not stopped."""
        if self.preempted_at is None:
            return None
        return 128 + int(self.signal if self.signal is not None else signal_lib.SIGTERM)


def stop_requested(stop: checkpointing.StopSignal | None, ckpt, step: int) -> bool:
    """SIGTERM/SIGINT in a single-process run; in multi-host runs, a preemption notice that
    every host has reached at this step (so all of them checkpoint the same step; Ctrl-C
    reaches it too, see ``checkpointing.stop_signal``)."""
    if jax.process_count() > 1:
        return ckpt is not None and ckpt.reached_preemption(step)
    return stop is not None and stop.requested


def run(
    step_fn: Callable[[Any, Any], tuple[Any, dict]],
    state: Any,
    next_batch: Callable[[], Any],
    *,
    cadence: Cadence,
    start_step: int,
    writer: metrics.MetricWriter | None,
    progress: metrics.Progress | None,
    checkpointer: checkpointing.Checkpointer | None = None,
    data_iterator: Any = None,
    evaluate: Callable[[Any, int], Any] | None = None,
    stop: checkpointing.StopSignal | None = None,
    nonfinite_hint: str = "Lower the learning rate or check the data.",
) -> Result:
    """Runs steps `start_step + 1 .. cadence.total_steps`.

    `next_batch()` returns the next global batch or raises StopIteration when finite data
    runs out (the run then ends at the last full step, with a checkpoint). `evaluate(state,
    step)` runs every `cadence.eval_every` steps (not at the last step: the caller evaluates
    the final state). With a `checkpointer`, checkpoints hold the state and `data_iterator`'s
    position.
    """
    pending: list[tuple[int, Any]] = []
    window = metrics.MetricWindow()

    def drain(keep_last: int) -> None:
        while len(pending) > keep_last:
            step, m = pending.pop(0)
            m = jax.device_get(m)
            if not m["finite"]:
                kept = None
                if checkpointer is not None:
                    checkpointer.wait()
                    kept = checkpointer.latest_step()
                where = (
                    f"step {kept} in {checkpointer.directory}" if kept is not None else "none yet"
                )
                raise TrainingError(
                    f"Non-finite loss or gradient at step {step} (loss={float(m['loss'])}, "
                    f"grad_norm={float(m['grad_norm'])}); the update was not applied. "
                    f"Last good checkpoint: {where}. {nonfinite_hint}"
                )
            if progress is not None:
                progress.add_tokens(float(m["tokens"]))
            window.add(m)
            if step % cadence.log_every == 0 or step == cadence.total_steps:
                means = window.means(exclude=_NOT_AVERAGED)
                means["lr"] = float(m["lr"])
                if progress is not None:
                    means.update(progress.report(step, means))
                if writer is not None:
                    writer.write(step, means, kind="train")

    def save(step: int) -> None:
        drain(keep_last=0)  # never checkpoint a state whose steps we have not checked
        if checkpointer is not None and checkpointer.latest_step() != step:
            checkpointer.save(step, state, data_iterator)

    for step in range(start_step + 1, cadence.total_steps + 1):
        try:
            batch = next_batch()
        except StopIteration:  # finite data ran out before total_steps
            last = step - 1
            if last > start_step:
                save(last)
            return Result(state, last, data_exhausted=True)
        state, step_metrics = step_fn(state, batch)
        pending.append((step, step_metrics))
        drain(keep_last=1)
        preempted = stop_requested(stop, checkpointer, step)
        if step % cadence.checkpoint_every == 0 or preempted or step == cadence.total_steps:
            save(step)
        if preempted:
            if checkpointer is not None:
                checkpointer.wait()
            received = stop.received if stop is not None else None
            return Result(state, step, preempted_at=step, signal=received)
        if (
            evaluate is not None
            and cadence.eval_every
            and step % cadence.eval_every == 0
            and step != cadence.total_steps
        ):
            evaluate(state, step)
    drain(keep_last=0)
    return Result(state, max(cadence.total_steps, start_step))


def batches_from(iterator: Iterator[Any], to_global: Callable[[Any], Any]) -> Callable[[], Any]:
    """`next_batch` for `run`: the iterator's next host rows, assembled into a global batch."""
    return lambda: to_global(next(iterator))
