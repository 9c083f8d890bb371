"""Metrics out of a run: TensorBoard event files (tensorboardX, no TensorFlow), a JSONL file
and a live progress line. Only process 0 writes; other hosts get a writer that does nothing."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import jax

from minilm_jax import paths


class MetricWriter:
    """Writes scalars to ``workdir/tensorboard`` and ``workdir/metrics.jsonl`` (host 0 only).

    ``resume_step``: the run continues from that checkpointed step, so records of later steps
    (written before the interruption, and about to be written again) are dropped from
    metrics.jsonl first: the file holds each step once, in order. (TensorBoard shows the
    latest value of a re-logged step by itself.)
    """

    def __init__(
        self, workdir: str, *, enabled: bool | None = None, resume_step: int | None = None
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # protobuf-only event writer

            path = paths.join(workdir, "metrics.jsonl")  # workdir may be a URL (paths.py)
            if resume_step is not None and paths.exists(path):
                _truncate_after(path, resume_step)
            logdir = paths.tensorboard_logdir(paths.join(workdir, "tensorboard"))
            self._tb = SummaryWriter(logdir, flush_secs=10)
            self._jsonl = paths.open_log(path, "a")

    def write(self, step: int, scalars: Mapping[str, float], *, kind: str) -> None:
        """``kind`` prefixes TensorBoard tags ("train", "eval") and labels the JSONL record."""
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(f"{kind}/{name}", float(value), step)
        record = {"step": int(step), "kind": kind, "time": time.time()}
        record.update({k: float(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def read_jsonl(path: str) -> list[dict]:
    with paths.open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, step: int) -> None:
    """Drops the records of steps after ``step`` (atomically: a crash leaves the old file)."""
    with paths.open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) == len(lines):
        return
    if paths.is_url(path):  # an object store replaces an object whole
        with paths.open(path, "w", encoding="utf-8") as f:
            f.writelines(kept)
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class MetricWindow:
    """Sums of step metrics between two log lines; ``means`` averages and resets."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._steps = 0

    def add(self, step_metrics: Mapping[str, float]) -> None:
        for k, v in step_metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._steps += 1

    def means(self, exclude: tuple[str, ...] = ()) -> dict[str, float]:
        out = {k: v / max(self._steps, 1) for k, v in self._sums.items() if k not in exclude}
        self._sums, self._steps = {}, 0
        return out


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """One line per report: step/total, total and per-relation loss, lr, tokens/s, ETA.

    Throughput is measured between reports (tokens are real, non-padded tokens), so the
    first report, which includes compilation, is labelled as such.
    """

    def __init__(self, total_steps: int, start_step: int, stream=None, prefix: str = ""):
        self.total_steps = total_steps
        self._prefix = prefix
        self._stream = stream or sys.stdout
        self._last_time = time.perf_counter()
        self._last_step = start_step
        self._tokens = 0.0
        self._first = True
        self.enabled = jax.process_index() == 0

    def add_tokens(self, tokens: float) -> None:
        self._tokens += tokens

    def report(self, step: int, scalars: Mapping[str, float]) -> dict[str, float]:
        """Prints the line; returns throughput figures to log alongside the losses."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        steps = max(step - self._last_step, 1)
        tokens_per_s = self._tokens / elapsed
        eta = (self.total_steps - step) * elapsed / steps
        terms = " ".join(
            f"{k.removeprefix('loss/')} {v:.4f}"
            for k, v in scalars.items()
            if k.startswith("loss/")
        )
        line = (
            f"{self._prefix}step {step}/{self.total_steps}  loss {scalars['loss']:.4f}"
            f"{f' ({terms})' if terms else ''}  "
            f"lr {scalars['lr']:.2e}  {tokens_per_s:,.0f} tok/s  "
            f"ETA {format_duration(eta)}{'  (incl. compile)' if self._first else ''}"
        )
        if self.enabled:
            print(line, file=self._stream, flush=True)
        self._last_time, self._last_step, self._tokens, self._first = now, step, 0.0, False
        return {"tokens_per_s": tokens_per_s, "seconds_per_step": elapsed / steps}
