"""The one path layer: local paths and URLs (``gs://bucket/run``) for the files we write and
read ourselves.

On a pod the corpus, the TFDS data and the workdir live on cloud storage. Our own files (text
corpora, config.json, metrics.jsonl, TensorBoard event files, summary.json, the exported
student) go through here; a path with a ``scheme://`` is handled by fsspec (``gs://`` needs
``gcsfs``, ``s3://`` needs ``s3fs``; ``memory://`` is built in and is what the tests use), a
plain path by the operating system as before. Orbax (checkpoints) and TFDS (``data_dir``)
read URLs themselves: they only need the URL passed through unchanged (``resolve``).

Object stores have no append and no rename: a file written in pieces (metrics.jsonl, event
files) is kept in memory and uploaded whole on every flush (``open_log``), which is what
tensorboardX itself does for ``gs://``; these files stay small (kilobytes per thousand steps).
"""

from __future__ import annotations

import builtins
import contextlib
import glob as glob_lib
import io
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def is_url(path: str | os.PathLike) -> bool:
    """``scheme://...`` (``file://`` included: it goes through fsspec like the others)."""
    return bool(_URL.match(os.fspath(path)))


def resolve(path: str | os.PathLike) -> str:
    """A URL as given; a local path made absolute (``~`` expanded)."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    """``os.path.join`` for local paths, ``/``-joined for URLs."""
    return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def _fs(path: str):
    import fsspec  # noqa: PLC0415  (only URLs need it)

    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as e:  # gs:// without gcsfs, s3:// without s3fs
        raise ImportError(f"{path}: {e}") from e


def open(path: str, mode: str = "r", **kwargs: Any) -> IO:  # noqa: A001  (builtins.open's twin)
    """``builtins.open`` for local paths, an fsspec file for URLs (modes r/rb/w/wb)."""
    if not is_url(path):
        return builtins.open(os.path.expanduser(path), mode, **kwargs)
    fs, inner = _fs(path)
    if "a" in mode:
        raise ValueError(f"{path}: object stores cannot append; use paths.open_log")
    return fs.open(inner, mode, **kwargs)


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(os.path.expanduser(path))
    fs, inner = _fs(path)
    return fs.exists(inner)


def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(os.path.expanduser(path))
    fs, inner = _fs(path)
    return fs.isfile(inner)


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(os.path.expanduser(path))
    fs, inner = _fs(path)
    return fs.isdir(inner)


def listdir(path: str) -> list[str]:
    """The names (not paths) of the entries of a folder."""
    if not is_url(path):
        return os.listdir(os.path.expanduser(path))
    fs, inner = _fs(path)
    return [posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False)]


def size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(os.path.expanduser(path))
    fs, inner = _fs(path)
    return int(fs.size(inner))


def makedirs(path: str) -> None:
    """A folder and its parents (object stores have no folders: nothing to do there)."""
    if not is_url(path):
        os.makedirs(os.path.expanduser(path), exist_ok=True)
        return
    fs, inner = _fs(path)
    fs.makedirs(inner, exist_ok=True)


def glob(pattern: str) -> list[str]:
    """Files (not folders) matching ``pattern``, sorted; URLs keep their scheme."""
    if not is_url(pattern):
        return sorted(
            p
            for p in glob_lib.glob(os.path.expanduser(pattern), recursive=True)
            if os.path.isfile(p)
        )
    fs, inner = _fs(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(inner) if fs.isfile(p))


def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes ``start:end`` of a file in one request (a document of a remote corpus)."""
    if not is_url(path):
        with builtins.open(path, "rb") as f:
            f.seek(start)
            return f.read(end - start)
    fs, inner = _fs(path)
    return fs.cat_file(inner, start=start, end=end)


def upload_folder(local: str, url: str) -> None:
    """Copies a local folder's files to ``url`` (a URL or another local folder)."""
    if not is_url(url):
        shutil.copytree(local, url, dirs_exist_ok=True)
        return
    fs, inner = _fs(url)
    for root, _, files in os.walk(local):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), local)
            fs.put_file(os.path.join(root, name), posixpath.join(inner, *relative.split(os.sep)))


@contextlib.contextmanager
def staged(folder: str, inputs: tuple[str, ...] = ()) -> Iterator[str]:
    """A local folder for writers that only know local files (the Hugging Face export,
    matplotlib): ``folder`` itself when it is local; for a URL, a temporary folder holding a
    copy of ``inputs`` (names in ``folder``), whose other files are uploaded to ``folder`` at
    the end."""
    if not is_url(folder):
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="minilm_jax_staged_") as local:
        for name in inputs:
            if exists(join(folder, name)):
                with (
                    open(join(folder, name), "rb") as src,
                    builtins.open(os.path.join(local, name), "wb") as dst,
                ):
                    shutil.copyfileobj(src, dst)
        yield local
        for name in inputs:
            if os.path.exists(os.path.join(local, name)):
                os.remove(os.path.join(local, name))
        upload_folder(local, folder)


class _WholeFileLog(io.BytesIO):
    """A file written in pieces to an object store: the whole content is uploaded on every
    flush and on close (object stores cannot append)."""

    def __init__(self, path: str, existing: bytes, text: bool):
        super().__init__()
        self.write(existing)
        self._path, self._text = path, text

    def flush(self) -> None:
        super().flush()
        if not self.closed:
            fs, inner = _fs(self._path)
            fs.pipe_file(inner, self.getvalue())

    def close(self) -> None:
        if not self.closed:
            self.flush()
        super().close()


def open_log(path: str, mode: str = "a", encoding: str = "utf-8") -> IO:
    """A file to append to ("a": text, "ab": bytes; "w"/"wb" start empty): the built-in file
    for local paths; for URLs, the existing content plus what is written, uploaded whole on
    every ``flush()``."""
    if not is_url(path):
        return builtins.open(path, mode, encoding=None if "b" in mode else encoding)
    existing = b""
    if mode.startswith("a") and exists(path):
        with open(path, "rb") as f:
            existing = f.read()
    log = _WholeFileLog(path, existing, text="b" not in mode)
    if "b" in mode:
        return log
    return io.TextIOWrapper(log, encoding=encoding, write_through=True)


def iter_lines(path: str) -> Iterator[bytes]:
    """The file's lines as bytes, streamed (indexing a corpus larger than memory)."""
    with open(path, "rb") as f:
        yield from f


class _EventFile:
    """write/flush/close only: tensorboardX fsyncs whatever has a ``fileno``."""

    def __init__(self, log: IO):
        self.write, self.flush, self.close = log.write, log.flush, log.close


class _TensorboardXFactory:
    """tensorboardX's writer registry entry for a URL scheme: event files through fsspec
    (tensorboardX's own ``gs://`` writer needs google-cloud-storage)."""

    def open(self, path: str) -> _EventFile:
        return _EventFile(open_log(path, "wb"))

    def directory_check(self, path: str) -> None:
        makedirs(path)


def tensorboard_logdir(logdir: str) -> str:
    """``logdir`` for ``tensorboardX.SummaryWriter``; for a URL, its scheme is routed through
    this layer first."""
    if is_url(logdir):
        from tensorboardX import record_writer  # noqa: PLC0415

        record_writer.register_writer_factory(_URL.match(logdir).group(1), _TensorboardXFactory())
    return logdir
