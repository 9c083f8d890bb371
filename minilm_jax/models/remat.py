"""Activation rematerialisation of an encoder's layers (``config.remat``), for every family.

Training keeps, for the backward pass, what each layer computed on the way forward. At the
paper's shapes (sequence 512) most of it is attention: the float32 scores and probabilities
are [batch, heads, 512, 512] per layer, 16x a layer's [batch, 512, hidden] activations for
a 384-wide student. ``jax.checkpoint`` around each layer, with a policy saying what may be
kept, trades that memory for recomputation in the backward pass:

- ``none``: keep everything (no recomputation; the default).
- ``attention``: keep the outputs of the layer's matrix products without batch dimensions
  (the q/k/v, output and feed-forward projections), recompute the rest: attention scores,
  softmax, dropout masks and context (batched products), GELU and LayerNorms. About one
  extra attention computation per layer in the backward pass.
- ``layer``: keep only each layer's input and recompute the whole layer in the backward pass
  (about one extra forward pass of the student).

The recomputed dropout masks are the same (same keys), so every policy gives the same
gradients up to float rounding. The frozen teacher needs none of this: it is not
differentiated, so nothing of it is kept for a backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

POLICIES = ("none", "attention", "layer")
_SAVEABLE = {
    "attention": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "layer": jax.checkpoint_policies.nothing_saveable,
}


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"remat={policy!r}; allowed: {POLICIES}")


def layer_caller(policy: str, **static: Any) -> Callable[..., Any]:
    """``call(layer, *arrays, rngs=rngs)`` -> ``layer(*arrays, rngs=rngs, **static)``, each call
    rematerialised under ``policy``. ``static``: the layer's non-array arguments
    (``deterministic``, numpy tables), which ``jax.checkpoint`` must not trace."""
    check_policy(policy)

    def call(layer, *arrays, rngs=None):
        return layer(*arrays, rngs=rngs, **static)

    if policy == "none":
        return call
    # nnx.remat threads the layer's parameters and the dropout stream's counter through
    # jax.checkpoint, so the recomputed masks are drawn from the same keys.
    remat = nnx.remat(
        lambda layer, arrays, rngs: call(layer, *arrays, rngs=rngs), policy=_SAVEABLE[policy]
    )
    return lambda layer, *arrays, rngs=None: remat(layer, arrays, rngs)
