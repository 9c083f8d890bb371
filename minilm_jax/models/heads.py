"""Task heads over any encoder: a sequence classifier and an extractive-QA span head.

Heads take an encoder that follows the project's encoder protocol:
``encoder(input_ids, attention_mask, token_type_ids, *, deterministic, rngs)`` returns an
output with ``.last_hidden_state`` [B, T, D] and ``.pooler_output`` [B, D] (or None), and
``encoder.config`` has ``hidden_size`` and ``initializer_range``. They know nothing else of the
family. Head parameters and logits are float32 whatever the encoder's compute dtype; the
parameters are initialised as transformers does (normal(initializer_range), zero bias), and the
module paths follow transformers' names where it helps loading (``qa_outputs``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

CLASSIFIER_HEADS = ("auto", "pooler", "cls")
# Families whose transformers *ForSequenceClassification classifies the pooler output
# (BertForSequenceClassification); the others use the first token with their own
# dense + tanh (RobertaClassificationHead).
POOLER_FAMILIES = ("bert",)


def resolve_head(head: str, family: str) -> str:
    """ "auto": the pooler for BERT (as BertForSequenceClassification), the [CLS]/<s> head
    with its own dense+tanh for RoBERTa/XLM-R (as RobertaClassificationHead)."""
    if head not in CLASSIFIER_HEADS:
        raise ValueError(f"config.head={head!r}; allowed: {CLASSIFIER_HEADS}")
    if head == "auto":
        return "pooler" if family in POOLER_FAMILIES else "cls"
    return head


def _linear(encoder, d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        kernel_init=nnx.initializers.normal(encoder.config.initializer_range),
        bias_init=nnx.initializers.zeros_init(),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


class SequenceClassifier(nnx.Module):
    """Logits (float32 [B, num_outputs]) of a sequence-level task.

    head="pooler": pooler_output (tanh(dense(h_0)) of the encoder) -> dropout -> linear
    (BertForSequenceClassification).
    head="cls": h_0 -> dropout -> dense -> tanh -> dropout -> linear
    (RobertaClassificationHead; ``dense`` and ``out`` are its dense and out_proj).
    num_outputs=1 is a regression score (STS-B).
    """

    def __init__(self, encoder, num_outputs: int, *, head: str, dropout: float, rngs: nnx.Rngs):
        if head not in ("pooler", "cls"):
            raise ValueError(f"SequenceClassifier head={head!r}; allowed: 'pooler', 'cls'")
        if head == "pooler" and getattr(encoder, "pooler", True) is None:
            raise ValueError("head='pooler' needs an encoder built with its pooler")
        d = encoder.config.hidden_size
        self.encoder = encoder
        self.head = head
        self.dense = _linear(encoder, d, d, rngs) if head == "cls" else None
        self.out = _linear(encoder, d, num_outputs, rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(
        self, input_ids, attention_mask, token_type_ids, *, deterministic: bool = True, rngs=None
    ):
        out = self.encoder(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs
        )
        if self.head == "pooler":
            if out.pooler_output is None:
                raise ValueError("head='pooler' but the encoder returned no pooler_output")
            x = out.pooler_output.astype(jnp.float32)
        else:
            x = self.dropout(
                out.last_hidden_state[:, 0].astype(jnp.float32),
                deterministic=deterministic,
                rngs=rngs,
            )
            x = jnp.tanh(self.dense(x))
        return self.out(self.dropout(x, deterministic=deterministic, rngs=rngs))


class SpanClassifier(nnx.Module):
    """Start and end logits (float32 [B, T] each) of extractive QA: ``qa_outputs``, one
    Linear(D, 2) on the last hidden state, channel 0 the start and 1 the end, no dropout of its
    own: transformers' BertForQuestionAnswering, RobertaForQuestionAnswering and
    XLMRobertaForQuestionAnswering. Logits of padded positions are whatever the encoder gives
    there; ``span_loss`` and ``minilm_jax.qa.decode`` never read them."""

    def __init__(self, encoder, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.qa_outputs = _linear(encoder, encoder.config.hidden_size, 2, rngs)

    def __call__(
        self, input_ids, attention_mask, token_type_ids, *, deterministic: bool = True, rngs=None
    ) -> tuple[jax.Array, jax.Array]:
        out = self.encoder(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs
        )
        logits = self.qa_outputs(out.last_hidden_state.astype(jnp.float32))
        return logits[..., 0], logits[..., 1]


def span_loss(start_logits, end_logits, start_positions, end_positions, attention_mask):
    """Per-example loss [B]: the mean of the start and end cross-entropies (transformers'
    (start_loss + end_loss) / 2), with padded positions left out of the softmax so the loss
    does not depend on how far a batch is padded. Weight and average it in the step.

    Padded positions get the float32 minimum (not -inf): a filler row (all padding, weight 0)
    then has a finite loss instead of NaN, which 0 * NaN would carry into the mean."""
    mask = jnp.asarray(attention_mask).astype(bool)
    lowest = jnp.finfo(jnp.float32).min
    losses = [
        optax.softmax_cross_entropy_with_integer_labels(
            jnp.where(mask, logits.astype(jnp.float32), lowest), positions
        )
        for logits, positions in ((start_logits, start_positions), (end_logits, end_positions))
    ]
    return (losses[0] + losses[1]) / 2
