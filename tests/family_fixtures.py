"""Tiny random ModernBERT and XLM-R XL models, their tokenizers and reference outputs, built
offline, for tests (the BERT/RoBERTa/XLM-R counterparts are in hf_fixtures.py).

`make_tiny_family_model(family, path)` writes a transformers checkpoint folder (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json) of family "modernbert" or
"xlm-roberta-xl" and returns the PyTorch model in eval mode, with eager attention so that
`output_attentions=True` returns the probabilities. `modernbert_reference` runs a
ModernBERT and returns its hidden states, q/k/v (projections, and q/k after HF's own rotary
embedding) and attention probabilities; `torch_attentions` returns any model's attention
probabilities. `random_family_model(config)` is our model of any family with noise in every
parameter; `ragged_batch` makes right-padded batches that avoid the special ids.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
import torch
import transformers
from flax import nnx
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from transformers.models.modernbert import modeling_modernbert

from hf_fixtures import NUM_SPECIAL_IDS, tiny_vocab, write_tiny_tokenizer
from minilm_jax import tiny
from minilm_jax.models import build_model
from minilm_jax.relations import minilmv2_loss

FAMILIES = ("modernbert", "xlm-roberta-xl")
# ModernBERT's special tokens sit at the end of its vocabulary (50280..50284 in the real one),
# so the pad id is neither 0 nor 1 and position/pad handling cannot work by accident.
MODERNBERT_SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
# The transformers-built twins of the smoke teachers that `minilm_jax.tiny.smoke_model` writes
# (its SMOKE_TEACHER sizes: 4 layers, hidden 64, 4 heads, feed-forward 128), as transformers
# config overrides of `tiny_hf_config`. ModernBERT: layers global, local, local, global and
# tiny's window of 16 (keys within 8), shorter than the smoke runs' 32-token sequences.
# Built with `make_tiny_family_model(family, path, **SMOKE_TEACHERS[family])`.
_SMOKE_SIZES = dict(
    hidden_size=tiny.SMOKE_TEACHER["hidden_size"],
    num_hidden_layers=tiny.SMOKE_TEACHER["num_layers"],
    num_attention_heads=tiny.SMOKE_TEACHER["num_heads"],
    intermediate_size=tiny.SMOKE_TEACHER["intermediate_size"],
)
SMOKE_TEACHERS = {
    "modernbert": dict(
        _SMOKE_SIZES,
        local_attention=tiny.MODERNBERT_SMOKE["local_attention"],
        max_position_embeddings=512,
    ),
    "xlm-roberta-xl": dict(_SMOKE_SIZES, max_position_embeddings=514),
}
_CLASSES = {
    "modernbert": (
        transformers.ModernBertConfig,
        transformers.ModernBertModel,
        transformers.ModernBertForMaskedLM,
    ),
    "xlm-roberta-xl": (
        transformers.XLMRobertaXLConfig,
        transformers.XLMRobertaXLModel,
        transformers.XLMRobertaXLForMaskedLM,
    ),
}


def modernbert_vocab() -> list[str]:
    """The words of the tiny BERT vocabulary, then ModernBERT's specials."""
    return tiny_vocab("bert")[NUM_SPECIAL_IDS:] + MODERNBERT_SPECIALS


def special_id(token: str) -> int:
    return modernbert_vocab().index(token)


def write_modernbert_tokenizer(path) -> tokenizers.Tokenizer:
    """tokenizer.json + tokenizer_config.json of the tiny ModernBERT vocabulary: lower-cased
    WordPiece, "[CLS] A [SEP]" / "[CLS] A [SEP] B [SEP]" like ModernBERT's tokenizer."""
    os.makedirs(path, exist_ok=True)
    vocab = modernbert_vocab()
    ids = {t: i for i, t in enumerate(vocab)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(ids, unk_token="[UNK]"))
    tok.add_special_tokens(MODERNBERT_SPECIALS)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.save(os.path.join(path, "tokenizer.json"))
    names = dict(
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(dict(names, tokenizer_class="PreTrainedTokenizerFast"), f)
    return tok


def tiny_hf_config(family: str, **overrides) -> transformers.PretrainedConfig:
    """A tiny transformers config: hidden 32, 4 heads, vocab ~100, eager attention.

    ModernBERT: 3 layers (global, local, local, as ModernBERT's every-third pattern), GeGLU width
    48, a local window of 8 (keys within 4 of the query) so that short test sequences are
    longer than the window, 64 positions. XLM-R XL: 2 layers, as hf_fixtures' XLM-R.
    """
    config_cls = _CLASSES[family][0]
    if family == "modernbert":
        kwargs = dict(
            vocab_size=len(modernbert_vocab()),
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=64,
            local_attention=8,
            pad_token_id=special_id("[PAD]"),
            bos_token_id=special_id("[CLS]"),
            cls_token_id=special_id("[CLS]"),
            eos_token_id=special_id("[SEP]"),
            sep_token_id=special_id("[SEP]"),
        )
    else:
        kwargs = dict(
            vocab_size=len(tiny_vocab("xlm-roberta")),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            hidden_act="gelu",
            max_position_embeddings=42,  # 40 real positions after the fairseq offset pad + 1
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
    kwargs.update(overrides)
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"  # attention probabilities for the tap test
    return config


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter replaced by noise at a trained-like scale (norm scales around 1), as
    hf_fixtures.randomize_, for these families' norm names (norm, attn_norm, mlp_norm,
    final_norm, self_attn_layer_norm, LayerNorm)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
        is_norm_scale = name.endswith("weight") and ("norm" in name.lower())
        param.copy_(1.0 + 0.2 * noise if is_norm_scale else 0.15 * noise)


def make_tiny_family_model(
    family: str,
    path,
    *,
    head: str | None = None,
    seed: int = 0,
    randomize: bool = True,
    with_tokenizer: bool = True,
    **overrides,
) -> torch.nn.Module:
    """Writes a tiny random transformers checkpoint of `family` into `path`; returns the model.

    Args:
      family: "modernbert" or "xlm-roberta-xl".
      head: None for the base model, "masked_lm" for *ForMaskedLM.
      randomize: replace HF's init by `randomize_` noise (what parity tests need).
      overrides: transformers config fields (hidden_size=64, local_attention=16, ...).
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; allowed: {FAMILIES}")
    if head not in (None, "masked_lm"):
        raise ValueError(f"head={head!r}; allowed: None, 'masked_lm'")
    torch.manual_seed(seed)
    config = tiny_hf_config(family, **overrides)
    _, base_cls, mlm_cls = _CLASSES[family]
    model = (mlm_cls if head == "masked_lm" else base_cls)(config).eval()
    if randomize:
        randomize_(model, seed)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    if with_tokenizer:
        if family == "modernbert":
            write_modernbert_tokenizer(path)
        else:
            write_tiny_tokenizer("xlm-roberta", path)
    return model


def ragged_batch(lengths, seq_len: int, *, family: str, vocab_size: int, seed: int = 0):
    """(input_ids, attention_mask) int32 [B, seq_len]: row b has lengths[b] real tokens (random
    non-special ids), then pad ids."""
    rng = np.random.default_rng(seed)
    if family == "modernbert":
        low, high, pad = 0, vocab_size - len(MODERNBERT_SPECIALS), special_id("[PAD]")
    else:
        low, high, pad = NUM_SPECIAL_IDS, vocab_size, 1
    ids = np.full((len(lengths), seq_len), pad, np.int32)
    mask = np.zeros((len(lengths), seq_len), np.int32)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(low, high, n)
        mask[b, :n] = 1
    return ids, mask


def _as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _heads_to_flat(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, d] -> [B, T, H*d] (heads side by side, as our taps)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


@torch.no_grad()
def modernbert_reference(
    model: torch.nn.Module, input_ids, attention_mask, *, attentions: bool = True
) -> dict:
    """Runs a ModernBERT (or its base inside a model with a head) and returns, in float64,
    dict(hidden_states=[...], projections=[(q, k, v)], rotary=[(q, k)], attentions=[...]):
    projections are the chunks of each layer's Wqkv output (captured with a forward hook),
    rotary the q and k after transformers' own rotary embedding for the layer's type, each
    [B, T, D]; attentions the eager attention probabilities [B, H, T, T] (`attentions=False`
    for a model with another attention implementation: then None)."""
    base = model.base_model
    captured = {}
    hooks = [
        layer.attn.Wqkv.register_forward_hook(
            lambda _m, _inp, out, i=i: captured.__setitem__(i, out)
        )
        for i, layer in enumerate(base.layers)
    ]
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    try:
        out = base(
            input_ids=ids,
            attention_mask=torch.as_tensor(np.asarray(attention_mask), dtype=torch.long),
            output_hidden_states=True,
            output_attentions=attentions,
        )
    finally:
        for hook in hooks:
            hook.remove()
    cfg = base.config
    b, t = ids.shape
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    position_ids = torch.arange(t).unsqueeze(0)
    projections, rotary = [], []
    for i, layer in enumerate(base.layers):
        qkv = captured[i].view(b, t, 3, cfg.num_attention_heads, head_dim)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # [B, H, T, d]
        cos, sin = base.rotary_emb(captured[i], position_ids, layer.attention_type)
        q_rot, k_rot = modeling_modernbert.apply_rotary_pos_emb(q, k, cos, sin)
        projections.append(tuple(_as_np(_heads_to_flat(x)) for x in (q, k, v)))
        rotary.append(tuple(_as_np(_heads_to_flat(x)) for x in (q_rot, k_rot)))
    return dict(
        hidden_states=[_as_np(h) for h in out.hidden_states],
        projections=projections,
        rotary=rotary,
        attentions=[_as_np(a) for a in out.attentions] if attentions else None,
    )


@torch.no_grad()
def torch_attentions(
    model: torch.nn.Module, input_ids, attention_mask, token_type_ids=None
) -> list[np.ndarray]:
    """The attention probabilities [B, H, T, T] of every layer (eager attention), float64."""
    as_long = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.long)  # noqa: E731
    out = model.base_model(
        input_ids=as_long(input_ids),
        attention_mask=as_long(attention_mask),
        token_type_ids=None if token_type_ids is None else as_long(token_type_ids),
        output_attentions=True,
    )
    return [_as_np(a) for a in out.attentions]


def random_family_model(config, seed: int = 0):
    """Our model of `config`'s family with noise in every parameter (norm scales around 1).
    Built from `nnx.eval_shape` and NumPy noise, so making it compiles nothing."""
    abstract = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    filled = {}
    for path, var in nnx.to_flat_state(state):
        noise = rng.standard_normal(var.shape).astype(np.float32)
        value = 1.0 + 0.2 * noise if path[-1] == "scale" else 0.15 * noise
        filled[path] = var.replace(jnp.asarray(value, dtype=var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def real_max_diff(ours, theirs, mask) -> float:
    """Max |ours - theirs| over the real tokens (mask [B, T]) of arrays [B, T, ...]."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    real = np.asarray(mask, bool).reshape(mask.shape + (1,) * (ours.ndim - 2))
    return float(np.abs(ours - theirs)[np.broadcast_to(real, ours.shape)].max())


def real_query_max_diff(probs, theirs, mask) -> float:
    """Max |probs - theirs| of attention maps [B, H, Tq, Tk] over real query rows (padded
    query rows are computed but never used, and transformers fills them differently)."""
    probs, theirs = np.asarray(probs, np.float64), np.asarray(theirs, np.float64)
    assert probs.shape == theirs.shape, (probs.shape, theirs.shape)
    real = np.asarray(mask, bool)[:, None, :, None]
    return float(np.abs(probs - theirs)[np.broadcast_to(real, probs.shape)].max())


def gradient_is_zero(model, input_ids, attention_mask, teacher_qkv, pair_sets, num_relation_heads):
    """(params, [{path: True where the gradient is all zero}] per entry of `pair_sets`): the
    gradients of the MiniLMv2 losses over each set of pairs between `teacher_qkv` and the
    model's last-layer taps, all from one compiled Jacobian."""
    graphdef, params = nnx.split(model, nnx.Param)
    mask = jnp.asarray(attention_mask)

    def losses(p):
        taps = nnx.merge(graphdef, p)(input_ids, mask).qkv[-1]
        return jnp.stack(
            [
                minilmv2_loss(teacher_qkv, taps, mask, num_relation_heads, pairs=pairs)[0]
                for pairs in pair_sets
            ]
        )

    jacobian = dict(nnx.to_flat_state(jax.jit(jax.jacrev(losses))(params)))
    zero = [
        {path: not np.asarray(g[...][i]).any() for path, g in jacobian.items()}
        for i in range(len(pair_sets))
    ]
    return params, zero


def flat_bools(state) -> dict[tuple, bool]:
    """{path: bool} of a pytree of bools such as `models.unreachable_params(...)`."""
    return {path: bool(v.get_value()) for path, v in nnx.to_flat_state(state)}


@functools.cache
def _jitted_forward(graphdef, num_layers, deterministic):
    def run(state, input_ids, attention_mask, token_type_ids, key):
        model = nnx.merge(graphdef, state)
        return model(
            input_ids,
            attention_mask,
            token_type_ids,
            num_layers=num_layers,
            deterministic=deterministic,
            rngs=key,
        )

    return jax.jit(run)


def forward(model, input_ids, attention_mask, token_type_ids=None, *, num_layers=None, rngs=None):
    """`model(input_ids, attention_mask, token_type_ids, num_layers=, deterministic=rngs is None,
    rngs=)` under one `jax.jit` per model structure: a tiny model's eager forward compiles every
    operation separately, which costs several times more than compiling the program once."""
    graphdef, state = nnx.split(model)
    run = _jitted_forward(graphdef, num_layers, rngs is None)
    types = None if token_type_ids is None else jnp.asarray(token_type_ids)
    return run(state, jnp.asarray(input_ids), jnp.asarray(attention_mask), types, rngs)
