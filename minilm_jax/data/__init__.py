"""Pretraining data: text sources (text files, TFDS), held-out split, packing, Grain batches.

The trainer needs `default_data_config`, `validate_data_config` and
`make_pretraining_datasets`; the rest is public for notebooks and tests.
"""

from minilm_jax.data.config import default_data_config, validate_data_config
from minilm_jax.data.packing import (
    FAMILY_SPECIAL_TOKENS,
    DocumentTokenizer,
    PackedSequencesIterDataset,
    SpecialTokens,
    make_sequence,
    pack_documents,
    special_token_ids,
)
from minilm_jax.data.pipeline import (
    eval_batches,
    load_documents,
    make_pretraining_datasets,
    train_dataset,
)
from minilm_jax.data.python_docs import python_docs_corpus, python_docs_documents
from minilm_jax.data.sources import (
    TEXT_FORMATS,
    ConcatDocuments,
    TextFileDocuments,
    TfdsDocuments,
    expand_globs,
    parse_tfds_spec,
)
from minilm_jax.data.split import held_out_split

__all__ = [
    "FAMILY_SPECIAL_TOKENS",
    "TEXT_FORMATS",
    "ConcatDocuments",
    "DocumentTokenizer",
    "PackedSequencesIterDataset",
    "SpecialTokens",
    "TextFileDocuments",
    "TfdsDocuments",
    "default_data_config",
    "eval_batches",
    "expand_globs",
    "held_out_split",
    "load_documents",
    "make_pretraining_datasets",
    "make_sequence",
    "pack_documents",
    "parse_tfds_spec",
    "python_docs_corpus",
    "python_docs_documents",
    "special_token_ids",
    "train_dataset",
    "validate_data_config",
]
