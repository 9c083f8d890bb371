"""Optimizer pieces shared by distillation (train.py) and fine-tuning (finetune.py)."""

from typing import Any

import jax


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices (kernels, embeddings) only: not on biases or LayerNorm."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)
