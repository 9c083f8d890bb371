"""The `data` section of an experiment config: defaults and validation."""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from minilm_jax.data import sources


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults of the `data` section; experiment configs start from this and override."""
    c = ml_collections.ConfigDict()
    # Sources, concatenated in this order: text files, TFDS datasets, the Python-docs corpus.
    # Local text files: comma-separated globs ("" = none).
    c.text_files = ""
    # "line": one document per non-blank line; "paragraph": blank-line separated blocks.
    c.text_format = "paragraph"
    # TFDS specs "NAME[/CONFIG][:VERSION]:FEATURE", comma-separated ("" = none).
    c.tfds_sources = ""
    # Split read from every TFDS source (TFDS slicing allowed, e.g. "train[:10%]").
    c.tfds_split = "train"
    # Where the prepared TFDS data lives (None = TFDS default, $TFDS_DATA_DIR).
    c.tfds_data_dir = config_dict.placeholder(str)
    # Add the offline corpus of Python's own documentation (the quickstart's data).
    c.python_docs = False
    # Document i of the concatenation is held out for evaluation iff i % k == 0 (0 = none).
    c.eval_every_kth_document = 100
    # Cap on evaluation batches per host per evaluation (None = the whole held-out split).
    c.max_eval_batches = ml_collections.FieldReference(50, field_type=int)
    # Passes over the training documents (None = repeat forever).
    c.num_epochs = config_dict.placeholder(int)
    # Shuffle training documents, seeded by the run seed, in a new order every epoch.
    c.shuffle = True
    # Threads reading documents (helps remote storage; tokenising holds the GIL: 0 = inline).
    c.read_threads = 0
    # Documents read ahead by those threads.
    c.read_buffer_size = 256
    # Batches packed ahead in a background thread, overlapping the train step (0 = none).
    c.prefetch_batches = 2
    # Processes that read, tokenise and pack (Grain mp_prefetch; needs parsed absl flags).
    c.worker_processes = 0
    return c


_CHOICES = {"text_format": sources.TEXT_FORMATS}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(cfg: dict[str, Any], field: str, minimum: int, *, allow_none=False, note=""):
    value = cfg[field]
    if allow_none and value is None:
        return
    if not _is_int(value) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if allow_none else "") + note
        raise ValueError(f"data.{field}={value!r}: expected {allowed}")


def _check_str_list(cfg: dict[str, Any], field: str) -> None:
    value = cfg[field]
    if isinstance(value, str):
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f"data.{field}={value!r}: expected a comma-separated string or a list of strings"
        )


def validate_data_config(cfg: Mapping[str, Any] | ml_collections.ConfigDict) -> dict[str, Any]:
    """Checks every field before anything is read; returns the fields as a plain dict.

    Missing fields take their defaults (so a plain dict with a few keys works); unknown fields
    are errors, since a misspelt field would otherwise be silently ignored.
    """
    if isinstance(cfg, ml_collections.ConfigDict):
        cfg = cfg.to_dict()
    defaults = default_data_config().to_dict()
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ValueError(f"unknown data config field(s) {unknown}; known: {sorted(defaults)}")
    resolved = {**defaults, **dict(cfg)}

    for field, choices in _CHOICES.items():
        if resolved[field] not in choices:
            raise ValueError(f"data.{field}={resolved[field]!r} is not one of {list(choices)}")
    for field in ("text_files", "tfds_sources"):
        _check_str_list(resolved, field)
    for spec in sources.split_list(resolved["tfds_sources"]):
        sources.parse_tfds_spec(spec)
    split, data_dir = resolved["tfds_split"], resolved["tfds_data_dir"]
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"data.tfds_split={split!r}: expected a split name, e.g. 'train'")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ValueError(f"data.tfds_data_dir={data_dir!r}: expected a path or None")
    for field in ("python_docs", "shuffle"):
        if not isinstance(resolved[field], bool):
            raise ValueError(f"data.{field}={resolved[field]!r}: expected True or False")
    if not (
        sources.split_list(resolved["text_files"])
        or sources.split_list(resolved["tfds_sources"])
        or resolved["python_docs"]
    ):
        raise ValueError(
            "no data source: set at least one of data.text_files, data.tfds_sources or "
            "data.python_docs=True"
        )
    k = resolved["eval_every_kth_document"]
    if not _is_int(k) or k < 0 or k == 1:
        raise ValueError(
            f"data.eval_every_kth_document={k!r}: expected 0 (no held-out split) or an "
            "integer >= 2 (1 would hold out every document)"
        )
    _check_int(resolved, "max_eval_batches", 1, allow_none=True, note=" (None = whole split)")
    _check_int(resolved, "num_epochs", 1, allow_none=True, note=" (None = repeat forever)")
    _check_int(resolved, "read_threads", 0)
    _check_int(resolved, "read_buffer_size", 1)
    _check_int(resolved, "prefetch_batches", 0)
    _check_int(resolved, "worker_processes", 0)
    return resolved
