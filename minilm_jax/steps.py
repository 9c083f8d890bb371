"""The one train step of every training loop, and its jit builder.

Distillation and every fine-tuning task differ only in their loss; everything else about a
step is here, written once: dropout keys, gradient accumulation, the AdamW update at the
scheduled learning rate, the NaN policy, and the metrics every loop logs.

    loss_fn(params, aux, batch, dropout_key) -> (loss, {name: scalar})

`aux` is whatever else the loss reads besides the trained parameters (the frozen teacher's
parameters for distillation; nothing for fine-tuning). The step is a pure function of
arrays; `jit_train_step` binds the static pieces and places it on the mesh with donated state.

NaN policy: a step whose loss, gradient or update is not finite leaves the state unchanged (no update
is applied, the step counter does not move), and reports `finite == 0`; the loop then stops
with the last good checkpoint, which therefore never holds NaNs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from minilm_jax import optim

LossFn = Callable[[Any, Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint must hold besides the data iterator's position."""

    step: jax.Array  # int32 scalar: updates applied so far
    params: Any  # nnx.State of the trained model's parameters
    opt_state: Any
    rng: jax.Array  # raw uint32 key data (Orbax saves it like any array); dropout seed


def init_state(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def split_micro_batches(batch: Mapping[str, jax.Array], n: int) -> dict[str, jax.Array]:
    """[B, ...] -> [n, B/n, ...] taking every n-th row, so each micro-batch keeps rows on every
    device (a contiguous split would put a whole micro-batch on a few devices)."""

    def split(x):
        x = x.reshape(x.shape[0] // n, n, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return {k: split(v) for k, v in batch.items()}


def _gradients(loss_fn: LossFn, params, aux, batch, dropout_key, grad_accum_steps: int):
    """(loss, metrics, grads), the mean over `grad_accum_steps` micro-batches."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        (loss, metrics), grads = grad_fn(params, aux, batch, dropout_key)
        return loss, metrics, grads
    micro = split_micro_batches(batch, grad_accum_steps)
    keys = jax.random.split(dropout_key, grad_accum_steps)
    first = jax.tree.map(lambda x: x[0], micro)
    (_, metrics_shape), _ = jax.eval_shape(grad_fn, params, aux, first, keys[0])

    def accumulate(carry, inputs):
        micro_batch, key = inputs
        (loss, metrics), grads = grad_fn(params, aux, micro_batch, key)
        return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

    zeros = jax.tree.map(
        lambda x: jnp.zeros(x.shape, x.dtype),
        (jax.ShapeDtypeStruct((), jnp.float32), metrics_shape, params),
    )
    total, _ = jax.lax.scan(accumulate, zeros, (micro, keys))
    loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum_steps, total)
    return loss, metrics, grads


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    schedule: jax.Array,
    aux: Any,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    grad_accum_steps: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step at `optim.learning_rate(state.step, schedule)`.

    The dropout key of step s is `fold_in(state.rng, s)`: a resumed run draws the same masks.
    Metrics: the loss and the loss function's own terms, `grad_norm`, `param_norm`,
    `update_norm`, `lr`, `finite` (1/0) and `tokens` (real tokens in the batch).
    """
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    loss, metrics, grads = _gradients(
        loss_fn, state.params, aux, batch, dropout_key, grad_accum_steps
    )
    lr = optim.learning_rate(state.step, schedule)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: -lr * u, updates)
    params = optax.apply_updates(state.params, updates)
    grad_norm, update_norm = optax.global_norm(grads), optax.global_norm(updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    # One cond over the whole state rather than a select per leaf: same result, far fewer
    # small kernels to compile.
    params, opt_state, step = jax.lax.cond(
        finite,
        lambda: (params, opt_state, state.step + 1),
        lambda: (state.params, state.opt_state, state.step),
    )
    new_state = state.replace(step=step, params=params, opt_state=opt_state)
    step_metrics = {
        "loss": loss,
        **metrics,
        "grad_norm": grad_norm,
        "param_norm": optax.global_norm(params),
        "update_norm": update_norm,
        "lr": lr,
        "finite": finite.astype(jnp.float32),
        "tokens": jnp.sum(batch["attention_mask"] != 0).astype(jnp.float32),
    }
    return new_state, step_metrics


def jit_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    grad_accum_steps: int,
    state_sharding: Any,
    batch_sharding: NamedSharding,
    aux_sharding: Any,
    replicated: NamedSharding,
):
    """The jitted `train_step(state, batch, schedule, aux)` on a mesh: state donated, in and
    out shardings fixed (a sharding may be one NamedSharding for a whole pytree, or a pytree
    of them matching the argument)."""
    return jax.jit(
        functools.partial(train_step, loss_fn=loss_fn, tx=tx, grad_accum_steps=grad_accum_steps),
        in_shardings=(state_sharding, batch_sharding, replicated, aux_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
