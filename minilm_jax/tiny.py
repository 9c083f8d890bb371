"""Tiny random models for smoke runs: Hugging Face folders (config, weights, tokenizer) built
offline, so every experiment can be exercised end to end in seconds on a CPU.

`smoke_model(family)` is the preparation step that the `smoke` variants of the experiment
files point `teacher.path` (distillation) or `student_path` (fine-tuning) at: it writes the
folder once into a cache directory (`$MINILM_JAX_CACHE`, default `~/.cache/minilm_jax`) and
returns its path. The trainers then load it like any other checkpoint: they contain no
smoke-run branches. The folder is a deterministic function of (family, sizes, seed): the
same on every machine and in every run.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import tempfile
from typing import Iterable

from flax import nnx
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

from minilm_jax import hf
from minilm_jax.models import build_model
from minilm_jax.models.transformer import TransformerConfig

# Sizes of the tiny random teacher of the smoke runs and of the tiny fine-tuning student.
SMOKE_TEACHER = dict(num_layers=4, hidden_size=64, num_heads=4, intermediate_size=128)
SMOKE_STUDENT = dict(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64)
SMOKE_SEED = 1234
# Bumped when the folder's contents change, so old caches are not reused.
_FORMAT_VERSION = 2

# Special tokens in the order that gives each family its usual ids (RoBERTa: <s>=0, <pad>=1,
# </s>=2; BERT: [PAD]=0).
_SPECIALS = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "xlm-roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
}
FAMILIES = tuple(_SPECIALS)


def cache_dir() -> str:
    return os.environ.get("MINILM_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "minilm_jax"
    )


def _wordpiece_vocab(texts: Iterable[str], vocab_size: int) -> list[str]:
    """A deterministic WordPiece vocabulary: the specials, every character seen (as a word
    start and as a ``##`` continuation), then the most frequent words (ties by spelling).
    The `tokenizers` WordPiece trainer breaks count ties by hash order, which differs from
    run to run."""
    counts = collections.Counter(
        word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())
    )
    chars = sorted({c for word in counts for c in word})
    vocab = _SPECIALS["bert"] + chars + [f"##{c}" for c in chars]
    room = max(vocab_size - len(vocab), 0)
    words = [w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0])) if len(w) > 1]
    return vocab + words[:room]


def train_tokenizer(family: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A small WordPiece (BERT) or byte-level BPE (RoBERTa, XLM-R) tokenizer on ``texts``,
    with the family's special-token template."""
    texts = list(texts)
    specials = _SPECIALS[family]
    if family == "bert":
        vocab = _wordpiece_vocab(texts, vocab_size)
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        tok.add_special_tokens(specials)
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
        )
        return tok
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    return tok


def tiny_config(family: str, tokenizer: Tokenizer, sizes: dict) -> TransformerConfig:
    """The config of a tiny random model of ``family`` for ``tokenizer``'s vocabulary."""
    pad_id = tokenizer.token_to_id(_SPECIALS[family][0 if family == "bert" else 1])
    roberta_like = family != "bert"
    return TransformerConfig(
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
    """Writes a random ``family`` model with a tokenizer trained on ``texts`` to ``path``.

    The folder looks like any Hugging Face checkpoint (config.json, model.safetensors,
    tokenizer.json), so a smoke run exercises the same loading code as a real model.
    """
    if family not in _SPECIALS:
        raise ValueError(f"tiny model family {family!r}; allowed: {FAMILIES}")
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

    sizes = dict(SMOKE_TEACHER if sizes is None else sizes)
    if family not in _SPECIALS:
        raise ValueError(f"tiny model family {family!r}; allowed: {FAMILIES}")
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
