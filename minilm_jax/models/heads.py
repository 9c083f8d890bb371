"""Task heads on any encoder of `minilm_jax.models` (the encoder call protocol).

`Classifier`: logits of a sequence-level task, as transformers' `*ForSequenceClassification`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

HEADS = ("pooler", "cls")


class Classifier(nnx.Module):
    """Logits (float32 [B, num_outputs]) of a sequence-level task.

    head="pooler": pooler_output (tanh(dense(h_0)) of the encoder) -> dropout -> linear
    (BertForSequenceClassification).
    head="cls": h_0 -> dropout -> dense -> tanh -> dropout -> linear (RobertaClassificationHead).
    num_outputs=1 is a regression score (STS-B).
    """

    def __init__(self, encoder, num_outputs: int, *, head: str, dropout: float, rngs: nnx.Rngs):
        if head not in HEADS:
            raise ValueError(f"Classifier head={head!r}; allowed: {HEADS}")
        if head == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ValueError("head='pooler' needs an encoder with a pooler")
        cfg = encoder.config
        d = cfg.hidden_size
        init = dict(
            kernel_init=nnx.initializers.normal(cfg.initializer_range),
            bias_init=nnx.initializers.zeros_init(),
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.encoder = encoder
        self.head = head
        self.dense = nnx.Linear(d, d, **init) if head == "cls" else None
        self.out = nnx.Linear(d, num_outputs, **init)
        self.dropout = nnx.Dropout(dropout)

    def __call__(
        self, input_ids, attention_mask, token_type_ids, *, deterministic: bool = True, rngs=None
    ):
        out = self.encoder(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs
        )
        if self.head == "pooler":
            x = out.pooler_output.astype(jnp.float32)
        else:
            x = self.dropout(
                out.last_hidden_state[:, 0].astype(jnp.float32),
                deterministic=deterministic,
                rngs=rngs,
            )
            x = jnp.tanh(self.dense(x))
        return self.out(self.dropout(x, deterministic=deterministic, rngs=rngs))
