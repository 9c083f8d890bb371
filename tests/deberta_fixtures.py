"""Tiny random DeBERTa-v2/v3 models and tokenizers, built offline, for tests and smoke runs.

`make_tiny_deberta(path, style)` writes a transformers DeBERTa checkpoint folder (config.json +
model.safetensors + a DeBERTa-v3-style SentencePiece tokenizer.json) and returns the PyTorch
model in eval mode; the styles are tiny versions of the real layouts (`STYLES`).
`torch_deberta_reference` runs it and returns every hidden state, every layer's content q/k/v
and every attention map in float64. `random_deberta(config)` is our model with the same kind
of noise. `write_tiny_deberta_teacher` is what a smoke run needs: a random teacher of our own,
exported, with a Unigram tokenizer built from the run's texts (`minilm_jax.tiny` writes it).
"""

from __future__ import annotations

import os
from typing import Iterable

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx
from hf_fixtures import randomize_
from minilm_jax import tiny
from minilm_jax.models.deberta import Deberta, DebertaConfig

transformers.utils.logging.disable_progress_bar()

# DeBERTa-v3's ids: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3, pieces, [MASK] last (128000 in v3).
SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
MASK = "[MASK]"
_WORDS = (
    "the a is of and to in it cat dog sat on mat hello world this that sentence short "
    "longer one text"
).split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")


def deberta_vocab() -> list[tuple[str, float]]:
    """A tiny SentencePiece Unigram vocabulary (piece, log-probability) in v3's id layout."""
    vocab = [(t, 0.0) for t in SPECIALS]
    vocab += [("▁" + w, -2.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    vocab += [("▁", -3.0), ("s", -4.0), ("ed", -4.5), ("ing", -4.5)]
    vocab += [(c, -6.0) for c in _CHARS]
    return vocab + [(MASK, 0.0)]


def write_tiny_deberta_tokenizer(path) -> transformers.PreTrainedTokenizerBase:
    """tokenizer.json + tokenizer_config.json as transformers' DebertaV2Tokenizer writes them
    (Unigram model, Metaspace pre-tokenizer, [CLS] A [SEP] B [SEP] template)."""
    tok = transformers.DebertaV2Tokenizer(vocab=deberta_vocab())
    tok.save_pretrained(path)
    return tok


# Tiny versions of the real layouts. Sequences of 16 tokens exceed every relative range, so the
# log buckets and the clipping to the table are exercised.
STYLES = {
    # microsoft/deberta-v3-*: relative attention with log buckets, shared keys, LayerNormed
    # relative table, no absolute positions, no token types.
    "v3": dict(
        relative_attention=True,
        position_buckets=6,
        max_relative_positions=10,
        share_att_key=True,
        pos_att_type="p2c|c2p",
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
        max_position_embeddings=64,
    ),
    # deberta-v2-xlarge-like conv layer (grouped here) with v2-base-like separate position
    # projections, no buckets (linear relative positions, clipped at 6), absolute positions
    # and token types.
    "v2": dict(
        relative_attention=True,
        position_buckets=-1,
        max_relative_positions=6,
        share_att_key=False,
        pos_att_type=["c2p", "p2c"],
        norm_rel_ebd="none",
        position_biased_input=True,
        type_vocab_size=2,
        max_position_embeddings=40,
        conv_kernel_size=3,
        conv_groups=2,
        conv_act="gelu",
    ),
    # One position term (scale 1/sqrt(2d)), separate projection.
    "c2p": dict(
        relative_attention=True,
        position_buckets=8,
        max_relative_positions=-1,
        share_att_key=False,
        pos_att_type=["c2p"],
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
        max_position_embeddings=64,
    ),
}


def tiny_deberta_hf_config(style: str = "v3", **overrides) -> transformers.DebertaV2Config:
    """A tiny transformers DebertaV2Config (hidden 32, 2 layers, 4 heads) of `style`."""
    kwargs = dict(
        vocab_size=len(deberta_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        layer_norm_eps=1e-7,
        pad_token_id=0,
    )
    kwargs.update(STYLES[style])
    kwargs.update(overrides)
    return transformers.DebertaV2Config(**kwargs)


def make_tiny_deberta(
    path,
    style: str = "v3",
    *,
    head: str | None = None,
    seed: int = 0,
    with_tokenizer: bool = True,
    **overrides,
) -> torch.nn.Module:
    """Writes a tiny random DeBERTa checkpoint into `path` and returns the PyTorch model.
    `head`: None (DebertaV2Model) or "masked_lm" (DebertaV2ForMaskedLM). Every parameter is
    noise at a trained-like scale (`hf_fixtures.randomize_`)."""
    if head not in (None, "masked_lm"):
        raise ValueError(f"head={head!r}; allowed: None, 'masked_lm'")
    torch.manual_seed(seed)
    config = tiny_deberta_hf_config(style, **overrides)
    cls = transformers.DebertaV2ForMaskedLM if head else transformers.DebertaV2Model
    model = cls(config).eval()
    randomize_(model, seed)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    if with_tokenizer:
        write_tiny_deberta_tokenizer(path)
    return model


@torch.no_grad()
def torch_deberta_reference(model, input_ids, attention_mask, token_type_ids=None):
    """Runs a transformers DeBERTa encoder (the base model of a model with a head); returns
    dict(hidden_states=[...], qkv=[(q, k, v), ...], attentions=[[B, H, T, T], ...]) in float64.

    q/k/v are the outputs of query_proj/key_proj/value_proj on the layer input; with
    share_att_key the same modules also project the relative table later in the layer, so only
    each module's first call per forward is kept."""
    base = model.base_model
    captured = {}

    def keep_first(key):
        def hook(_module, _inputs, output):  # returns None: the output is left as it is
            captured.setdefault(key, output)

        return hook

    hooks = []
    for i, layer in enumerate(base.encoder.layer):
        for name in ("query_proj", "key_proj", "value_proj"):
            module = getattr(layer.attention.self, name)
            hooks.append(module.register_forward_hook(keep_first((i, name))))
    as_long = lambda x: None if x is None else torch.as_tensor(np.asarray(x), dtype=torch.long)  # noqa: E731
    try:
        out = base(
            input_ids=as_long(input_ids),
            attention_mask=as_long(attention_mask),
            token_type_ids=as_long(token_type_ids),
            output_hidden_states=True,
            output_attentions=True,
        )
    finally:
        for hook in hooks:
            hook.remove()
    as_np = lambda t: t.detach().double().numpy()  # noqa: E731
    names = ("query_proj", "key_proj", "value_proj")
    return dict(
        hidden_states=[as_np(h) for h in out.hidden_states],
        qkv=[tuple(as_np(captured[(i, n)]) for n in names) for i in range(len(base.encoder.layer))],
        attentions=[as_np(a) for a in out.attentions],
    )


def random_deberta(config: DebertaConfig, seed: int = 0) -> Deberta:
    """Our Deberta with `randomize_`-like noise in every parameter (LayerNorm scales around 1).
    Built from `nnx.eval_shape` and NumPy noise, so making it compiles nothing."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Deberta(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    filled = {}
    for path, var in nnx.to_flat_state(state):
        noise = rng.standard_normal(var.shape).astype(np.float32)
        value = 1.0 + 0.2 * noise if path[-1] == "scale" else 0.15 * noise
        filled[path] = var.replace(jnp.asarray(value, dtype=var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


# --- smoke-run teacher ------------------------------------------------------------------------

# What a smoke run's tiny DeBERTa teacher looks like (built by `minilm_jax.tiny`, which
# `tiny.smoke_model("deberta-v2")` caches): DeBERTa-v3's layout with buckets small enough that
# short smoke sequences reach the log range.
TINY_TEACHER = tiny.DEBERTA_SMOKE


def write_tiny_deberta_teacher(path, texts: Iterable[str], **sizes) -> DebertaConfig:
    """Writes a random DeBERTa-v3-style teacher (`TINY_TEACHER`) with a deterministic
    Unigram tokenizer built from `texts` to `path`: `tiny.write_tiny_model("deberta-v2", ...)`
    (sizes: num_layers, hidden_size, num_heads, intermediate_size, vocab_size, seed)."""
    return tiny.write_tiny_model("deberta-v2", os.fspath(path), texts, **sizes)
