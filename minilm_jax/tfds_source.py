"""Opening a prepared TFDS dataset for random access, with one helpful error when it is not.

Every evaluation task (GLUE, SQuAD, XNLI, MLQA) reads its splits through
``tfds.data_source(name, split=..., download=False)``: array_record files, random access, no
TensorFlow input pipeline, and never a download (on a pod every host would start one). When
the dataset is not there, the error names the dataset, the split and the data_dir, says why,
and prints the one command that prepares it. ``tensorflow_datasets`` is imported only here.
"""

from __future__ import annotations

from typing import Any, Sequence

TFDS_EXTRA = "pip install 'minilm_jax[tfds]'"


def import_tfds(name: str):
    """``tensorflow_datasets``, or an ImportError that names the dataset and the extra."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            f"reading TFDS dataset {name!r} needs tensorflow-datasets: {TFDS_EXTRA}"
        ) from e
    return tfds


def prepare_command(name: str, data_dir: str | None = None) -> str:
    """The shell command that downloads and prepares ``name`` (e.g. "squad/v2.0") as
    array_record files, the format ``tfds.data_source`` reads."""
    where = f", data_dir={data_dir!r}" if data_dir else ""
    return (
        f'python -c "import tensorflow_datasets as tfds; tfds.builder({name!r}{where})'
        f".download_and_prepare(file_format='array_record')\""
    )


def open_source(name: str, split: str, data_dir: str | None = None) -> Sequence[Any]:
    """``tfds.data_source(name, split=split, data_dir=data_dir, download=False)``.

    Returns a random-access sequence of example dicts (features as the TFDS builder defines
    them). Raises ImportError without tensorflow-datasets and ValueError when the dataset or
    split cannot be opened (message: dataset, split, data_dir, the reason, the command that
    prepares it).
    """
    tfds = import_tfds(name)
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # noqa: BLE001  (TFDS raises many types; all mean "cannot open")
        raise ValueError(
            f"cannot open TFDS dataset {name!r} split {split!r} (data_dir={data_dir or ''!r}) "
            f"as an array_record data source: {_why_not_open(tfds, name, split, data_dir, e)}. "
            f"Prepare it once with: {prepare_command(name, data_dir)}"
        ) from e


def _why_not_open(tfds, name: str, split: str, data_dir: str | None, error: Exception) -> str:
    """The most useful reason: not prepared, prepared in another file format, no such split,
    or else the first line of TFDS's own error."""
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        if not builder.is_prepared():
            return f"it is not prepared in {builder.data_dir}"
        file_format = getattr(builder.info, "file_format", None)
        file_format = str(getattr(file_format, "value", file_format) or "").lower()
        if file_format and file_format != "array_record":
            return (
                f"it is prepared in {builder.data_dir} as {file_format}, "
                f"not array_record (remove that folder, or choose another data_dir, first)"
            )
        splits = sorted(builder.info.splits)
        base = split.split("[")[0]
        if "+" not in split and base not in splits:
            return f"it has no split {base!r}; its splits: {splits}"
    except Exception:  # noqa: BLE001  (the original error says more)
        pass
    # First line only: TFDS may append the names of all its datasets.
    return (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(":. ")
