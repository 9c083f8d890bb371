"""The one place that knows about devices: multi-host start-up, the mesh and the shardings.

The mesh has up to three named axes, outermost first:

- ``slice``: data parallelism across TPU slices (``config.mesh.slices``), over the slower
  data-centre network; built with JAX's hybrid mesh helper, so each slice is one block.
- ``data``: data parallelism inside a slice; parameters are replicated along it.
- ``fsdp``: data parallelism whose devices also split the parameters, the optimizer state and
  the frozen teacher between them (fully sharded data parallelism): XLA gathers each weight
  where it is used and reduce-scatters its gradient.

The batch is split over all three axes together, so every device gets
``batch_size / device_count`` rows whatever the mesh. Which dimension of a parameter goes on
``fsdp`` is decided by one rule table (``FSDP_RULES``) on the parameter's path; the same rules
shard an optimizer state whose leaves mirror the parameters (Adam's ``mu``/``nu``). Each host
feeds only its own rows of the global batch (``jax.make_array_from_process_local_data``).

``make_mesh()`` without sizes is the original 1-D ``data`` mesh (everything replicated);
``mesh_from_config(config.mesh)`` builds the ``slice x data x fsdp`` mesh. With ``fsdp=1``
both are pure data parallelism and compute the same numbers.

Weights go the other way too: ``on_host()`` makes them in host memory (a teacher larger than
one chip), ``place`` sends each device its part, ``gather`` brings whole values back to every
host (export).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

SLICE_AXIS = "slice"
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (SLICE_AXIS, DATA_AXIS, FSDP_AXIS)
# config.mesh as the trainers read it; -1 = every device the other axes leave.
MESH_DEFAULTS = {"data": -1, "fsdp": 1, "slices": 1}

# Which dimension of a parameter goes on the `fsdp` axis: (pattern searched in the leaf's
# dotted path, dimensions to try in order). The first matching pattern decides; of its
# dimensions the first whose size the fsdp axis divides is sharded, and a leaf none of whose
# dimensions divide stays replicated. Leaves no pattern matches, and scalars (Adam's
# step counts), are replicated. Paths are family-independent leaf names
# (``layers.3.attention.query.kernel``, ``embeddings.word_embeddings.embedding``) and an
# optimizer state's leaves end in the parameter's path (``...mu.layers.3...kernel``), so one
# table covers the student, the teacher and Adam's moments of every encoder family.
LARGEST = "largest"  # the leaf's dimensions from the largest down (ties: the first)
FSDP_RULES: tuple[tuple[str, tuple[int, ...] | str], ...] = (
    # [vocab | positions | token types, hidden]: the rows; the hidden dimension where they do
    # not divide (vocabularies of 30522 / 50265 / 250002 rows, 2 token types, 514 positions).
    (r"(^|\.)embedding$", (0, 1)),
    # Linear [in, out] (and any higher-rank projection kernel): the larger side first, e.g.
    # the 3072 of a 768 -> 3072 feed-forward kernel.
    (r"(^|\.)kernel$", LARGEST),
    # Biases and LayerNorm scales: a few KiB each; a gather per use would cost more than
    # the memory saved.
    (r"(^|\.)(bias|scale)$", ()),
)


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


# ---------------------------------------------------------------------------------------------
# The mesh.
# ---------------------------------------------------------------------------------------------


def mesh_shape(mesh_config: Mapping[str, Any] | None, num_devices: int) -> dict[str, int]:
    """``config.mesh`` -> ``{"slice": s, "data": d, "fsdp": f}`` with ``s * d * f ==
    num_devices``; -1 in ``data`` or ``fsdp`` takes every device the other axes leave.

    Raises ``ValueError`` naming the fields and the device count when they disagree.
    """
    cfg = dict(MESH_DEFAULTS)
    for key, value in mesh_config.items() if mesh_config is not None else ():
        if key not in MESH_DEFAULTS:
            raise ValueError(f"config.mesh.{key}: unknown field; allowed: {sorted(MESH_DEFAULTS)}")
        cfg[key] = value
    for key, value in cfg.items():
        allowed = (-1,) if key != "slices" else ()
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"config.mesh.{key}={value!r}: must be an integer")
        if value < 1 and value not in allowed:
            raise ValueError(
                f"config.mesh.{key}={value}: must be a positive integer"
                + (" or -1 (all remaining devices)" if allowed else "")
            )
    free = [key for key in ("data", "fsdp") if cfg[key] == -1]
    if len(free) > 1:
        raise ValueError(
            "config.mesh.data and config.mesh.fsdp are both -1; at most one axis can take "
            "the remaining devices"
        )
    fixed = math.prod(cfg[key] for key in cfg if cfg[key] != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"config.mesh.{free[0]}=-1: the other axes ({_describe(cfg)}) use {fixed} "
                f"devices, which does not divide the {num_devices} devices of this run"
            )
        cfg[free[0]] = num_devices // fixed
    if math.prod(cfg.values()) != num_devices:
        raise ValueError(
            f"config.mesh: {_describe(cfg)} = {math.prod(cfg.values())} devices, but this run "
            f"has {num_devices} devices; the product must equal the device count (-1 = all "
            "remaining devices)"
        )
    return {
        SLICE_AXIS: int(cfg["slices"]),
        DATA_AXIS: int(cfg["data"]),
        FSDP_AXIS: int(cfg["fsdp"]),
    }


def _describe(cfg: Mapping[str, int]) -> str:
    return " x ".join(f"{key}={cfg[key]}" for key in ("slices", "data", "fsdp"))


def mesh_from_config(mesh_config: Mapping[str, Any] | None, devices=None) -> jax.sharding.Mesh:
    """The ``slice x data x fsdp`` mesh of ``config.mesh`` over ``devices`` (default: every
    device of every host; a compile-only topology's devices work too)."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(mesh_config, len(devices))
    return make_mesh(
        devices, data=shape[DATA_AXIS], fsdp=shape[FSDP_AXIS], slices=shape[SLICE_AXIS]
    )


def make_mesh(
    devices=None, *, data: int | None = None, fsdp: int = 1, slices: int = 1
) -> jax.sharding.Mesh:
    """A mesh over ``devices`` (default: every device of every host).

    Without sizes: the 1-D ``data`` mesh, pure data parallelism. With sizes (already
    resolved, product = device count): the ``slice x data x fsdp`` mesh; JAX's mesh helpers
    order the devices so that the inner axes follow the chips' interconnect, and with
    ``slices > 1`` each slice (``device.slice_index``) is one contiguous block of the outer
    axis.

    Auto axis types (``jax.make_mesh`` defaults to Explicit in current JAX): shardings are
    given at the jit boundary and XLA propagates them, so the model code needs no
    ``out_sharding`` annotations.
    """
    devices = list(devices) if devices is not None else jax.devices()
    if data is None and fsdp == 1 and slices == 1:
        return jax.make_mesh(
            (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
        )
    data = len(devices) // (fsdp * slices) if data is None else data
    if slices * data * fsdp != len(devices):
        raise ValueError(
            f"mesh slices={slices} x data={data} x fsdp={fsdp} does not use the "
            f"{len(devices)} devices"
        )
    from jax.experimental import mesh_utils

    found = sorted({getattr(d, "slice_index", 0) for d in devices})
    # allow_split_physical_axes: a data x fsdp split that matches no product of the torus
    # axes (fsdp=8 on a 4x4x4 v5p, fsdp=4 on an 8x8 v6e) cuts an axis; shapes that match are
    # laid out as without it (JAX tries the unsplit assignment first).
    if slices == 1:
        if len(found) > 1:
            raise ValueError(
                f"config.mesh.slices=1, but the devices form {len(found)} slices: set "
                f"config.mesh.slices={len(found)}"
            )
        grid = mesh_utils.create_device_mesh(
            (1, data, fsdp), devices, allow_split_physical_axes=True
        )
    elif len(found) != slices:
        raise ValueError(
            f"config.mesh.slices={slices}, but the {len(devices)} devices form {len(found)} "
            f"slice(s) ({devices[0].platform} devices"
            + ("" if hasattr(devices[0], "slice_index") else " have no slice_index")
            + ")"
        )
    else:
        grid = mesh_utils.create_hybrid_device_mesh(
            (1, data, fsdp), (slices, 1, 1), devices, allow_split_physical_axes=True
        )
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def axis_size(mesh: jax.sharding.Mesh, axis: str) -> int:
    """Size of ``axis`` in ``mesh``; 1 for an axis the mesh does not have."""
    return int(mesh.shape.get(axis, 1))


def describe_mesh(mesh: jax.sharding.Mesh) -> dict[str, int]:
    """``{"slice": s, "data": d, "fsdp": f}`` for any of our meshes (1-D included)."""
    return {axis: axis_size(mesh, axis) for axis in MESH_AXES}


# ---------------------------------------------------------------------------------------------
# Shardings of batches.
# ---------------------------------------------------------------------------------------------


def batch_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
    """The mesh axes a batch's leading dimension is split over: all of ours it has."""
    return tuple(axis for axis in MESH_AXES if axis in mesh.axis_names)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device (``slice``, ``data`` and ``fsdp``
    together), other axes whole."""
    axes = batch_axes(mesh)
    return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))


def check_batch_size(batch_size: int, field: str, num_devices: int | None = None) -> None:
    """Fails early, naming the config field, when a global batch cannot be split evenly over
    this run's devices (or ``num_devices``: another machine's)."""
    if num_devices is None:
        devices, where = jax.device_count(), f" over {jax.process_count()} process(es)"
    else:
        devices, where = num_devices, ""
    if batch_size <= 0 or batch_size % devices:
        raise ValueError(
            f"config.{field}={batch_size} must be a positive multiple of the number of devices "
            f"({devices}{where}): every device takes an equal share of the batch, whatever "
            "config.mesh says."
        )


def to_global(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Host-local numpy rows -> one global array per field, split along the batch axes."""
    sharding = batch_sharded(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }


# ---------------------------------------------------------------------------------------------
# Shardings of parameters and optimizer state: the rule table applied.
# ---------------------------------------------------------------------------------------------


def path_name(path: Sequence[Any]) -> str:
    """A pytree key path as the dotted name the rules match: ``layers.3.attention.query.kernel``
    (an NNX variable's trailing ``.value`` attribute dropped)."""
    keys = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            keys.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            keys.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            keys.append(key.name)
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            keys.append(str(key.key))
        else:
            keys.append(str(key))
    if len(path) and isinstance(path[-1], jax.tree_util.GetAttrKey) and keys[-1] == "value":
        keys.pop()
    return ".".join(keys)


def fsdp_dim(name: str, shape: Sequence[int], fsdp: int, rules=FSDP_RULES) -> int | None:
    """The dimension of the leaf ``name`` with ``shape`` that goes on an ``fsdp``-sized axis
    under ``rules``, or None (replicated)."""
    if fsdp <= 1 or len(shape) == 0:
        return None
    for pattern, dims in rules:
        if re.search(pattern, name):
            if dims == LARGEST:
                dims = sorted(range(len(shape)), key=lambda i: (-shape[i], i))
            for dim in dims:
                if -len(shape) <= dim < len(shape) and shape[dim] % fsdp == 0:
                    return dim % len(shape)
            return None
    return None


def leaf_spec(name: str, shape: Sequence[int], fsdp: int, rules=FSDP_RULES) -> P:
    """The PartitionSpec of one parameter-like leaf: ``fsdp`` on the chosen dimension."""
    dim = fsdp_dim(name, shape, fsdp, rules)
    if dim is None:
        return P()
    return P(*([None] * dim + [FSDP_AXIS]))


def state_shardings(tree: Any, mesh: jax.sharding.Mesh, rules=FSDP_RULES) -> Any:
    """A ``NamedSharding`` for every array leaf of ``tree`` (an ``nnx.State`` of parameters,
    an Optax state mirroring it, a TrainState holding both, concrete or abstract): the rule
    table's dimension on ``fsdp``, everything else replicated along every axis. On a mesh
    without an ``fsdp`` axis (or of size 1) every leaf is replicated."""
    fsdp = axis_size(mesh, FSDP_AXIS)

    def one(path, leaf):
        return NamedSharding(mesh, leaf_spec(path_name(path), np.shape(leaf), fsdp, rules))

    return jax.tree_util.tree_map_with_path(one, tree)


def abstract(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct``s of ``tree``'s leaves carrying ``shardings``: arguments for
    ``jit(...).lower`` that need no memory (and no devices: compile-only topologies)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )


def on_host():
    """A context in which new arrays are made in host memory (JAX's CPU backend) instead of
    on the first accelerator: weights loaded or initialised whole, before ``place`` gives
    every device its part. A no-op where the CPU backend is not enabled."""
    try:
        cpu = jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return contextlib.nullcontext()
    return jax.default_device(cpu)


def place(tree: Any, shardings: Any) -> Any:
    """Puts a pytree that every host holds whole onto the mesh with ``shardings`` (each device
    gets its slice). Goes through host memory so it works for arrays committed to one local
    device as well as in multi-host runs, where a global array spans devices this host cannot
    see."""

    def one(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places a pytree on every device of the mesh; every host passes the same values."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )


def gather(tree: Any) -> Any:
    """Every leaf of ``tree`` (global arrays, sharded in any way) as a whole NumPy array on
    every host: for export, plots and tests. In multi-host runs every host must call it (the
    shards other hosts hold come through a collective)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def bytes_per_device(tree: Any, shardings: Any) -> int:
    """Bytes the largest shard of each leaf takes on one device, summed over ``tree``."""
    sizes = jax.tree.map(
        lambda x, s: math.prod(s.shard_shape(np.shape(x))) * np.dtype(x.dtype).itemsize,
        tree,
        shardings,
    )
    return int(sum(jax.tree.leaves(sizes)))
