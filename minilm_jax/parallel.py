"""The one place that knows about devices: multi-host start-up, the mesh and the shardings.

Data parallelism over every device of every host: one 1-D mesh with a ``data`` axis; batches
are split along it, the student's state and the frozen teacher are replicated. Each host feeds
only its own slice of the global batch (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(distributed: Mapping[str, Any] | None) -> None:
    """Starts multi-host JAX when the config asks for it; must run before any JAX computation.

    ``distributed`` holds ``coordinator_address``, ``num_processes`` and ``process_id``; all
    None (the default) means a single process, or, with ``auto=True``, that the cluster
    environment (TPU pod, SLURM, ...) tells ``jax.distributed.initialize`` everything itself.
    """
    if not distributed:
        return
    explicit = {
        key: distributed.get(key)
        for key in ("coordinator_address", "num_processes", "process_id")
        if distributed.get(key) is not None
    }
    if not explicit and not distributed.get("auto", False):
        return
    if jax.distributed.is_initialized():  # e.g. the second run of a sweep in one process
        return
    if distributed.get("cpu_collectives"):
        # Real multi-process runs on CPU (tests, laptops) need a collectives backend.
        jax.config.update("jax_cpu_collectives_implementation", distributed["cpu_collectives"])
    local_ids = distributed.get("local_device_ids")
    jax.distributed.initialize(
        **explicit, local_device_ids=list(local_ids) if local_ids is not None else None
    )
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: every device of every host).

    Auto axis types (``jax.make_mesh`` defaults to Explicit in current JAX): shardings are
    given at the jit boundary and XLA propagates them, so the model code needs no
    ``out_sharding`` annotations.
    """
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``data`` axis, other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, field: str) -> None:
    """Fails early, naming the config field, when a global batch cannot be split evenly."""
    devices, processes = jax.device_count(), jax.process_count()
    if batch_size <= 0 or batch_size % devices:
        raise ValueError(
            f"config.{field}={batch_size} must be a positive multiple of the number of devices "
            f"({devices} over {processes} process(es)) for data parallelism."
        )


def to_global(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Host-local numpy rows -> one global array per field, sharded along ``data``."""
    sharding = batch_sharded(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places a pytree on every device of the mesh; every host passes the same values.

    Goes through host memory so it works for arrays committed to one local device as well as
    in multi-host runs, where a replicated global array spans devices this host cannot see.
    """
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )
