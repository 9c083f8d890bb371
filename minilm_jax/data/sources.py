"""Text sources: random-access sequences of documents (plain `str`).

Every source is a `collections.abc.Sequence[str]` (`len` + integer indexing), so the pipeline
can shard, shuffle and hold out documents by index without reading the text first:

- `TextFileDocuments`: text files, one document per line ("line") or blank-line
  separated blocks ("paragraph"). The files are indexed once (byte offsets) and read through
  `mmap`, so a corpus larger than memory costs 16 bytes per document. No TensorFlow. A file
  that is not UTF-8 text (binary, Latin-1, UTF-16) is refused by `check_utf8_text`. Globs and
  files may be URLs (``gs://bucket/corpus/*.txt``, through `minilm_jax.paths`): such files are
  indexed by streaming them once, and each document is one ranged read (`data.read_threads`
  overlaps those reads).
- `TfdsDocuments`: one string feature of a prepared TFDS dataset, read with
  `tfds.data_source` (array_record, random access). `tensorflow_datasets` is imported here
  only, when such a source is built.
- `ConcatDocuments`: several sources back to back (e.g. Wikipedia + BookCorpus).
"""

from __future__ import annotations

import bisect
import codecs
import collections.abc
import mmap
import re
from typing import Any, Sequence

import numpy as np

from minilm_jax import paths

TEXT_FORMATS = ("line", "paragraph")

# NAME[/CONFIG][:VERSION]:FEATURE. The feature is split off at the last colon, so a version
# ("wikipedia/20230601.en:1.0.0:text") stays part of the name; nested features use "/".
_TFDS_FEATURE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
_TFDS_NAME = re.compile(r"^[a-z0-9_]+(/[A-Za-z0-9_.\-]+)?(:[0-9]+\.[0-9]+\.[0-9]+)?$")
TFDS_SPEC_FORM = "NAME[/CONFIG][:VERSION]:FEATURE, e.g. 'wikipedia/20230601.en:text'"

# A text file is refused when more than this fraction of the bytes checked are not UTF-8 text:
# invalid UTF-8 or NUL bytes (UTF-16 text and binary files are full of those). A web-scraped
# UTF-8 corpus may carry a few stray bytes (each read as U+FFFD), far below 0.1%; Latin-1
# text in a European language has 1-5% accented bytes that are invalid UTF-8.
MAX_NON_TEXT_FRACTION = 0.001
# The check reads this many evenly spaced windows of each file (the whole file when it is
# smaller than all of them together): at most 1 MiB per file, so it costs milliseconds even
# for files of many GB, next to indexing, which reads every byte in Python. A file whose bad
# bytes all lie between the windows passes; its documents then carry U+FFFD characters.
UTF8_CHECK_WINDOWS = 16
UTF8_CHECK_WINDOW_BYTES = 64 * 1024
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # an undecodable byte under "surrogateescape"


def split_list(value: str | Sequence[str]) -> list[str]:
    """A comma-separated string or a list of strings -> list of non-empty stripped items."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def expand_globs(patterns: str | Sequence[str]) -> list[str]:
    """Files matched by each glob, sorted per glob, in glob order, without duplicates.

    Raises FileNotFoundError naming the first glob that matches no file: a typo in a data path
    must not silently train on less data.
    """
    files: list[str] = []
    for pattern in split_list(patterns):
        matched = paths.glob(pattern)  # local or a URL
        if not matched:
            raise FileNotFoundError(f"data.text_files: the glob {pattern!r} matched no files")
        files.extend(path for path in matched if path not in files)
    return files


def check_utf8_text(path: str) -> None:
    """Raises ValueError, naming ``path``, unless the file reads as UTF-8 text (at most
    ``MAX_NON_TEXT_FRACTION`` of the sampled bytes invalid UTF-8 or NUL)."""
    size = paths.size(path)
    window = UTF8_CHECK_WINDOW_BYTES
    if size <= UTF8_CHECK_WINDOWS * window:
        offsets, window = [0], size
    else:
        offsets = [
            i * (size - window) // (UTF8_CHECK_WINDOWS - 1) for i in range(UTF8_CHECK_WINDOWS)
        ]
    bad = checked = 0
    with paths.open(path, "rb") as f:
        for offset in offsets:
            f.seek(offset)
            chunk = f.read(window)
            if offset:  # a window may start inside a multi-byte character: skip its tail
                skip = 0
                while skip < min(3, len(chunk)) and 0x80 <= chunk[skip] <= 0xBF:
                    skip += 1
                chunk = chunk[skip:]
            # Not final unless at the end of the file: a character cut by the window's end is
            # held back, not counted as invalid.
            decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
            text = decoder.decode(chunk, final=offset + window >= size)
            bad += text.count("\0") + (0 if chunk.isascii() else len(_ESCAPED_BYTE.findall(text)))
            checked += len(chunk)
    if checked and bad > MAX_NON_TEXT_FRACTION * checked:
        raise ValueError(
            f"data.text_files: {path} is not UTF-8 text: {bad / checked:.1%} of the {checked:,} "
            f"bytes checked are invalid UTF-8 or NUL (at most {MAX_NON_TEXT_FRACTION:.1%} "
            "allowed). Convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8` for Latin-1 text) "
            "or leave it out of data.text_files"
        )


def _index_lines(path: str) -> tuple[np.ndarray, np.ndarray]:
    starts, ends, offset = [], [], 0
    with paths.open(path, "rb") as f:
        for line in f:
            if line.strip():
                starts.append(offset)
                ends.append(offset + len(line))
            offset += len(line)
    return np.asarray(starts, np.int64), np.asarray(ends, np.int64)


def _index_paragraphs(path: str) -> tuple[np.ndarray, np.ndarray]:
    starts, ends, offset, start = [], [], 0, None
    with paths.open(path, "rb") as f:
        for line in f:
            if line.strip():
                if start is None:
                    start = offset
            elif start is not None:
                starts.append(start)
                ends.append(offset)
                start = None
            offset += len(line)
    if start is not None:
        starts.append(start)
        ends.append(offset)
    return np.asarray(starts, np.int64), np.asarray(ends, np.int64)


class TextFileDocuments(collections.abc.Sequence):
    """Documents of local text files (UTF-8), in file order.

    "line": every non-blank line is a document. "paragraph": every block of non-blank lines
    (blocks separated by one or more blank lines) is a document; its lines are joined with
    single spaces, since line breaks inside a block are hard wrapping, not content (a byte-level
    BPE tokenizer would otherwise emit newline tokens). A file that is not UTF-8 text is
    refused here (`check_utf8_text`); the few stray bytes a text file may hold become U+FFFD
    rather than stopping a long run on one bad byte.
    """

    def __init__(self, paths: Sequence[str], text_format: str):
        if text_format not in TEXT_FORMATS:
            raise ValueError(f"data.text_format={text_format!r} is not one of {list(TEXT_FORMATS)}")
        index = _index_lines if text_format == "line" else _index_paragraphs
        self._paths, self._starts, self._ends, counts = [], [], [], []
        for path in paths:
            check_utf8_text(path)
            starts, ends = index(path)
            if len(starts):  # mmap cannot map an empty file; files without documents drop out
                self._paths.append(path)
                self._starts.append(starts)
                self._ends.append(ends)
                counts.append(len(starts))
        if not self._paths:
            raise ValueError(
                f"data.text_files: no documents in {list(paths)} (every file is empty or blank)"
            )
        self._cumulative = np.cumsum(counts).tolist()
        self._paragraphs = text_format == "paragraph"
        self._maps: list[mmap.mmap] | None = None  # opened lazily, and again after pickling

    def __len__(self) -> int:
        return self._cumulative[-1]

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        file, local = _locate(self._cumulative, i)
        if self._maps is None:  # built whole, then published: reader threads may race here
            self._maps = [_map_file(path) for path in self._paths]
        start, end = int(self._starts[file][local]), int(self._ends[file][local])
        text = self._maps[file][start:end].decode("utf-8", errors="replace")
        text = text.replace("\ufeff", "")  # a byte-order mark is not text
        return join_lines(text) if self._paragraphs else text.strip()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    @property
    def paths(self) -> list[str]:
        """The files that hold at least one document."""
        return list(self._paths)


def _map_file(path: str) -> mmap.mmap | _RemoteFile:
    if paths.is_url(path):
        return _RemoteFile(path)
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class _RemoteFile:
    """``file[start:end]`` of a file behind a URL: one ranged read per document."""

    def __init__(self, path: str):
        self.path = path

    def __getitem__(self, span: slice) -> bytes:
        return paths.read_range(self.path, span.start, span.stop)


def parse_tfds_spec(spec: str) -> tuple[str, str]:
    """'wikipedia/20230601.en:text' -> ('wikipedia/20230601.en', 'text')."""
    name, sep, feature = spec.strip().rpartition(":")
    if not sep or not _TFDS_NAME.match(name) or not _TFDS_FEATURE.match(feature):
        raise ValueError(f"data.tfds_sources: bad TFDS spec {spec!r}; expected {TFDS_SPEC_FORM}")
    return name, feature


def _locate(cumulative: list[int], i: int) -> tuple[int, int]:
    """Document ``i`` of a concatenation (``cumulative`` = running sizes of the parts) ->
    (part, index within the part); negative ``i`` counts from the end, as for a list."""
    total = cumulative[-1]
    if not -total <= i < total:
        raise IndexError(f"document {i} out of range for {total} documents")
    i %= total
    part = bisect.bisect_right(cumulative, i)
    return part, i - (cumulative[part - 1] if part else 0)


def join_lines(text: str) -> str:
    """Non-blank lines stripped and joined with single spaces: one document never carries
    newlines, which byte-level BPE would turn into tokens the teachers never saw mid-text."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def as_text(value: Any) -> str:
    """A TFDS string feature (bytes, 0-d array or str) as text."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class TfdsDocuments(collections.abc.Sequence):
    """One string feature of a prepared TFDS dataset, read by random access.

    Never downloads: on a pod every host would start preparing Wikipedia. Prepare the data
    once (`tfds build NAME --file_format=array_record`) and point `data_dir` at it.
    """

    def __init__(self, spec: str, *, split: str = "train", data_dir: str | None = None):
        name, feature = parse_tfds_spec(spec)
        try:
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        except ImportError as e:
            raise ImportError(
                f"data.tfds_sources={spec!r} needs tensorflow-datasets: "
                "pip install 'minilm_jax[tfds]'"
            ) from e
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # noqa: BLE001  (TFDS raises many types; all mean "cannot open")
            # First line only: TFDS appends the names of all its datasets; the chained
            # exception keeps the whole text.
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(
                f"data.tfds_sources: cannot open {name!r} split {split!r} "
                f"(data_dir={data_dir!r}) as an array_record data source ({reason}). Prepare "
                f"it with `tfds build {name} --file_format=array_record` first."
            ) from e
        features = self._source.dataset_info.features
        node = features
        for key in feature.split("/"):
            if not hasattr(node, "keys") or key not in node.keys():
                raise ValueError(
                    f"data.tfds_sources: {name!r} has no feature {feature!r}; its features: "
                    f"{_feature_paths(features)}"
                )
            node = node[key]
        if not isinstance(node, tfds.features.Text):
            raise ValueError(
                f"data.tfds_sources: feature {feature!r} of {name!r} is "
                f"{type(node).__name__}, not a string (Text) feature"
            )
        if len(self._source) == 0:
            raise ValueError(f"data.tfds_sources: {name!r} split {split!r} has no examples")
        self._feature_path = feature.split("/")
        self.spec = spec

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        value = self._source[i]
        for key in self._feature_path:
            value = value[key]
        return join_lines(as_text(value))


def _feature_paths(features: Any, prefix: str = "") -> list[str]:
    paths = []
    for key in features.keys():
        child = features[key]
        if hasattr(child, "keys"):
            paths.extend(_feature_paths(child, f"{prefix}{key}/"))
        else:
            paths.append(f"{prefix}{key}")
    return paths


class ConcatDocuments(collections.abc.Sequence):
    """Several document sequences back to back; index i runs through them in order."""

    def __init__(self, sources: Sequence[Sequence[str]]):
        if not sources:
            raise ValueError("ConcatDocuments needs at least one source")
        self.sources = list(sources)
        self._cumulative = np.cumsum([len(s) for s in self.sources]).tolist()

    def __len__(self) -> int:
        return self._cumulative[-1]

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        part, local = _locate(self._cumulative, i)
        return self.sources[part][local]
