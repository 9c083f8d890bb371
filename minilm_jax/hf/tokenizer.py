"""Tokenizers of Hugging Face checkpoint folders, as `tokenizers.Tokenizer` objects."""

from __future__ import annotations

import os
import shutil

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minilm_jax.hf.weights import read_json_object

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "spm.model",  # DeBERTa-v3
)


def as_path(path, what: str = "checkpoint folder") -> str:
    """`path` (str or os.PathLike) as a str; anything else (None, a number...) is an error."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {path!r}")
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise TypeError(f"{what} must be a non-empty str path, got {path!r}")
    return path


def check_folder(path) -> str:
    path = as_path(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {path!r} does not exist (or is not a folder)")
    return path


def _token_text(value, default: str) -> str:
    """tokenizer_config.json stores special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content", default)
    return default if value is None else value


def _wordpiece_tokenizer(path: str) -> tokenizers.Tokenizer:
    """A BERT WordPiece tokenizer from vocab.txt, set up as transformers' BertTokenizer:
    tokenizer_config.json decides lowercasing, accent stripping and Chinese-character splitting."""
    settings = {}
    config_file = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config_file):
        settings = read_json_object(config_file)
    special = {
        name: _token_text(settings.get(f"{name}_token"), default)
        for name, default in (
            ("unk", "[UNK]"),
            ("sep", "[SEP]"),
            ("cls", "[CLS]"),
            ("pad", "[PAD]"),
            ("mask", "[MASK]"),
        )
    }
    tok = tokenizers.Tokenizer(
        models.WordPiece.from_file(os.path.join(path, "vocab.txt"), unk_token=special["unk"])
    )
    tok.add_special_tokens([t for t in special.values() if tok.token_to_id(t) is not None])
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True) is not False,
        strip_accents=settings.get("strip_accents"),  # None: follow lowercasing, as BERT does
        lowercase=settings.get("do_lower_case", True) is not False,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = special["cls"], special["sep"]
    for name in (cls, sep):
        if tok.token_to_id(name) is None:
            raise ValueError(f"{path}/vocab.txt lacks the special token {name!r}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def load_tokenizer(path) -> tokenizers.Tokenizer:
    """The checkpoint's tokenizer: tokenizer.json, else a WordPiece tokenizer from vocab.txt.

    Special tokens ([CLS]/[SEP] or <s>/</s>) are added by `encode`. Padding and truncation
    settings stored in tokenizer.json are switched off: the data pipeline decides lengths."""
    path = check_folder(path)
    file = os.path.join(path, "tokenizer.json")
    if os.path.isfile(file):
        try:
            tok = tokenizers.Tokenizer.from_file(file)
        except Exception as e:  # the Rust library raises a bare Exception
            raise ValueError(f"{file} is not a valid tokenizer file: {e}") from e
    elif os.path.isfile(os.path.join(path, "vocab.txt")):
        tok = _wordpiece_tokenizer(path)
    else:
        raise FileNotFoundError(
            f"no tokenizer in {path!r}: looked for tokenizer.json and vocab.txt "
            f"(re-save other tokenizers with transformers' "
            f"AutoTokenizer.save_pretrained, which writes tokenizer.json)"
        )
    return prepared_tokenizer(tok, copy=False)


def prepared_tokenizer(
    tokenizer: tokenizers.Tokenizer, *, max_length: int | None = None, copy: bool = True
) -> tokenizers.Tokenizer:
    """`tokenizer` as every pipeline here uses it: never padding, and truncating only to
    `max_length` when one is given (never by default).

    A tokenizer.json often carries padding and truncation settings for inference
    (all-MiniLM-L6-v2's pads and truncates to 128), which would silently cut documents,
    sentence pairs and contexts; each pipeline decides lengths itself. Works on a copy, so the
    caller's tokenizer is unchanged, unless `copy=False`."""
    tok = tokenizers.Tokenizer.from_str(tokenizer.to_str()) if copy else tokenizer
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length)
    return tok


def tokenizer_files(path) -> list[str]:
    """Names of the tokenizer files in the checkpoint folder `path` (an error if it has none)."""
    path = check_folder(path)
    present = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(path, n))]
    if "tokenizer.json" not in present and "vocab.txt" not in present:
        raise FileNotFoundError(
            f"no tokenizer in {path!r}: looked for tokenizer.json and vocab.txt"
        )
    return present


def copy_tokenizer_files(src_path, dst_path) -> None:
    """Copies the tokenizer files of `src_path` next to an exported student in `dst_path`."""
    present = tokenizer_files(src_path)
    os.makedirs(dst_path, exist_ok=True)
    for name in present:
        shutil.copyfile(os.path.join(src_path, name), os.path.join(dst_path, name))
