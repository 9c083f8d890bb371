"""The optimizer of every training loop (distillation and each fine-tuning task).

AdamW as the paper and transformers' fine-tuning recipes use it: global-norm clipping (0 = off),
Adam moments, decoupled weight decay on matrices only (not on biases and LayerNorm), scaled
by a learning rate with linear warmup then linear decay to 0. The learning rate is applied
by the train step from a small schedule array (`schedule`), not baked into the Optax chain, so
one compiled step serves every point of a learning-rate sweep.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Config fields of the optimizer, shared by distillation and fine-tuning configs.
OPTIMIZER_FIELDS = ("adam_b1", "adam_b2", "adam_eps", "weight_decay", "grad_clip_norm")


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices (kernels, embeddings) only: not on biases or LayerNorm."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def schedule(peak: float, warmup_steps: int, total_steps: int) -> np.ndarray:
    """The learning-rate schedule as the float32 [3] array the train step reads."""
    return np.asarray([peak, warmup_steps, total_steps], np.float32)


def learning_rate(step: jax.Array, schedule_array: jax.Array) -> jax.Array:
    """Linear warmup from 0 to the peak over the warmup steps, then linear decay to 0 at the
    last step (transformers' get_linear_schedule_with_warmup, and the paper's schedule).

    `step` counts the updates done before this one (0 for the first), as Optax schedules do.
    """
    peak, warmup, total = schedule_array[0], schedule_array[1], schedule_array[2]
    step = jnp.asarray(step).astype(jnp.float32)
    rising = peak * step / jnp.maximum(warmup, 1.0)
    falling = peak * jnp.maximum(total - step, 0.0) / jnp.maximum(total - warmup, 1.0)
    return jnp.where(step < warmup, rising, falling)


def settings(config: Mapping[str, Any]) -> dict[str, float]:
    """The optimizer fields of a (distillation or fine-tuning) config."""
    return {field: float(config[field]) for field in OPTIMIZER_FIELDS}


def make_optimizer(
    config: Mapping[str, Any], frozen: Callable[[Any], Any] | None = None
) -> optax.GradientTransformation:
    """AdamW without its learning-rate scaling (the train step multiplies the updates by
    `-learning_rate(step, schedule)`): optax.adamw is exactly scale_by_adam ->
    add_decayed_weights -> scale by -lr.

    `frozen(params)` -> bool pytree: parameters that must never change (the ones a loss cannot
    reach). They get no update, no weight decay and no optimizer state.
    """
    s = settings(config)
    parts = [optax.clip_by_global_norm(s["grad_clip_norm"])] if s["grad_clip_norm"] else []
    parts += [
        optax.scale_by_adam(b1=s["adam_b1"], b2=s["adam_b2"], eps=s["adam_eps"]),
        optax.add_decayed_weights(s["weight_decay"], mask=decay_mask),
    ]
    adamw = optax.chain(*parts)
    if frozen is None:
        return adamw

    def labels(params):
        return jax.tree.map(lambda f: "frozen" if f else "train", frozen(params))

    return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)
