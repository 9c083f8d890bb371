"""XLM-R XL / XXL (facebook/xlm-roberta-xl, -xxl): the pre-LayerNorm XLM-R, as a Flax NNX module.

transformers' `XLMRobertaXLModel` differs from XLM-R in where it normalises: the embeddings
(word + position + token type, fairseq position ids) have no LayerNorm; each layer normalises
the input of its attention and of its feed-forward, and adds the un-normalised residual
(x + attn(LN(x)), then x + ffn(LN(x))); one final LayerNorm closes the encoder, and the pooler
reads its output. There is no dropout on the feed-forward output (as in transformers).

The module tree keeps the BERT paths (`layers.<i>.attention.{layer_norm,query,key,value,
output}`, `layers.<i>.feed_forward.{layer_norm,intermediate,output}`, `final_norm`, `pooler`)
so sharding rules and the relation taps address it like every other family; the layer norms
are the pre-norms of their sub-layer. The relation tap is the q/k/v projection outputs, bias
included, as for BERT: q and k are exactly what the attention scores use.

Outputs follow transformers: `hidden_states[0]` is the embeddings' sum, `hidden_states[i]` the
residual stream after layer i, and when every layer ran the last entry (and
`last_hidden_state`) is passed through the final LayerNorm. A truncated run (`num_layers=`)
returns the raw residual stream of its last layer.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
from flax import nnx

from minilm_jax.models.attention import attention
from minilm_jax.models.attention import attention_mask as attention_mask_of
from minilm_jax.models.remat import layer_caller
from minilm_jax.models.transformer import (
    Embeddings,
    Pooler,
    TransformerConfig,
    TransformerOutput,
    _dropout,
    _layer_norm,
    _linear,
    last_layer_unreachable,
    prepare_inputs,
)

FAMILY = "xlm-roberta-xl"


@dataclasses.dataclass(frozen=True)
class XLMRobertaXLConfig(TransformerConfig):
    """The fields of `TransformerConfig` (same names, same meaning) for family 'xlm-roberta-xl'.
    `student_config(spec, teacher)` of such a teacher gives a pre-LayerNorm student."""

    families: ClassVar[tuple[str, ...]] = (FAMILY,)


class SelfAttention(nnx.Module):
    """x + dropout(output(attention(q, k, v of LayerNorm(x)))) (HF XLMRobertaXLAttention)."""

    def __init__(self, config: XLMRobertaXLConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.layer_norm = _layer_norm(config, rngs)
        self.query = _linear(config, d, d, rngs)
        self.key = _linear(config, d, d, rngs)
        self.value = _linear(config, d, d, rngs)
        self.output = _linear(config, d, d, rngs)
        self.attention_dropout = nnx.Dropout(config.attention_dropout)
        self.dropout = nnx.Dropout(config.hidden_dropout)

    def __call__(self, x, mask, *, deterministic: bool, rngs):
        h = self.layer_norm(x)
        q, k, v = self.query(h), self.key(h), self.value(h)
        context = attention(
            q,
            k,
            v,
            mask,
            num_heads=self.num_heads,
            scale=self.head_dim**-0.5,
            dropout=None
            if deterministic
            else lambda p: _dropout(self.attention_dropout, p, deterministic=False, rngs=rngs),
        )
        out = _dropout(self.dropout, self.output(context), deterministic=deterministic, rngs=rngs)
        return x + out, (q, k, v)


class FeedForward(nnx.Module):
    """x + output(gelu(intermediate(LayerNorm(x)))) (HF XLMRobertaXLLayer.feed_forward_chunk:
    no dropout on this branch)."""

    def __init__(self, config: XLMRobertaXLConfig, *, rngs: nnx.Rngs):
        self.layer_norm = _layer_norm(config, rngs)
        self.intermediate = _linear(config, config.hidden_size, config.intermediate_size, rngs)
        self.output = _linear(config, config.intermediate_size, config.hidden_size, rngs)

    def __call__(self, x):
        h = jax.nn.gelu(self.intermediate(self.layer_norm(x)), approximate=False)
        return x + self.output(h)


class Layer(nnx.Module):
    def __init__(self, config: XLMRobertaXLConfig, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(config, rngs=rngs)
        self.feed_forward = FeedForward(config, rngs=rngs)

    def __call__(self, x, mask, *, deterministic: bool, rngs):
        x, qkv = self.attention(x, mask, deterministic=deterministic, rngs=rngs)
        return self.feed_forward(x), qkv


class XLMRobertaXL(nnx.Module):
    """The encoder. Holds only parameters: dropout keys come in through `rngs` at call time."""

    def __init__(self, config: XLMRobertaXLConfig, *, rngs: nnx.Rngs, add_pooler: bool = True):
        if not isinstance(config, XLMRobertaXLConfig):
            raise TypeError(
                f"XLMRobertaXL needs an XLMRobertaXLConfig, got {type(config).__name__}"
            )
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs, layer_norm=False)
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = _layer_norm(config, rngs)
        self.pooler = Pooler(config, rngs=rngs) if add_pooler else None

    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        *,
        num_layers: int | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
        remat: str = "none",
    ) -> TransformerOutput:
        """Encodes a batch; arguments as `models.transformer.Transformer.__call__`. The final
        LayerNorm and the pooler run only when every layer ran."""
        cfg = self.config
        input_ids, attention_mask, token_type_ids, n, rngs = prepare_inputs(
            cfg,
            input_ids,
            attention_mask,
            token_type_ids,
            num_layers=num_layers,
            deterministic=deterministic,
            rngs=rngs,
            max_length=cfg.max_sequence_length,
            dropout_rates=(cfg.hidden_dropout, cfg.attention_dropout),
        )
        mask = attention_mask_of(attention_mask.astype(bool))
        h = self.embeddings(input_ids, token_type_ids, deterministic=deterministic, rngs=rngs)
        hidden_states, qkv = [h], []
        run = layer_caller(remat, deterministic=deterministic)  # models.remat
        for i in range(n):
            h, layer_qkv = run(self.layers[i], h, mask, rngs=rngs)
            hidden_states.append(h)
            qkv.append(layer_qkv)
        pooled = None
        if n == cfg.num_layers:
            h = hidden_states[-1] = self.final_norm(h)
            pooled = self.pooler(h) if self.pooler is not None else None
        return TransformerOutput(
            last_hidden_state=h,
            hidden_states=tuple(hidden_states),
            qkv=tuple(qkv),
            pooler_output=pooled,
        )


def build(config: XLMRobertaXLConfig, *, rngs: nnx.Rngs, add_pooler: bool = True) -> XLMRobertaXL:
    return XLMRobertaXL(config, rngs=rngs, add_pooler=add_pooler)


def unreachable_param(path: tuple, num_layers: int, used: frozenset[str]) -> bool:
    """Pre-LayerNorm: in the last layer the attention's LayerNorm feeds the projections and is
    reachable (when any is used); the rest of that layer after q/k/v, the projections not in
    `used`, the final LayerNorm and the pooler are not (`last_layer_unreachable`)."""
    return last_layer_unreachable(path, num_layers, used, pre_layer_norm=True)
