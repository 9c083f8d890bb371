"""What the project knows about TPUs without having one: chips, slice names, the libtpu that
the installed jax needs, and how a host with libtpu but no TPU keeps JAX quiet.

- ``CHIPS``: per chip generation, the HBM and the peak bf16 FLOP/s (each number with its
  source), the device kind JAX reports, and how Cloud names its slices.
- ``parse_topology("v5e:4x4" | "v5e-16" | "v5litepod-16" | "v4-32" | ...)``: a known slice.
- ``topology_devices(topology, num_slices)``: the compile-only devices of that slice from
  libtpu (``jax.experimental.topologies``), for ``jit(...).lower(...).compile()``.
- ``check_libtpu()``: libtpu present and at the version the installed jax pins.
- ``configure_platforms()``: where libtpu is installed but no TPU is attached, tells JAX not
  to start its TPU backend (which prints libtpu's start-up warnings on every program).

Imports jax lazily: ``configure_platforms`` must act before JAX starts a backend.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # our name, the prefix of libtpu's topology names ("v5e" in "v5e:4x4")
    device_kind: str  # jax.Device.device_kind
    hbm_bytes: int  # HBM per chip, from the spec sheet
    hbm_usable_bytes: int  # what XLA:TPU compiles against (its out-of-memory message)
    peak_bf16_flops: float  # dense bf16 FLOP/s per chip, from the spec sheet
    accelerator_prefix: str  # Cloud accelerator type "<prefix>-<N>"
    cores_per_name_unit: int  # Cloud's N counts chips (1) or TensorCores (2 per chip)
    shapes: tuple[str, ...]  # single-slice shapes Cloud offers, chips per axis
    chip_config_name: str | None = None  # "megacore": one JAX device per chip (v4, v5p)


# Spec-sheet numbers: Google Cloud's TPU pages, "System architecture" tables
# (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e), read 2026. Usable HBM: the limit
# libtpu 0.0.42.1 reports when a program does not fit ("... exceeds available HBM (15.75G)"),
# measured with a deliberately oversized program on each chip's compile-only topology.
CHIPS: dict[str, Chip] = {
    chip.name: chip
    for chip in (
        Chip(
            name="v4",
            device_kind="TPU v4",
            hbm_bytes=32 * GIB,  # "HBM2 capacity and bandwidth: 32 GiB, 1200 GBps"
            hbm_usable_bytes=int(30.75 * GIB),
            peak_bf16_flops=275e12,  # "Peak compute per chip: 275 teraflops (bf16 or int8)"
            accelerator_prefix="v4",
            cores_per_name_unit=2,
            shapes=(
                "2x2x1",
                "2x2x2",
                "2x2x4",
                "2x4x4",
                "4x4x4",
                "4x4x8",
                "4x8x8",
                "8x8x8",
                "8x8x16",
                "8x16x16",
            ),
            chip_config_name="megacore",
        ),
        Chip(
            name="v5e",
            device_kind="TPU v5 lite",
            hbm_bytes=16 * GIB,  # "HBM2 capacity and bandwidth: 16 GB, 819 GBps"
            hbm_usable_bytes=int(15.75 * GIB),
            peak_bf16_flops=197e12,  # "Peak compute per chip (bf16): 197 TFLOPs"
            accelerator_prefix="v5litepod",
            cores_per_name_unit=1,
            shapes=("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
        ),
        Chip(
            name="v5p",
            device_kind="TPU v5",
            hbm_bytes=95 * 10**9,  # "HBM2e capacity and bandwidth: 95GB, 2765 GBps"
            hbm_usable_bytes=int(95.74 * GIB),
            peak_bf16_flops=459e12,  # "Peak compute per chip (bf16): 459 TFLOPs"
            accelerator_prefix="v5p",
            cores_per_name_unit=2,
            shapes=(
                "2x2x1",
                "2x2x2",
                "2x2x4",
                "2x4x4",
                "4x4x4",
                "4x4x8",
                "4x8x8",
                "8x8x8",
                "8x8x16",
                "8x16x16",
                "16x16x16",
                "16x16x24",
            ),
            chip_config_name="megacore",
        ),
        Chip(
            name="v6e",
            device_kind="TPU v6 lite",
            hbm_bytes=32 * 10**9,  # "HBM capacity per chip: 32 GB"
            hbm_usable_bytes=int(31.25 * GIB),
            peak_bf16_flops=918e12,  # "Peak compute per chip (bf16): 918 TFLOPs"
            accelerator_prefix="v6e",
            cores_per_name_unit=1,
            shapes=("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
        ),
    )
}
# Cloud's other name for v5e slices.
_PREFIX_ALIASES = {"v5e": "v5e", "v5litepod": "v5e", "v4": "v4", "v5p": "v5p", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    chip: Chip
    shape: str  # chips per axis, "4x4"

    @property
    def name(self) -> str:
        """libtpu's name: ``v5e:4x4``."""
        return f"{self.chip.name}:{self.shape}"

    @property
    def num_chips(self) -> int:
        return math.prod(int(n) for n in self.shape.split("x"))

    @property
    def accelerator_type(self) -> str:
        """Cloud's name: ``v5litepod-16``, ``v4-32`` (v4/v5p count TensorCores)."""
        return f"{self.chip.accelerator_prefix}-{self.num_chips * self.chip.cores_per_name_unit}"


def known_topologies() -> str:
    """One line per chip: libtpu's names and Cloud's accelerator-type names."""
    lines = []
    for chip in CHIPS.values():
        counts = "TensorCores = 2 x chips" if chip.cores_per_name_unit == 2 else "chips"
        aliases = "v5e-N or v5litepod-N" if chip.name == "v5e" else f"{chip.accelerator_prefix}-N"
        lines.append(f"{chip.name}:{{{','.join(chip.shapes)}}} ({aliases}, N = {counts})")
    return "; ".join(lines)


def parse_topology(name: str) -> Topology:
    """``"v5e:4x4"`` (libtpu's name) or ``"v5e-16"`` / ``"v5litepod-16"`` / ``"v4-32"``
    (Cloud's accelerator type) -> a known single slice; ``ValueError`` listing the known
    ones otherwise."""
    text = name.strip().lower()
    match = re.fullmatch(r"([a-z0-9]+)[:=_]([0-9x]+)", text)
    if match and match.group(1) in CHIPS and match.group(2) in CHIPS[match.group(1)].shapes:
        return Topology(CHIPS[match.group(1)], match.group(2))
    match = re.fullmatch(r"([a-z0-9]+)-([0-9]+)", text)
    if match and match.group(1) in _PREFIX_ALIASES:
        chip = CHIPS[_PREFIX_ALIASES[match.group(1)]]
        for shape in chip.shapes:
            topology = Topology(chip, shape)
            if topology.num_chips * chip.cores_per_name_unit == int(match.group(2)):
                return topology
    raise ValueError(f"--topology={name!r}: unknown TPU slice; known: {known_topologies()}")


# ---------------------------------------------------------------------------------------------
# libtpu: installed, and at the version jax pins.
# ---------------------------------------------------------------------------------------------


def libtpu_requirement() -> str | None:
    """The libtpu requirement of the installed jax's ``tpu`` extra, e.g. ``libtpu==0.0.42.*``
    (read from jax's package metadata, so it follows whatever jax is installed)."""
    try:
        requires = importlib.metadata.requires("jax") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        if spec.strip().startswith("libtpu") and re.search(r"extra\s*==\s*['\"]tpu['\"]", marker):
            return spec.strip()
    return None


def check_libtpu() -> str:
    """Returns the installed libtpu's version; ``ValueError`` (one line saying what to install)
    when it is missing or does not satisfy the installed jax's pin."""
    from packaging.requirements import Requirement

    import jax

    wanted = libtpu_requirement()
    install = f"pip install '{wanted or 'libtpu'}'"
    try:
        version = importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None or importlib.util.find_spec("libtpu") is None:
        raise ValueError(
            f"libtpu is not installed; compiling for a TPU needs it: {install} (the version "
            f"jax {jax.__version__} pins; or pip install -e '.[tpu]')"
        )
    if wanted and not Requirement(wanted).specifier.contains(version, prereleases=True):
        raise ValueError(
            f"libtpu {version} does not match jax {jax.__version__}, which needs {wanted}: "
            f"{install}"
        )
    return version


# ---------------------------------------------------------------------------------------------
# Compile-only devices.
# ---------------------------------------------------------------------------------------------


def quiet_libtpu(topology: Topology) -> None:
    """Settings libtpu reads when it starts, for a host with no TPU attached (a TPU VM's own
    values win): the slice and the workers it would otherwise look up in the TPU VM's metadata
    server (without them it prints "could not determine TPU accelerator type / worker
    hostnames" warnings), and no lock file: libtpu normally lets one process per host hold
    the chips, so a second compile (a parallel test worker, the CLI next to a notebook)
    would fail with "Internal error when accessing libtpu multi-process lockfile"."""
    if tpu_attached():
        return
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topology: Topology, num_slices: int = 1) -> list:
    """The devices of ``num_slices`` copies of ``topology``, compile-only (no TPU needed):
    usable in a ``Mesh`` and in shardings for ``jit(...).lower(...).compile()``. Multi-slice
    devices carry ``slice_index``."""
    check_libtpu()
    quiet_libtpu(topology)
    from jax.experimental import topologies

    kwargs = {}
    if topology.chip.chip_config_name:
        kwargs["chip_config_name"] = topology.chip.chip_config_name
    if topology.chip.cores_per_name_unit == 1 and topology.num_chips <= 8:
        # v5e/v6e slices of up to 8 chips are one host (libtpu's default host is 2x2).
        dims = [int(n) for n in topology.shape.split("x")]
        kwargs["chips_per_host_bounds"] = tuple(dims + [1] * (3 - len(dims)))
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    return list(
        topologies.get_topology_desc(platform="tpu", topology_name=topology.name, **kwargs).devices
    )


# ---------------------------------------------------------------------------------------------
# Hosts with libtpu installed but no TPU attached.
# ---------------------------------------------------------------------------------------------


def tpu_attached() -> bool:
    """TPU chips on this host's PCI bus, by JAX's own test (reads /sys, no network)."""
    from jax._src import hardware_utils

    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def default_platforms() -> str | None:
    """The ``JAX_PLATFORMS`` this host should use, or None to leave JAX's own choice.

    JAX's default tries every backend it knows, TPU included, and once libtpu is installed
    that attempt prints libtpu's start-up warnings on machines without a TPU. So where libtpu
    is installed, no TPU is attached and the user has not chosen: ``cpu``, or ``cuda,cpu`` on
    a host with an NVIDIA GPU and JAX's CUDA plugin (what JAX would pick there anyway).
    Other GPU hosts keep JAX's choice (and libtpu's warnings).
    """
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return None
    if tpu_attached():
        return None
    from jax._src import hardware_utils

    if hardware_utils.has_visible_nvidia_gpu():
        plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin")
        if any(importlib.util.find_spec(p) is not None for p in plugins):
            return "cuda,cpu"
        return None
    if hardware_utils.num_available_amd_gpus(stop_at=1):
        return None
    return "cpu"


def configure_platforms() -> str | None:
    """Applies ``default_platforms()`` (process environment, inherited by subprocesses, and
    JAX's config if jax is imported already) unless JAX has started its backends; returns
    the platforms set, or None."""
    platforms = default_platforms()
    if platforms is None:
        return None
    import jax
    from jax._src import xla_bridge

    if jax.config.jax_platforms or xla_bridge.backends_are_initialized():
        return None
    os.environ["JAX_PLATFORMS"] = platforms
    jax.config.update("jax_platforms", platforms)
    return platforms
