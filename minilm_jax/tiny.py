"""Tiny random models for smoke runs: Hugging Face folders (config, weights, tokenizer) built
offline, so every experiment can be exercised end to end in seconds on a CPU.

`smoke_model(family)` is the preparation step that the `smoke` variants of the experiment
files point `teacher.path` (distillation) or `student_path` (fine-tuning) at: it writes the
folder once into a cache directory (`$MINILM_JAX_CACHE`, default `~/.cache/minilm_jax`) and
returns its path. The trainers then load it like any other checkpoint: they contain no
smoke-run branches. The folder is a deterministic function of (family, sizes, seed): the
same on every machine, in every process and in every run (tests/families_test.py builds the
tokenizers in two processes and compares them).

Every family of `minilm_jax.models` has one, with a tokenizer of the family's kind and id
layout:

  bert             WordPiece, lower-cased   [PAD]=0 [UNK] [CLS] [SEP] [MASK] first
  roberta, xlm-roberta, xlm-roberta-xl
                   byte-level BPE           <s>=0 <pad>=1 </s>=2 <unk> <mask> first
  modernbert       byte-level BPE           [UNK] [CLS] [SEP] [PAD] [MASK] last (ModernBERT's
                                            are 50280..50284)
  deberta-v2       SentencePiece-style      [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 first, [MASK] last
                   Unigram, Metaspace       (as DeBERTa-v3)

Determinism: `tokenizers`' BPE trainer breaks count ties by token ids assigned from a sorted
alphabet (the same in every process); its WordPiece and Unigram trainers do not (ties follow
hash order, which changes from process to process), so the WordPiece and Unigram
vocabularies are built here from word counts with ties broken by spelling.

ModernBERT and DeBERTa models get an embedding table larger than the tokenizer (the next
multiple of 64 above its size), as released checkpoints may have (DeBERTa-v3: 128100 rows for
128001 tokens; ModernBERT rounds its table to a multiple of 64): code that needs the
vocabulary must read the tokenizer, not `vocab_size`. The smoke ModernBERT's sliding window
(16: keys within 8 of the query) is shorter than the smoke runs' 32-token sequences, so its
local layers are exercised; the smoke DeBERTa (v3 layout) has 16 relative buckets, so 32-token
sequences reach its log-bucketed range.
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
import tempfile
from typing import Iterable

from flax import nnx
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

from minilm_jax import hf
from minilm_jax.cache import cache_dir
from minilm_jax.models import build_model
from minilm_jax.models.deberta import DebertaConfig
from minilm_jax.models.modernbert import ModernBertConfig
from minilm_jax.models.transformer import TransformerConfig
from minilm_jax.models.xlmr_xl import XLMRobertaXLConfig

# Sizes of the tiny random teacher of the smoke runs and of the tiny fine-tuning student.
SMOKE_TEACHER = dict(num_layers=4, hidden_size=64, num_heads=4, intermediate_size=128)
SMOKE_STUDENT = dict(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64)
SMOKE_SEED = 1234
# Bumped when the folder's contents change, so old caches are not reused.
_FORMAT_VERSION = 2

# Special tokens in the order that gives each family its usual ids (RoBERTa: <s>=0, <pad>=1,
# </s>=2; BERT: [PAD]=0; DeBERTa-v3: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3). ModernBERT's and
# DeBERTa's [MASK] come after the vocabulary (`_SPECIALS_LAST`).
_FAIRSEQ_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_SPECIALS = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "roberta": _FAIRSEQ_SPECIALS,
    "xlm-roberta": _FAIRSEQ_SPECIALS,
    "xlm-roberta-xl": _FAIRSEQ_SPECIALS,
    "modernbert": [],
    "deberta-v2": ["[PAD]", "[CLS]", "[SEP]", "[UNK]"],
}
_SPECIALS_LAST = {
    "modernbert": ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
    "deberta-v2": ["[MASK]"],
}
FAMILIES = tuple(_SPECIALS)

# Architecture fields of the tiny models beyond their sizes (see the module docstring).
MODERNBERT_SMOKE = dict(local_attention=16, global_attn_every_n_layers=3)
DEBERTA_SMOKE = dict(  # DeBERTa-v3's layout
    max_position_embeddings=512,
    type_vocab_size=0,
    layer_norm_eps=1e-7,
    relative_attention=True,
    max_relative_positions=-1,
    position_buckets=16,
    share_att_key=True,
    pos_att_type=("p2c", "c2p"),
    norm_rel_ebd="layer_norm",
    position_biased_input=False,
)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"tiny model family {family!r}; allowed: {FAMILIES}")


def _by_count(counts: collections.Counter) -> list[tuple[str, int]]:
    """(item, count), most frequent first, ties by spelling: the same in every process."""
    return sorted(counts.items(), key=lambda x: (-x[1], x[0]))


def _wordpiece_vocab(texts: Iterable[str], vocab_size: int) -> list[str]:
    """A deterministic WordPiece vocabulary: the specials, every character seen (as a word
    start and as a ``##`` continuation), then the most frequent words (ties by spelling)."""
    counts = collections.Counter(
        word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())
    )
    chars = sorted({c for word in counts for c in word})
    vocab = _SPECIALS["bert"] + chars + [f"##{c}" for c in chars]
    room = max(vocab_size - len(vocab), 0)
    words = [w for w, _ in _by_count(counts) if len(w) > 1]
    return vocab + words[:room]


def _unigram_vocab(texts: Iterable[str], vocab_size: int) -> list[tuple[str, float]]:
    """A deterministic SentencePiece-style Unigram vocabulary (piece, log-probability) for a
    Metaspace pre-tokenizer: DeBERTa-v3's specials, every character seen (alone and as a word
    start "▁c"), then the most frequent whole words "▁word" (ties by spelling), [MASK] last.
    Words score their log frequency and characters far less, so a known word is one piece and
    an unknown one falls back to its characters."""
    counts = collections.Counter("▁" + word for text in texts for word in text.split())
    total = sum(counts.values()) or 1
    chars = sorted({c for word in counts for c in word[1:]})
    char_score = math.log(1 / total) - 10.0
    vocab = [(t, 0.0) for t in _SPECIALS["deberta-v2"]] + [("▁", char_score)]
    vocab += [(c, char_score) for c in chars] + [("▁" + c, char_score) for c in chars]
    room = max(vocab_size - len(vocab) - len(_SPECIALS_LAST["deberta-v2"]), 0)
    words = [(w, math.log(n / total)) for w, n in _by_count(counts) if len(w) > 2]
    return vocab + words[:room] + [(t, 0.0) for t in _SPECIALS_LAST["deberta-v2"]]


def _byte_level_bpe(
    texts: list[str], vocab_size: int, specials: list[str], unk: str | None
) -> Tokenizer:
    """Byte-level BPE trained on `texts` (deterministic: see the module docstring)."""
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _cls_sep_template(tok: Tokenizer, pair_type: int) -> processors.TemplateProcessing:
    """``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with B's tokens of type `pair_type`."""
    return processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair=f"[CLS]:0 $A:0 [SEP]:0 $B:{pair_type} [SEP]:{pair_type}",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )


def train_tokenizer(family: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A small tokenizer of `family`'s kind (see the module docstring) on ``texts``, with the
    family's special-token ids and template."""
    _check_family(family)
    texts = list(texts)
    if family == "bert":
        vocab = _wordpiece_vocab(texts, vocab_size)
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        tok.add_special_tokens(_SPECIALS[family])
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.post_processor = _cls_sep_template(tok, pair_type=1)
        return tok
    if family == "deberta-v2":
        # As DeBERTa-v3's tokenizer.json (transformers' DebertaV2 converter).
        vocab = _unigram_vocab(texts, vocab_size)
        tok = Tokenizer(models.Unigram(vocab, unk_id=_SPECIALS[family].index("[UNK]")))
        tok.add_special_tokens(_SPECIALS[family] + _SPECIALS_LAST[family])
        tok.normalizer = normalizers.Sequence(
            [
                normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "),
                normalizers.NFC(),
                normalizers.Strip(left=False, right=True),
            ]
        )
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        tok.post_processor = _cls_sep_template(tok, pair_type=1)
        return tok
    if family == "modernbert":
        # ModernBERT's tokenizer is byte-level BPE with its specials after the vocabulary and
        # one token type for both segments of a pair.
        specials = _SPECIALS_LAST[family]
        tok = _byte_level_bpe(texts, vocab_size - len(specials), [], None)
        tok.add_special_tokens(specials)
        tok.post_processor = _cls_sep_template(tok, pair_type=0)
        return tok
    tok = _byte_level_bpe(texts, vocab_size, _SPECIALS[family], "<unk>")
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    return tok


def _padded_vocab(tokenizer: Tokenizer) -> int:
    """Embedding rows: the next multiple of 64 above the tokenizer's size (never equal)."""
    return (tokenizer.get_vocab_size() // 64 + 1) * 64


def tiny_config(family: str, tokenizer: Tokenizer, sizes: dict):
    """The config of a tiny random model of ``family`` for ``tokenizer``'s vocabulary."""
    _check_family(family)
    if family == "modernbert":
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        return ModernBertConfig(
            family=family,
            vocab_size=_padded_vocab(tokenizer),
            max_position_embeddings=512,
            pad_token_id=tokenizer.token_to_id("[PAD]"),
            bos_token_id=cls_id,
            eos_token_id=sep_id,
            cls_token_id=cls_id,
            sep_token_id=sep_id,
            **MODERNBERT_SMOKE,
            **sizes,
        )
    if family == "deberta-v2":
        return DebertaConfig(
            vocab_size=_padded_vocab(tokenizer),
            pad_token_id=tokenizer.token_to_id("[PAD]"),
            **DEBERTA_SMOKE,
            **sizes,
        )
    pad_id = tokenizer.token_to_id("[PAD]" if family == "bert" else "<pad>")
    roberta_like = family != "bert"
    config_class = XLMRobertaXLConfig if family == "xlm-roberta-xl" else TransformerConfig
    return config_class(
        family=family,
        vocab_size=tokenizer.get_vocab_size(),
        # RoBERTa positions start after the padding index, so they need pad_id + 1 more rows.
        max_position_embeddings=512 + (pad_id + 1 if roberta_like else 0),
        type_vocab_size=1 if roberta_like else 2,
        layer_norm_eps=1e-5 if roberta_like else 1e-12,
        pad_token_id=pad_id,
        bos_token_id=0 if roberta_like else None,
        eos_token_id=2 if roberta_like else None,
        **sizes,
    )


def write_tiny_model(
    family: str,
    path: str,
    texts: Iterable[str],
    *,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    intermediate_size: int,
    vocab_size: int = 512,
    seed: int = 0,
):
    """Writes a random ``family`` model with a tokenizer trained on ``texts`` to ``path``;
    returns its config.

    The folder looks like any Hugging Face checkpoint (config.json, model.safetensors,
    tokenizer.json), so a smoke run exercises the same loading code as a real model.
    """
    _check_family(family)
    tok = train_tokenizer(family, texts, vocab_size)
    sizes = dict(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
    )
    config = tiny_config(family, tok, sizes)
    model = build_model(config, rngs=nnx.Rngs(seed))
    # Random init has tiny attention logits; scale the q/k weights up so the model's
    # relations are peaked like a trained model's and there is something to distill.
    for layer in model.layers:
        for proj in (layer.attention.query, layer.attention.key):
            proj.kernel[...] = proj.kernel[...] * 4.0
    os.makedirs(path, exist_ok=True)
    hf.save_pretrained(config, model, path)
    tok.save(os.path.join(path, "tokenizer.json"))
    return config


def smoke_model(family: str, sizes: dict | None = None, *, seed: int = SMOKE_SEED) -> str:
    """The cached folder of a tiny random ``family`` model (written on first use); its
    tokenizer is trained on the first 400 documents of the offline Python-docs corpus."""
    from minilm_jax.data import python_docs_documents  # the corpus index is large: lazily

    _check_family(family)
    sizes = dict(SMOKE_TEACHER if sizes is None else sizes)
    name = (
        f"{family}-{sizes['num_layers']}x{sizes['hidden_size']}h{sizes['num_heads']}"
        f"f{sizes['intermediate_size']}-seed{seed}-v{_FORMAT_VERSION}"
    )
    path = os.path.join(cache_dir(), "tiny", name)
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Written aside and renamed into place: concurrent runs (test workers, hosts sharing a
    # home directory) never see a half-written folder.
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=os.path.dirname(path))
    try:
        write_tiny_model(family, tmp, python_docs_documents()[:400], seed=seed, **sizes)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first; its folder is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
