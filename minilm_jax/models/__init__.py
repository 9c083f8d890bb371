"""Encoder models. `Transformer` covers the BERT family (BERT, RoBERTa, XLM-R)."""

from minilm_jax.models.transformer import (
    FAMILIES,
    Transformer,
    TransformerConfig,
    TransformerOutput,
    position_ids,
    student_config,
)

__all__ = [
    "FAMILIES",
    "Transformer",
    "TransformerConfig",
    "TransformerOutput",
    "position_ids",
    "student_config",
]
