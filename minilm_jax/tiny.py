"""Tiny random teachers for smoke runs: a Hugging Face folder (config, weights, tokenizer)
built offline, so every experiment can be exercised end to end in seconds on a CPU."""

from __future__ import annotations

import os
from typing import Iterable

from flax import nnx
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from minilm_jax import hf
from minilm_jax.models.transformer import Transformer, TransformerConfig

# Special tokens in the order that gives each family its usual ids (RoBERTa: <s>=0, <pad>=1,
# </s>=2; BERT: [PAD]=0).
_SPECIALS = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "xlm-roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
}


def train_tokenizer(family: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A small WordPiece (BERT) or byte-level BPE (RoBERTa, XLM-R) tokenizer on ``texts``."""
    specials = _SPECIALS[family]
    if family == "bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def write_tiny_teacher(
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
) -> TransformerConfig:
    """Writes a random ``family`` teacher with a tokenizer trained on ``texts`` to ``path``.

    The folder looks like any Hugging Face checkpoint (config.json, model.safetensors,
    tokenizer.json), so the smoke run exercises the same loading code as a real teacher.
    """
    if family not in _SPECIALS:
        raise ValueError(f"teacher.tiny_random_family={family!r}; allowed: {sorted(_SPECIALS)}")
    tok = train_tokenizer(family, texts, vocab_size)
    pad = _SPECIALS[family][1 if family != "bert" else 0]
    pad_id = tok.token_to_id(pad)
    roberta_like = family != "bert"
    config = TransformerConfig(
        family=family,
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        # RoBERTa positions start after the padding index, so they need pad_id + 1 more rows.
        max_position_embeddings=512 + (pad_id + 1 if roberta_like else 0),
        type_vocab_size=1 if roberta_like else 2,
        layer_norm_eps=1e-5 if roberta_like else 1e-12,
        pad_token_id=pad_id,
    )
    model = Transformer(config, rngs=nnx.Rngs(seed))
    # Random init has tiny attention logits; scale the q/k weights up so the teacher's
    # relations are peaked like a trained model's and there is something to distill.
    for layer in model.layers:
        for proj in (layer.attention.query, layer.attention.key):
            proj.kernel[...] = proj.kernel[...] * 4.0
    os.makedirs(path, exist_ok=True)
    hf.save_pretrained(config, model, path)
    tok.save(os.path.join(path, "tokenizer.json"))
    return config
