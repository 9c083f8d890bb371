"""The pretraining input pipeline: documents -> host shard -> shuffle -> tokens -> packed batches.

    train_iterator, eval_batches_fn = make_pretraining_datasets(
        config.data, tokenizer, teacher_config.family, max_len=512, host_batch_size=32,
        eval_batch_size=32, seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count())

Training (Grain): the training documents are sharded by index over hosts (disjoint), shuffled
(per epoch, seeded), repeated, tokenised, packed into full sequences and batched, dropping a
last partial batch; a background thread (or `worker_processes` processes) prepares batches
ahead. `train_iterator` is a `grain.DatasetIterator`: `get_state()`/`set_state()` and
`grain.checkpoint.CheckpointSave/CheckpointRestore` resume with exactly the next batch. Call
`train_iterator.close()` when done: it stops the prefetch thread or worker processes.

Evaluation: the held-out documents, in order, packed the same way. Every host packs the
whole held-out split (capped) and keeps every `process_count`-th sequence, so all hosts
yield the same number of batches; the last batches are filled with all-padding rows
(attention_mask 0), which a masked loss must skip.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
import ml_collections
import numpy as np
import tokenizers

from minilm_jax.data import config as config_lib
from minilm_jax.data import packing, python_docs, sources, split

Batch = dict[str, np.ndarray]  # input_ids, attention_mask, token_type_ids: int32 [b, T]


def load_documents(cfg: Mapping[str, Any] | ml_collections.ConfigDict) -> Sequence[str]:
    """Every configured source, concatenated: text files, TFDS datasets, Python docs."""
    cfg = config_lib.validate_data_config(cfg)
    parts: list[Sequence[str]] = []
    if sources.split_list(cfg["text_files"]):
        files = sources.expand_globs(cfg["text_files"])
        parts.append(sources.TextFileDocuments(files, cfg["text_format"]))
    for spec in sources.split_list(cfg["tfds_sources"]):
        parts.append(
            sources.TfdsDocuments(spec, split=cfg["tfds_split"], data_dir=cfg["tfds_data_dir"])
        )
    if cfg["python_docs"]:
        parts.append(python_docs.python_docs_documents())
    return parts[0] if len(parts) == 1 else sources.ConcatDocuments(parts)


def train_dataset(
    documents: Sequence[str],
    tokenizer: packing.DocumentTokenizer,
    special: packing.SpecialTokens,
    *,
    max_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    read_threads: int = 0,
    read_buffer_size: int = 256,
    prefetch_batches: int = 0,
    worker_processes: int = 0,
) -> grain.IterDataset:
    """This host's training batches; num_epochs=None repeats forever.

    worker_processes > 0 runs everything up to batching in that many processes, each on a
    slice of this host's documents (the batch order then depends on the number of workers;
    a checkpoint restores only with the same number).
    """
    # Shard before shuffling: each host owns a fixed, disjoint set of documents for the run.
    docs = grain.MapDataset.source(documents)[process_index::process_count]
    if len(docs) == 0:
        raise ValueError(
            f"host {process_index} of {process_count} gets no training documents "
            f"({len(documents)} in total): use more data or fewer hosts"
        )
    if shuffle:
        docs = docs.shuffle(seed=seed)  # reseeded with the epoch number by repeat()
    docs = docs.repeat(num_epochs).map(tokenizer)
    token_arrays = docs.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_buffer_size)
    )
    packed = packing.PackedSequencesIterDataset(token_arrays, special, max_len)
    batches = packed.batch(batch_size, drop_remainder=True)
    if worker_processes:
        batches = batches.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_processes, per_worker_buffer_size=max(prefetch_batches, 1)
            )
        )
    elif prefetch_batches:
        batches = grain.experimental.ThreadPrefetchIterDataset(
            batches, prefetch_buffer_size=prefetch_batches
        )
    return batches


def _padding_rows(n: int, max_len: int, pad_id: int) -> Batch:
    return {
        "input_ids": np.full((n, max_len), pad_id, np.int32),
        "attention_mask": np.zeros((n, max_len), np.int32),
        "token_type_ids": np.zeros((n, max_len), np.int32),
    }


def eval_batches(
    documents: Sequence[str],
    tokenizer: packing.DocumentTokenizer,
    special: packing.SpecialTokens,
    *,
    max_len: int,
    batch_size: int,
    max_batches: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    read_threads: int = 0,
) -> list[Batch]:
    """This host's evaluation batches: deterministic, equally many on every host."""
    limit = None if max_batches is None else max_batches * batch_size * process_count
    token_arrays = (
        grain.MapDataset.source(documents)
        .map(tokenizer)
        .to_iter_dataset(grain.ReadOptions(num_threads=read_threads))
    )
    packed = packing.PackedSequencesIterDataset(token_arrays, special, max_len)
    sequences = list(itertools.islice(packed, limit))
    mine = sequences[process_index::process_count]
    per_host = -(-len(sequences) // process_count)  # the same number on every host
    batches = []
    for start in range(0, per_host, batch_size):
        rows = mine[start : start + batch_size]
        batch = {
            key: np.stack([row[key] for row in rows]) if rows else np.zeros((0, max_len), np.int32)
            for key in ("input_ids", "attention_mask", "token_type_ids")
        }
        missing = batch_size - len(rows)
        if missing:
            pad = _padding_rows(missing, max_len, special.pad_id)
            batch = {key: np.concatenate([batch[key], pad[key]]) for key in batch}
        for array in batch.values():
            array.flags.writeable = False  # shared by every evaluation: must stay identical
        batches.append(batch)
    return batches


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_arguments(family, max_len, host_batch_size, eval_batch_size, seed, index, count):
    if family not in packing.FAMILY_SPECIAL_TOKENS:
        raise ValueError(f"family={family!r} is not one of {list(packing.FAMILY_SPECIAL_TOKENS)}")
    for name, value, minimum in (
        ("max_len", max_len, 3),
        ("host_batch_size", host_batch_size, 1),
        ("eval_batch_size", eval_batch_size, 1),
        ("process_count", count, 1),
    ):
        if not _is_int(value) or value < minimum:
            raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    if not _is_int(index) or not 0 <= index < count:
        raise ValueError(f"process_index={index!r}: expected 0 <= process_index < {count}")
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed!r}: expected an integer in [0, 2**32)")


def make_pretraining_datasets(
    data_config: Mapping[str, Any] | ml_collections.ConfigDict,
    tokenizer: tokenizers.Tokenizer,
    family: str,
    *,
    max_len: int,
    host_batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[grain.DatasetIterator, Callable[[], Iterator[Batch]] | None]:
    """(training batch iterator, eval_batches_fn) for this host.

    Batches are dicts of int32 numpy arrays [host_batch_size, max_len] (eval:
    [eval_batch_size, max_len]): input_ids, attention_mask (1 real, 0 padding),
    token_type_ids (zeros). `eval_batches_fn()` returns a fresh iterator over the same
    batches every call (packed on the first call, then cached); it is None when
    data.eval_every_kth_document is 0.
    """
    cfg = config_lib.validate_data_config(data_config)
    _check_arguments(
        family, max_len, host_batch_size, eval_batch_size, seed, process_index, process_count
    )
    special = packing.special_token_ids(tokenizer, family)
    doc_tokenizer = packing.DocumentTokenizer(tokenizer)
    documents = load_documents(cfg)
    train_docs, eval_docs = split.held_out_split(documents, cfg["eval_every_kth_document"])
    logging.info(
        "data: %d documents, %d for training, %d held out; host %d of %d",
        len(documents),
        len(train_docs),
        len(eval_docs),
        process_index,
        process_count,
    )
    train_iterator = iter(
        train_dataset(
            train_docs,
            doc_tokenizer,
            special,
            max_len=max_len,
            batch_size=host_batch_size,
            seed=int(seed),
            shuffle=cfg["shuffle"],
            num_epochs=cfg["num_epochs"],
            process_index=process_index,
            process_count=process_count,
            read_threads=cfg["read_threads"],
            read_buffer_size=cfg["read_buffer_size"],
            prefetch_batches=cfg["prefetch_batches"],
            worker_processes=cfg["worker_processes"],
        )
    )
    if not len(eval_docs):
        return train_iterator, None

    cache: list[list[Batch]] = []

    def eval_batches_fn() -> Iterator[Batch]:
        if not cache:
            cache.append(
                eval_batches(
                    eval_docs,
                    doc_tokenizer,
                    special,
                    max_len=max_len,
                    batch_size=eval_batch_size,
                    max_batches=cfg["max_eval_batches"],
                    process_index=process_index,
                    process_count=process_count,
                    read_threads=cfg["read_threads"],
                )
            )
        return iter(cache[0])

    return train_iterator, eval_batches_fn
