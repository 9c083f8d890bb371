"""Tiny random Hugging Face models and tokenizers, built offline, for tests.

`make_tiny_hf_model(family, path)` writes a transformers checkpoint folder (config.json +
model.safetensors, or pytorch_model.bin) with a matching tiny tokenizer (tokenizer.json,
tokenizer_config.json, and vocab.txt for BERT) and returns the PyTorch model in eval mode.
`torch_reference(model, ...)` runs a PyTorch model and returns every hidden state and every
layer's q/k/v (captured with forward hooks on the query/key/value Linear layers) as float64
NumPy arrays. `random_model(config)` is the JAX-side counterpart of the checkpoint: our
Transformer with the same kind of noise in every parameter. `ragged_batch` makes padded
batches. Other test files reuse these to get tiny teachers and their reference outputs.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import tokenizers
import torch
import transformers
from flax import nnx
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minilm_jax.models import Transformer, TransformerConfig

# Progress bars of save_pretrained/from_pretrained only clutter test logs.
transformers.utils.logging.disable_progress_bar()

_CLASSES = {
    "bert": (transformers.BertConfig, transformers.BertModel, transformers.BertForMaskedLM),
    "roberta": (
        transformers.RobertaConfig,
        transformers.RobertaModel,
        transformers.RobertaForMaskedLM,
    ),
    "xlm-roberta": (
        transformers.XLMRobertaConfig,
        transformers.XLMRobertaModel,
        transformers.XLMRobertaForMaskedLM,
    ),
}

# Special tokens at the ids the real families use them (BERT [PAD]=0; fairseq <s>=0 <pad>=1
# </s>=2 <unk>=3), so pad ids and position offsets are the real ones.
_SPECIALS = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "xlm-roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
}
_WORDS = [
    "the",
    "a",
    "is",
    "of",
    "and",
    "to",
    "in",
    "it",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "hello",
    "world",
    "this",
    "that",
    "sentence",
    "short",
    "longer",
    "one",
    "text",
    "##s",
    "##ed",
    "##ing",
    "##ly",
    "##er",
]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
_SUBWORD_CHARS = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]

# Number of special tokens at the start of every tiny vocabulary: ids >= this are words.
NUM_SPECIAL_IDS = 5


def tiny_vocab(family: str) -> list[str]:
    """The tiny vocabulary of a family: specials first (<mask> last for RoBERTa, as fairseq)."""
    specials = _SPECIALS[family]
    body = _WORDS + _CHARS + _SUBWORD_CHARS
    if family == "bert":
        return specials + body
    return specials[:4] + body + specials[4:]


def _tokenizer(family: str) -> tokenizers.Tokenizer:
    vocab = tiny_vocab(family)
    specials = _SPECIALS[family]
    unk = specials[1] if family == "bert" else specials[3]
    tok = tokenizers.Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=unk))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    ids = {t: i for i, t in enumerate(vocab)}
    if family == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
    else:
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", ids["</s>"]), ("<s>", ids["<s>"])
        )
    return tok


def write_tiny_tokenizer(family: str, path) -> tokenizers.Tokenizer:
    """Writes tokenizer.json + tokenizer_config.json (+ vocab.txt for BERT) into `path`."""
    os.makedirs(path, exist_ok=True)
    tok = _tokenizer(family)
    tok.save(os.path.join(path, "tokenizer.json"))
    specials = _SPECIALS[family]
    if family == "bert":
        names = dict(
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
        with open(os.path.join(path, "vocab.txt"), "w") as f:
            f.write("\n".join(tiny_vocab(family)) + "\n")
    else:
        names = dict(
            bos_token="<s>",
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
            cls_token="<s>",
            sep_token="</s>",
            mask_token="<mask>",
        )
    assert set(names.values()) == set(specials)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(dict(names, do_lower_case=True, tokenizer_class="PreTrainedTokenizerFast"), f)
    return tok


def tiny_hf_config(family: str, **overrides) -> transformers.PretrainedConfig:
    """A tiny transformers config of `family` (hidden 32, 2 layers, 4 heads, vocab ~100)."""
    config_cls = _CLASSES[family][0]
    kwargs = dict(
        vocab_size=len(tiny_vocab(family)),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
    )
    if family == "bert":
        kwargs.update(
            max_position_embeddings=40, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0
        )
    else:  # fairseq positions start after the pad id: 40 real positions need 42 rows
        kwargs.update(
            max_position_embeddings=42,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
    kwargs.update(overrides)
    return config_cls(**kwargs)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Replaces every parameter with noise at a trained-like scale so that every weight (biases,
    LayerNorm scales, the pad rows) matters: HF's init (std 0.02, zero biases, unit LayerNorm)
    leaves attention nearly uniform and would hide layout bugs."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
        if "LayerNorm.weight" in name:
            param.copy_(1.0 + 0.2 * noise)
        else:
            param.copy_(0.15 * noise)


def make_tiny_hf_model(
    family: str,
    path,
    *,
    head: str | None = None,
    seed: int = 0,
    randomize: bool = True,
    weights_format: str = "safetensors",
    with_tokenizer: bool = True,
    **overrides,
) -> torch.nn.Module:
    """Writes a tiny random transformers checkpoint of `family` into `path`; returns the model.

    Args:
      family: "bert", "roberta" or "xlm-roberta".
      head: None for the base model (BertModel, ...), "masked_lm" for *ForMaskedLM.
      randomize: replace HF's init by `randomize_` noise (what parity tests need).
      weights_format: "safetensors" (model.safetensors) or "bin" (pytorch_model.bin).
      overrides: transformers config fields (hidden_size=64, num_hidden_layers=3, ...).
    """
    if head not in (None, "masked_lm"):
        raise ValueError(f"head={head!r}; allowed: None, 'masked_lm'")
    if weights_format not in ("safetensors", "bin"):
        raise ValueError(f"weights_format={weights_format!r}; allowed: 'safetensors', 'bin'")
    torch.manual_seed(seed)
    config = tiny_hf_config(family, **overrides)
    _, base_cls, mlm_cls = _CLASSES[family]
    model = (mlm_cls if head == "masked_lm" else base_cls)(config).eval()
    if randomize:
        randomize_(model, seed)
    os.makedirs(path, exist_ok=True)
    if weights_format == "safetensors":
        model.save_pretrained(path)
    else:
        config.save_pretrained(path)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(path, "pytorch_model.bin"))
    if with_tokenizer:
        write_tiny_tokenizer(family, path)
    return model


def ragged_batch(
    family: str, lengths, seq_len: int, *, vocab_size: int, seed: int = 0, type_ids: bool = False
):
    """(input_ids, attention_mask, token_type_ids) int32 [B, seq_len]: row b has lengths[b] real
    tokens (random ids above the specials, so never the pad id), then pad ids. With `type_ids`
    the second half of each row's real tokens is segment 1."""
    rng = np.random.default_rng(seed)
    pad = 0 if family == "bert" else 1
    batch = len(lengths)
    ids = np.full((batch, seq_len), pad, np.int32)
    mask = np.zeros((batch, seq_len), np.int32)
    types = np.zeros((batch, seq_len), np.int32)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(NUM_SPECIAL_IDS, vocab_size, n)
        mask[b, :n] = 1
        if type_ids:
            types[b, n // 2 : n] = 1
    return ids, mask, types


@torch.no_grad()
def torch_reference(model: torch.nn.Module, input_ids, attention_mask, token_type_ids=None):
    """Runs a transformers encoder (or a model with a head: its base model is run); returns
    dict(hidden_states=[...], qkv=[(q, k, v), ...], pooler_output=array or None) in float64."""
    base = model.base_model
    captured = {}
    hooks = []
    for i, layer in enumerate(base.encoder.layer):
        for name in ("query", "key", "value"):
            module = getattr(layer.attention.self, name)
            hooks.append(
                module.register_forward_hook(
                    lambda _m, _inp, out, i=i, name=name: captured.__setitem__((i, name), out)
                )
            )
    try:
        out = base(
            input_ids=torch.as_tensor(np.asarray(input_ids), dtype=torch.long),
            attention_mask=torch.as_tensor(np.asarray(attention_mask), dtype=torch.long),
            token_type_ids=None
            if token_type_ids is None
            else torch.as_tensor(np.asarray(token_type_ids), dtype=torch.long),
            output_hidden_states=True,
        )
    finally:
        for hook in hooks:
            hook.remove()
    as_np = lambda t: t.detach().double().numpy()
    qkv = [
        tuple(as_np(captured[(i, n)]) for n in ("query", "key", "value"))
        for i in range(len(base.encoder.layer))
    ]
    pooled = getattr(out, "pooler_output", None)
    return dict(
        hidden_states=[as_np(h) for h in out.hidden_states],
        qkv=qkv,
        pooler_output=None if pooled is None else as_np(pooled),
    )


def random_model(
    config: TransformerConfig, seed: int = 0, *, add_pooler: bool = True
) -> Transformer:
    """Our Transformer with `randomize_`-like noise in every parameter (LayerNorm scales around
    1). Built from `nnx.eval_shape` and NumPy noise, so making it compiles nothing."""
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), add_pooler=add_pooler))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    filled = {}
    for path, var in nnx.to_flat_state(state):
        noise = rng.standard_normal(var.shape).astype(np.float32)
        value = 1.0 + 0.2 * noise if path[-1] == "scale" else 0.15 * noise
        filled[path] = var.replace(jnp.asarray(value, dtype=var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))
