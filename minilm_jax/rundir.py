"""The run directory: a workdir belongs to one minilm_jax run, and to one writer at a time.

    with rundir.claim(workdir, config, kind="distill") as run:
        ...  # run.resumed: a saved config was found (and is compatible); run.changed: safe edits

``claim`` is called before anything is written to ``workdir`` (checkpoints, metrics, the
student). It guarantees, in this order (docs/run_directory.md has the user's view):

1. **Ownership.** A workdir is a minilm_jax run directory iff it holds ``MARKER_FILE``. A
   missing or empty folder is created and marked; a non-empty folder without the marker (a
   Hugging Face model, a home directory) is refused with one line naming what is in it, and
   nothing is written into it. A workdir that is a file or cannot be written is one error.
2. **One writer.** ``LOCK_FILE`` (host, PID, start time) is created atomically (``os.link`` of
   a complete temporary file, so no reader ever sees half a lock). A lock held by a live
   process, or by any process on another host, is refused naming both processes; a lock
   left by a dead process on this host is taken over with one warning line. The lock is
   removed when the ``with`` block ends, also on an exception.
3. **Config-checked resume.** When the folder holds a saved ``CONFIG_FILE``, the new config is
   compared with it (both flattened to dotted names) *before* anything is written. Fields
   outside ``SAFE_FIELDS`` (teacher, layer, relations, heads, shapes, lengths, batch, dtype,
   seed, optimizer, data...) refuse the start, listing each differing field as old -> new;
   fields in ``SAFE_FIELDS`` are accepted. A folder that holds nothing but the claim's own
   files (a start that failed on bad input before writing anything) accepts any config: there
   is no run to mix with. Every start appends one JSON line to ``HISTORY_FILE`` (time, kind,
   whether it resumed, the changed fields as [old, new]).

A workdir given as a URL (``gs://bucket/run``; ``minilm_jax.paths``) gets 1 and 3 through the
path layer, but no lock: object stores have no atomic create-if-absent that fsspec exposes,
so one writer per run directory is the job scheduler's promise there (one warning line).

Multi-host runs: only process 0 touches the files; its decision (or its one-line error) is
broadcast to every process with ``jax.experimental.multihost_utils``, so every host returns
the same ``Claim`` or raises the same ``RunDirError``. Single-process runs need no
``jax.distributed``. ``jax`` itself is imported only for that, so the module stays cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fnmatch
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from minilm_jax import paths

MARKER_FILE = ".minilm_jax_run"  # JSON: kind, created, version; says "this folder is a run"
LOCK_FILE = ".minilm_jax_lock"  # JSON: host, pid, start, time, kind, token
CONFIG_FILE = "run_config.json"  # the resolved config; never clashes with a HF config.json
HISTORY_FILE = "config_history.jsonl"  # one line per start

# Fields that may change between the starts of one run, for every kind of run (distillation,
# fine-tuning, sweeps). Dotted names; "section.*" covers a whole section; a name a config
# does not have is simply never matched. Every other field is part of the run's identity:
# changing it on resume would mix two models or two data streams in one run. The table in
# docs/run_directory.md gives the reason for each entry (a test keeps the two equal).
SAFE_FIELDS: tuple[str, ...] = (
    # How long the run goes on. The learning rate decays linearly to 0 at total_steps, so a
    # longer run stretches the decay from the resumed step on (warmup_steps is not safe).
    "total_steps",
    # What is logged, evaluated, kept and written, and when (not what is measured: the
    # held-out set, eval_batch_size and data.max_eval_batches, stays fixed).
    "log_every",
    "eval_every",
    "eval_at_start",
    "checkpoint_every",
    "keep_checkpoints",
    "async_checkpoints",
    "export_hf",
    "plots",
    "plot_text",
    # The same numbers computed another way (memory against speed).
    "grad_accum_steps",
    "distill.implementation",
    "distill.block_size",
    "remat",
    # How fast the input pipeline reads, and where prepared TFDS data lives (not what it is).
    "data.prefetch_batches",
    "data.read_threads",
    "data.read_buffer_size",
    "data.tfds_data_dir",
    "data_dir",
    # Fine-tuning sweeps: more points (each point is its own run; finished ones are kept).
    "sweep.learning_rates",
    "sweep.epochs",
    "sweep.seeds",
    # Multi-host start-up. With another number of processes the state restores, but the
    # hosts' data positions do not: the data order restarts at an epoch's beginning (warned).
    "distributed.*",
    # Elastic resume: how the same devices' work is split (a checkpoint written on one mesh
    # restores on another, a run preempted on a v5e-32 continues on a v5e-16).
    "mesh.*",
)

# Files of ours that may sit in a folder before its marker does (a claim in progress).
_OWN_FILES = (LOCK_FILE, LOCK_FILE + ".*")
_TAKEOVER_STALE_SECONDS = 30.0  # a takeover guard older than this belongs to a dead process


class RunDirError(ValueError):
    """A workdir that cannot be used for this run; the message is one line."""


@dataclasses.dataclass
class Claim:
    """A claimed run directory (``claim`` yields it; ``release`` drops the lock)."""

    workdir: str
    kind: str
    resumed: bool  # a saved config was found and is compatible with this one
    changed: dict[str, list[Any]]  # safe fields that differ from the saved config: [old, new]
    is_main: bool  # process 0, the one that owns the files
    _lock: dict[str, Any] | None = dataclasses.field(default=None, repr=False)

    @property
    def config_path(self) -> str:
        return os.path.join(self.workdir, CONFIG_FILE)

    def release(self) -> None:
        """Removes the lock if it is still ours (idempotent)."""
        if self._lock is not None:
            _release_lock(self.workdir, self._lock)
            self._lock = None


@contextlib.contextmanager
def claim(
    workdir: str,
    config: Any,
    *,
    kind: str,
    holds_runs: bool = False,
    allow_url: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Claim]:
    """Claims ``workdir`` for a run of ``kind`` with ``config`` for the ``with`` block.

    ``config``: an ``ml_collections.ConfigDict`` or a nested dict. ``holds_runs``: the folder
    is a sweep's root, whose points are run directories of their own; an unmarked folder that
    holds only run directories (points run as separate jobs) is adopted. ``allow_url``: the
    caller writes through ``minilm_jax.paths`` and takes ``gs://...`` workdirs (distillation);
    other callers get a one-line refusal of a URL. ``process_index`` /
    ``process_count`` default to JAX's (multi-host runs); pass 0 / 1 to stay off JAX.
    Raises ``RunDirError`` (one line) when the folder is not this run's to use.
    """
    run = acquire(
        workdir,
        config,
        kind=kind,
        holds_runs=holds_runs,
        allow_url=allow_url,
        process_index=process_index,
        process_count=process_count,
    )
    try:
        yield run
    finally:
        run.release()


def acquire(
    workdir: str,
    config: Any,
    *,
    kind: str,
    holds_runs: bool = False,
    allow_url: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Claim:
    """``claim`` without the ``with``: the caller calls ``Claim.release()`` (in a finally)."""
    if process_index is None or process_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        process_index, process_count = jax.process_index(), jax.process_count()
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
        raise RunDirError(f"workdir={workdir!r}: expected the path of a folder")
    if paths.is_url(workdir) and not allow_url:
        raise RunDirError(
            f"workdir {workdir}: a {kind} run writes to a local folder; only distillation "
            "(python -m minilm_jax.main) takes a URL workdir. Write locally and copy the results"
        )
    workdir = paths.resolve(workdir)
    new = flatten_config(config)
    run = None
    if process_index == 0:
        try:
            if paths.is_url(workdir):
                run = _claim_url(workdir, new, kind)
            else:
                run = _claim_here(workdir, new, kind, holds_runs)
            outcome: dict[str, Any] = {"resumed": run.resumed, "changed": run.changed}
        except RunDirError as e:
            outcome = {"error": str(e)}
            if process_count == 1:
                raise
        except Exception as e:  # noqa: BLE001  (others must not wait forever for process 0)
            if process_count == 1:
                raise
            outcome = {"error": f"{type(e).__name__}: {e}"}
    if process_count > 1:
        outcome = _broadcast_from_main(outcome if process_index == 0 else None, process_index)
    if "error" in outcome:
        if run is not None:
            run.release()
        raise RunDirError(outcome["error"])
    if run is None:
        run = Claim(workdir, kind, outcome["resumed"], outcome["changed"], is_main=False)
    return run


# ---------------------------------------------------------------------------------------------
# Config comparison.
# ---------------------------------------------------------------------------------------------


def flatten_config(config: Any) -> dict[str, Any]:
    """A config (ConfigDict or nested dict) -> ``{"dotted.name": JSON value}``.

    Tuples become lists and other objects their ``str``, exactly as the saved JSON reads back,
    so a saved config and a new one compare equal field by field.
    """
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a ConfigDict or a dict, got {type(config).__name__}")
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping) and (node or not prefix):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = _jsonable(node)

    walk("", config)
    return flat


def unflatten_config(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        node = nested
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def is_safe_field(name: str) -> bool:
    """Whether the dotted config field ``name`` may change between starts of one run."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SAFE_FIELDS)


_ABSENT = "<absent>"


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Fields whose values differ (a field only one side has counts, as ``"<absent>"``)."""
    return {
        name: [old.get(name, _ABSENT), new.get(name, _ABSENT)]
        for name in sorted(set(old) | set(new))
        if old.get(name, _ABSENT) != new.get(name, _ABSENT)
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _show(value: Any, limit: int = 60) -> str:
    text = value if value == _ABSENT else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refusal(workdir: str, unsafe: dict[str, list[Any]]) -> str:
    shown = [f"{name} {_show(old)} -> {_show(new)}" for name, (old, new) in unsafe.items()]
    if len(shown) > 8:
        shown = shown[:8] + [f"and {len(shown) - 8} more"]
    return (
        f"{workdir} holds a run whose config differs in fields that change what is trained "
        f"({'; '.join(shown)}): resuming would mix two runs. Start a fresh run with a new "
        f"--workdir, or restore those values to resume (only fields in "
        f"minilm_jax.rundir.SAFE_FIELDS may change; the saved config is {CONFIG_FILE})"
    )


# ---------------------------------------------------------------------------------------------
# Process 0: the folder, the lock, the config and its history.
# ---------------------------------------------------------------------------------------------


def _claim_here(workdir: str, new: dict[str, Any], kind: str, holds_runs: bool) -> Claim:
    marked = _check_folder(workdir, kind, holds_runs)
    lock = _acquire_lock(workdir, kind)
    try:
        if not marked:
            _check_folder(workdir, kind, holds_runs)  # another claim may have marked it meanwhile
            _write_json(os.path.join(workdir, MARKER_FILE), _marker(kind))
        config_path = os.path.join(workdir, CONFIG_FILE)
        old = _read_saved_config(config_path)
        resumed = old is not None
        changed = config_changes(old, new) if resumed else {}
        unsafe = {name: values for name, values in changed.items() if not is_safe_field(name)}
        if unsafe and _holds_results(workdir):
            raise RunDirError(_refusal(workdir, unsafe))
        # A start that failed before writing anything (bad corpus, bad weights) left only its
        # config: there is nothing to mix, so the corrected config starts the run afresh.
        resumed = resumed and not unsafe
        # Only now, with the lock held and the config accepted, is anything written.
        _write_json(config_path, unflatten_config(new))
        _append_history(workdir, kind, resumed, changed)
    except BaseException:
        _release_lock(workdir, lock)
        raise
    if changed:
        logging.info(
            "%s: %s with changed fields: %s",
            workdir,
            "resuming" if resumed else "starting afresh (the previous start wrote nothing)",
            ", ".join(f"{n} {_show(o)} -> {_show(v)}" for n, (o, v) in changed.items()),
        )
    return Claim(workdir, kind, resumed, changed, is_main=True, _lock=lock)


def _claim_url(workdir: str, new: dict[str, Any], kind: str) -> Claim:
    """``_claim_here`` for a URL workdir: ownership and the config check, no lock."""
    logging.warning(
        "%s: object stores give no lock; make sure one job at a time writes this run", workdir
    )
    marker_path = paths.join(workdir, MARKER_FILE)
    config_path = paths.join(workdir, CONFIG_FILE)
    entries = paths.listdir(workdir) if paths.isdir(workdir) else []
    if MARKER_FILE not in entries and entries:
        raise RunDirError(
            f"workdir {workdir} is not empty and is not a minilm_jax run directory (it holds "
            f"{', '.join(sorted(entries)[:5])}; no {MARKER_FILE}): nothing was written. Choose "
            "a new or empty folder"
        )
    if MARKER_FILE in entries:
        with paths.open(marker_path, encoding="utf-8") as f:
            text = f.read()
        marker_kind = json.loads(text).get("kind") if text.strip() else None
        if marker_kind not in (None, kind):
            raise RunDirError(
                f"workdir {workdir} is a {marker_kind} run directory; a {kind} run needs its "
                "own --workdir"
            )
    old = None
    if paths.exists(config_path):
        with paths.open(config_path, encoding="utf-8") as f:
            old = flatten_config(json.load(f))
    changed = config_changes(old, new) if old is not None else {}
    unsafe = {name: values for name, values in changed.items() if not is_safe_field(name)}
    own = {MARKER_FILE, CONFIG_FILE, HISTORY_FILE}
    if unsafe and any(e not in own for e in entries):
        raise RunDirError(_refusal(workdir, unsafe))
    paths.makedirs(workdir)
    if MARKER_FILE not in entries:
        with paths.open(marker_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(_marker(kind)) + "\n")
    with paths.open(config_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(unflatten_config(new), indent=2, sort_keys=True) + "\n")
    return Claim(workdir, kind, old is not None and not unsafe, changed, is_main=True)


def _check_folder(workdir: str, kind: str, holds_runs: bool = False) -> bool:
    """True when ``workdir`` is already a run directory of ``kind``; False when it is missing
    (then created), empty, or (``holds_runs``) holds only run directories. Raises RunDirError
    for anything else."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise RunDirError(f"workdir {workdir} is a file, not a folder: choose a folder path")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create workdir {workdir}: {_os_reason(e)}") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise RunDirError(
            f"workdir {workdir} is not writable by this user: choose a folder you can write to"
        )
    entries = sorted(
        e for e in os.listdir(workdir) if not any(fnmatch.fnmatchcase(e, p) for p in _OWN_FILES)
    )
    if MARKER_FILE in entries:
        marker_kind = _read_marker(workdir).get("kind")
        if marker_kind not in (None, kind):
            raise RunDirError(
                f"workdir {workdir} is a {marker_kind} run directory; a {kind} run needs its "
                "own --workdir"
            )
        return True
    if holds_runs and all(_is_run_directory(os.path.join(workdir, e)) for e in entries):
        return False
    if entries:
        shown = ", ".join(entries[:5]) + (
            f" and {len(entries) - 5} more" if len(entries) > 5 else ""
        )
        raise RunDirError(
            f"workdir {workdir} is not empty and is not a minilm_jax run directory (it holds "
            f"{shown}; no {MARKER_FILE}): nothing was written. Choose a new or empty folder"
        )
    return False


def _is_run_directory(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER_FILE))


def _holds_results(workdir: str) -> bool:
    """Whether ``workdir`` holds any file besides the claim's own (marker, lock, config,
    history): a checkpoint, metrics, a finished point. Empty folders do not count."""
    own = (MARKER_FILE, CONFIG_FILE, HISTORY_FILE, CONFIG_FILE + ".tmp.*", *_OWN_FILES)
    for root, _, files in os.walk(workdir):
        for name in files:
            if root != workdir or not any(fnmatch.fnmatchcase(name, p) for p in own):
                return True
    return False


def _marker(kind: str) -> dict[str, Any]:
    return {"kind": kind, "created": _now(), "version": _package_version(), "format": 1}


def _read_marker(workdir: str) -> dict[str, Any]:
    """The marker's fields; an empty marker file (``touch``) adopts a folder for any kind."""
    path = os.path.join(workdir, MARKER_FILE)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        return {}
    try:
        marker = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); empty it to adopt the folder") from e
    return marker if isinstance(marker, dict) else {}


def _read_saved_config(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return flatten_config(json.load(f))
    except (json.JSONDecodeError, TypeError) as e:
        raise RunDirError(
            f"{path} is not a valid saved config ({e}): the run cannot be checked for "
            "changes. Start a fresh run with a new --workdir (or delete that file to resume "
            "without the check)"
        ) from e


def _append_history(workdir: str, kind: str, resumed: bool, changed: dict[str, list[Any]]) -> None:
    record = {
        "time": _now(),
        "kind": kind,
        "resumed": resumed,
        "changed": changed,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "version": _package_version(),
    }
    with open(os.path.join(workdir, HISTORY_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _write_json(path: str, value: Any) -> None:
    """Writes ``path`` whole or not at all (temporary file, then an atomic rename)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The lock.
# ---------------------------------------------------------------------------------------------


def _lock_record(kind: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": _process_start(os.getpid()),
        "time": _now(),
        "kind": kind,
        "token": uuid.uuid4().hex,
    }


def _acquire_lock(workdir: str, kind: str) -> dict[str, Any]:
    path = os.path.join(workdir, LOCK_FILE)
    record = _lock_record(kind)
    for _ in range(5):  # each retry follows a lock that vanished or changed hands meanwhile
        if _create_exclusively(path, record):
            return record
        holder = _read_lock(path)
        if holder is None:
            continue
        if not _is_stale(holder):
            raise RunDirError(_in_use(workdir, holder, record))
        if _take_over(path, holder, record):
            logging.warning(
                "%s: took over the lock of process %s on this host, which is no longer running",
                workdir,
                holder.get("pid"),
            )
            return record
        time.sleep(0.05)
    raise RunDirError(f"could not take the lock {path}: other runs keep claiming it; try again")


def _in_use(workdir: str, holder: dict[str, Any], me: dict[str, Any]) -> str:
    where = "this host" if holder.get("host") == me["host"] else f"host {holder.get('host')}"
    stale = (
        "" if holder.get("host") == me["host"] else " (a lock from another host cannot be checked)"
    )
    return (
        f"workdir {workdir} is in use by process {holder.get('pid')} on {where} (since "
        f"{holder.get('time')}){stale}; this is process {me['pid']} on host {me['host']}. "
        f"One run per workdir: wait for it or stop it; if it is gone, delete "
        f"{os.path.join(workdir, LOCK_FILE)}"
    )


def _create_exclusively(path: str, record: dict[str, Any]) -> bool:
    """Creates ``path`` holding ``record`` unless it exists; atomic, and complete when visible."""
    tmp = f"{path}.{record['pid']}.{record['token']}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: O_EXCL (a reader may see it empty)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            return True
    except OSError as e:
        raise RunDirError(
            f"cannot write into workdir {os.path.dirname(path)}: {_os_reason(e)}"
        ) from e
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _read_lock(path: str) -> dict[str, Any] | None:
    """The lock's record; None if it vanished. A lock being written (O_EXCL fallback) is
    read again briefly; one that stays unreadable is treated as held by an unknown process."""
    for _ in range(20):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            if isinstance(record, dict):
                return record
        except json.JSONDecodeError:
            pass
        time.sleep(0.05)
    return {"host": "unknown", "pid": "unknown", "time": "unknown"}


def _is_stale(holder: dict[str, Any]) -> bool:
    """Only a lock from this host can be judged: stale iff its process no longer exists
    (or its PID now belongs to a process started at another time)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by another user
    start = holder.get("start")
    return start is not None and _process_start(pid) not in (None, start)


def _take_over(path: str, stale: dict[str, Any], record: dict[str, Any]) -> bool:
    """Replaces the stale lock with ``record``, unless someone else is doing so. A guard file
    makes the check-and-replace atomic between two claimers."""
    guard = path + ".takeover"
    try:
        fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - os.path.getmtime(guard) > _TAKEOVER_STALE_SECONDS:
                os.unlink(guard)
        return False
    os.close(fd)
    try:
        if _read_lock(path) != stale:
            return False
        tmp = f"{path}.{record['pid']}.{record['token']}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, path)
        return True
    finally:
        os.unlink(guard)


def _release_lock(workdir: str, record: dict[str, Any]) -> None:
    path = os.path.join(workdir, LOCK_FILE)
    holder = _read_lock(path) if os.path.exists(path) else None
    if holder is not None and holder.get("token") == record["token"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused PID."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # Field 22; the command name (field 2) may hold spaces, so count after its ")".
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


def _broadcast_from_main(outcome: dict[str, Any] | None, process_index: int) -> dict[str, Any]:
    """Process 0's outcome (JSON) on every process."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    payload = json.dumps(outcome).encode() if process_index == 0 else b""
    length = int(multihost_utils.broadcast_one_to_all(np.int32(len(payload))))
    buffer = np.zeros(length, np.uint8)
    if process_index == 0:
        buffer[:] = np.frombuffer(payload, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8)
    return json.loads(received.tobytes().decode())


def _os_reason(e: OSError) -> str:
    return e.strerror.lower() if e.strerror else type(e).__name__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _package_version() -> str:
    from importlib import metadata  # pylint: disable=import-outside-toplevel

    try:
        return metadata.version("minilm_jax")
    except metadata.PackageNotFoundError:
        return "unknown"
