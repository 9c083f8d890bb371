r"""``python -m minilm_jax.compile``: will an experiment's train step fit a TPU slice?

    python -m minilm_jax.compile --config experiments/bert_base_6x384.py --topology v5e:4x4 \
        [--num_slices N] [--config.field=value ...]

Compiles the trainer's jitted train step (``train.build_step(...).train_fn``, the function
``train_and_evaluate`` calls) for the slice's TPU chips on this host, with no TPU, no weights
and no data: libtpu's compile-only devices (``tpu.topology_devices``), the teacher's shape
from its ``config.json`` (or a preset of the paper's teachers), and the state, batch and
teacher as ``jax.ShapeDtypeStruct``s carrying the run's shardings (``config.mesh``,
``config.remat``, ``config.teacher.param_dtype``, ``config.grad_accum_steps`` all apply).
Prints one JSON object: XLA's per-device memory (arguments, temporaries, outputs), the chip's
HBM, whether it fits, the FLOPs per step and device, and the step and run time at the chip's
peak bf16 FLOP/s and at 40% of it. Exit status 0: fits; 3: does not fit (stderr names the
levers); 2: a config error (``cli.run``: one ``error:`` line).

XLA:TPU refuses to compile a program that exceeds the chip's HBM; the report then has the
memory figures the compiler's message gives (arguments from the shardings) and ``fits: false``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

GIB = 2**30
MFU_ASSUMED = 0.4  # the "realistic" column: 40% of peak, typical of well-tuned TPU training
EXIT_DOES_NOT_FIT = 3
# The levers that lower a step's memory, as the does-not-fit line names them.
LEVER_FIELDS = (
    "remat",
    "mesh.fsdp",
    "teacher.param_dtype",
    "grad_accum_steps",
    "distill.implementation",
)

# The paper's teachers as their Hugging Face config.json says (the fields that shape the
# model), so the fit check needs no download. Keys: the folder names configs.TEACHERS uses.
TEACHER_PRESETS: dict[str, dict[str, Any]] = {
    "bert-base-uncased": dict(
        model_type="bert",
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    ),
    "bert-large-uncased": dict(
        model_type="bert",
        vocab_size=30522,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    ),
    "roberta-large": dict(
        model_type="roberta",
        vocab_size=50265,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ),
    "xlm-roberta-large": dict(
        model_type="xlm-roberta",
        vocab_size=250002,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ),
    # The teachers issue's 3.5B teacher (facebook/xlm-roberta-xl).
    "xlm-roberta-xl": dict(
        model_type="xlm-roberta-xl",
        vocab_size=250880,
        hidden_size=2560,
        num_hidden_layers=36,
        num_attention_heads=32,
        intermediate_size=10240,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ),
    "xlm-roberta-base": dict(
        model_type="xlm-roberta",
        vocab_size=250002,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    ),
}


# ---------------------------------------------------------------------------------------------
# The teacher's shape without its weights.
# ---------------------------------------------------------------------------------------------


def teacher_config(config):
    """The teacher's config (compute dtype = the run's): its folder's config.json when it
    exists (smoke configs: the cached tiny random teacher's folder), else the preset named by
    the folder's last component. No weights are read."""
    from minilm_jax import hf

    path = os.path.expanduser(config.teacher.path or "")
    if os.path.isfile(os.path.join(path, "config.json")):
        try:
            return hf.load_config(path, dtype=config.dtype)
        except ValueError as e:
            raise ValueError(f"config.teacher.path={config.teacher.path!r}: {e}") from None
    name = os.path.basename(os.path.normpath(path)) if path else ""
    if name in TEACHER_PRESETS:
        return hf.config_from_hf_dict(
            TEACHER_PRESETS[name], source=f"preset {name!r}", dtype=config.dtype
        )
    raise ValueError(
        f"config.teacher.path={config.teacher.path!r}: no config.json there and not a known "
        f"preset (the folder name must be one of {sorted(TEACHER_PRESETS)})"
    )


# ---------------------------------------------------------------------------------------------
# The step: the one place that knows how the trainer builds it.
# ---------------------------------------------------------------------------------------------


def build_train_step(config, teacher_cfg, mesh) -> tuple[Callable, tuple]:
    """The trainer's jitted train step (``train.build_step(...).train_fn``, the very function
    ``train_and_evaluate`` calls) and its abstract arguments ``(state, batch, schedule,
    teacher_params)`` on ``mesh``, with the run's shardings. Shapes only: ``nnx.eval_shape``
    builds no parameter."""
    import jax

    from minilm_jax import parallel, train

    student_cfg = train.make_student_config(config, teacher_cfg)
    step = train.build_step(config, teacher_cfg, student_cfg, mesh)
    schedule = jax.ShapeDtypeStruct(
        step.schedule.shape, step.schedule.dtype, sharding=parallel.replicated(mesh)
    )
    args = (
        step.abstract_state(config.seed),
        step.abstract_batch(config.batch_size, config.max_len),
        schedule,
        step.abstract_teacher_params(),
    )
    return step.train_fn, args


# ---------------------------------------------------------------------------------------------
# The core: compile for the topology, read XLA's analyses.
# ---------------------------------------------------------------------------------------------

_SIZE = r"([0-9.]+)\s*([KMGT]i?B?|B)?"
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str | None) -> int:
    return int(float(number) * _UNITS[(unit or "").rstrip("B").rstrip("i") or ""])


def parse_out_of_memory(message: str) -> dict[str, int] | None:
    """The sizes in XLA:TPU's out-of-memory message (libtpu 0.0.42: ``"RESOURCE_EXHAUSTED: Ran
    out of memory on HBM, the total memory required for HLO temporaries (18.25G) exceeds
    available HBM (15.75G)."``); an empty dict for another wording, None for other errors."""
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
        return None
    out: dict[str, int] = {}
    match = re.search(r"temporaries \(" + _SIZE + r"\)", message)
    if match:
        out["temporaries"] = _bytes(*match.groups())
    match = re.search(r"available HBM \(" + _SIZE + r"\)", message)
    if match:
        out["usable"] = _bytes(*match.groups())
    return out


def compile_report(
    fn,
    args: tuple,
    *,
    topology,
    num_slices: int = 1,
    mesh=None,
    total_steps: int | None = None,
    loop_trips: int = 1,
) -> dict[str, Any]:
    """Compiles ``fn`` (a ``jax.jit`` function) for ``args`` (ShapeDtypeStructs with
    shardings on ``topology``'s compile-only devices) and reports its per-device memory, FLOPs
    and step-time bounds on that chip. ``fits`` is False (and the memory figures partial:
    arguments counted from the shardings, temporaries from the compiler's message) when XLA
    refuses the program for lack of HBM; other compile errors propagate.

    XLA's cost analysis counts a loop body once; ``loop_trips`` (the gradient-accumulation
    micro-batches, whose ``lax.scan`` holds nearly all of the step's FLOPs) scales its count.
    """
    import jax

    from minilm_jax import parallel

    chip = topology.chip
    devices = {d for x in jax.tree.leaves(args) for d in x.sharding.device_set}
    device_kind = next(iter(devices)).device_kind
    report: dict[str, Any] = {
        "topology": topology.name,
        "accelerator_type": topology.accelerator_type,
        "num_slices": num_slices,
        "num_devices": len(devices),
        "device_kind": device_kind,
        "mesh": parallel.describe_mesh(mesh) if mesh is not None else None,
        "hbm_bytes": chip.hbm_bytes,
        "hbm_usable_bytes": chip.hbm_usable_bytes,
    }
    arguments = sum(parallel.bytes_per_device(x, x.sharding) for x in jax.tree.leaves(args))
    start = time.perf_counter()
    lowered = fn.lower(*args)
    # A compile-only executable cannot be loaded back ("PjRtCompiler must be constructed with
    # a Client"): kept out of JAX's persistent compilation cache, where a later program
    # looking up the same key would warn.
    min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        compiled = lowered.compile()
    except Exception as e:  # XLA's errors are JaxRuntimeError; only out-of-memory is ours
        oom = parse_out_of_memory(str(e))
        if oom is None:
            raise
        report["compile_seconds"] = round(time.perf_counter() - start, 1)
        temporaries = oom.get("temporaries")
        report["per_device_bytes"] = {
            "arguments": arguments,
            "temporaries": temporaries,
            "outputs": None,
            "aliased": None,
            "code": None,
            # At least this much: outputs beyond the donated state are not known.
            "total": arguments + temporaries if temporaries else None,
        }
        if oom.get("usable"):
            report["hbm_usable_bytes"] = oom["usable"]
        report["fits"] = False
        report["compiler_message"] = str(e).strip().splitlines()[0][:500]
        report["flops_per_device"] = None
        report.update(_times(None, chip, total_steps))
        return report
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
    report["compile_seconds"] = round(time.perf_counter() - start, 1)
    memory = compiled.memory_analysis()
    sizes = {
        "arguments": int(memory.argument_size_in_bytes),
        "temporaries": int(memory.temp_size_in_bytes),
        "outputs": int(memory.output_size_in_bytes),
        # Donated arguments reused for outputs (the train state) are counted once.
        "aliased": int(memory.alias_size_in_bytes),
        "code": int(memory.generated_code_size_in_bytes),
    }
    sizes["total"] = (
        sizes["arguments"]
        + sizes["outputs"]
        - sizes["aliased"]
        + sizes["temporaries"]
        + sizes["code"]
    )
    report["per_device_bytes"] = sizes
    report["fits"] = sizes["total"] <= report["hbm_usable_bytes"]
    report["hbm_free_fraction"] = round(1 - sizes["total"] / report["hbm_usable_bytes"], 3)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) * loop_trips if cost else None
    report["flops_per_device"] = flops
    report.update(_times(flops, chip, total_steps))
    return report


def _times(flops: float | None, chip, total_steps: int | None) -> dict[str, Any]:
    """Step and run time if the chip ran the step's FLOPs at peak (a lower bound) and at
    ``MFU_ASSUMED`` of peak."""
    out: dict[str, Any] = {
        "peak_flops_per_device": chip.peak_bf16_flops,
        "total_steps": total_steps,
    }
    if not flops:
        out["step_seconds"] = out["run_hours"] = None
        return out
    at_peak = flops / chip.peak_bf16_flops
    out["step_seconds"] = {
        "at_peak": at_peak,
        f"at_{int(MFU_ASSUMED * 100)}pct": at_peak / MFU_ASSUMED,
    }
    if total_steps:
        out["run_hours"] = {
            key: seconds * total_steps / 3600 for key, seconds in out["step_seconds"].items()
        }
    return out


def fit_message(report: Mapping[str, Any]) -> str:
    """One line: how far over the chip's HBM the step is, and the levers that lower it, each
    with what it would act on (estimates from the report: temporaries scale with the
    micro-batch, sharded arguments with 1/fsdp)."""
    sizes = report["per_device_bytes"]
    need = sizes.get("total") or sizes.get("temporaries")
    have = report["hbm_usable_bytes"]
    amount = f"{need / GIB:.2f} GiB per chip" if need else "more HBM than a chip has"
    temporaries, arguments = sizes.get("temporaries") or 0, sizes.get("arguments") or 0
    levers = report.get("levers", {})
    accum = int(levers.get("grad_accum_steps", 1))
    rows = report.get("batch_size", 0) // max(report.get("num_devices", 1) * accum, 1)
    room = have - arguments
    suggest = accum
    while temporaries and suggest * 2 <= accum * rows and temporaries * accum / suggest > room:
        suggest *= 2
    parts = [
        "--config.remat=attention|layer (recompute the student's activations in the backward "
        f"pass; temporaries now {temporaries / GIB:.2f} GiB)",
        f"--config.mesh.fsdp={report.get('num_devices')} (shard parameters and optimizer state "
        f"over the chips; arguments now {arguments / GIB:.2f} GiB)",
        "--config.teacher.param_dtype=bfloat16 (halve the teacher's weights)",
        f"--config.grad_accum_steps={suggest if suggest > accum else 2 * accum} (smaller "
        "micro-batches; temporaries scale with them)",
        "--config.distill.implementation=blocked (relation KL in blocks)",
        "or a larger slice",
    ]
    return (
        f"does not fit: {amount} needed, {have / GIB:.2f} GiB usable on {report['topology']} "
        f"({report['device_kind']}); levers: " + ", ".join(parts)
    )


# ---------------------------------------------------------------------------------------------
# From an experiment config to the report.
# ---------------------------------------------------------------------------------------------


def fit_check(config, topology_name: str, num_slices: int = 1) -> dict[str, Any]:
    """The report for ``config``'s train step on ``num_slices`` x ``topology_name``.

    ``config`` is checked as the trainer checks it (``train.validate_config``), against the
    slice's chips instead of this host's devices; its data is not looked at."""
    from minilm_jax import parallel, tpu, train

    topology = tpu.parse_topology(topology_name)
    if num_slices < 1:
        raise ValueError(f"--num_slices={num_slices}: must be a positive integer")
    config = config.copy_and_resolve_references()
    if num_slices > 1 and config.mesh.slices == 1:
        config.mesh.slices = num_slices  # --num_slices says it; config.mesh need not
    devices = tpu.topology_devices(topology, num_slices)
    teacher_cfg = teacher_config(config)
    train.validate_config(config, num_devices=len(devices), teacher_cfg=teacher_cfg)
    mesh = parallel.mesh_from_config(config.mesh, devices)
    step_fn, args = build_train_step(config, teacher_cfg, mesh)
    report = compile_report(
        step_fn,
        args,
        topology=topology,
        num_slices=num_slices,
        mesh=mesh,
        total_steps=int(config.total_steps),
        loop_trips=int(config.grad_accum_steps),
    )
    report.update(
        batch_size=int(config.batch_size),
        max_len=int(config.max_len),
        dtype=config.dtype,
        levers={
            "remat": config.remat,
            "fsdp": parallel.axis_size(mesh, parallel.FSDP_AXIS),
            "teacher_param_dtype": config.teacher.param_dtype,
            "grad_accum_steps": int(config.grad_accum_steps),
            "distill_implementation": config.distill.implementation,
        },
        grad_accum_steps=int(config.grad_accum_steps),
        libtpu=tpu.check_libtpu(),
    )
    return report


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def keep_jax_on_cpu() -> None:
    """The host compiles, it never runs: JAX's own backend stays on the CPU (a TPU VM's chips
    may be busy training; libtpu's runtime is not started) while the compile-only devices
    still use libtpu; compile-only executables stay out of the persistent cache
    (``compile_report``). Call before JAX starts a backend."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_compilation_cache", False)


def _program(args, config) -> int:
    report = {"experiment": args.config, **fit_check(config, args.topology, args.num_slices)}
    print(json.dumps(report, indent=2), flush=True)
    if not report["fits"]:
        print(fit_message(report), file=sys.stderr, flush=True)
        return EXIT_DOES_NOT_FIT
    return 0


def main(argv=None) -> None:
    from minilm_jax import cli

    keep_jax_on_cpu()
    cli.run(
        _program,
        argv,
        prog="minilm_jax.compile",
        description="Will an experiment's train step fit a TPU slice? (compile only)",
        flags=[
            cli.flag(
                "--topology",
                required=True,
                help="TPU slice: v5e:4x4, v5e-16, v4-32, v5p:2x2x1, ... (libtpu's or Cloud's name)",
            ),
            cli.flag(
                "--num_slices",
                type=int,
                default=1,
                help="Slices joined by the data-centre network.",
            ),
        ],
    )


if __name__ == "__main__":
    main()
