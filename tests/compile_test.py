"""The compile-only fit check against libtpu's TPU compiler (no TPU needed).

Skipped, with the reason, where libtpu cannot be imported (install the ``tpu`` extra).
"""

import importlib.metadata
import json
import os
import subprocess
import sys

import jax
import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]')")

from minilm_jax import compile as fitcheck  # noqa: E402
from minilm_jax import configs, tpu  # noqa: E402
from minilm_jax.bench.step import step_flops  # noqa: E402
from minilm_jax.train import make_student_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/bert_base_6x384.py:smoke"
FIELDS = (
    "topology",
    "num_devices",
    "device_kind",
    "mesh",
    "per_device_bytes",
    "hbm_bytes",
    "fits",
    "flops_per_device",
    "step_seconds",
    "run_hours",
    "total_steps",
)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "minilm_jax.compile", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_reports_every_field_and_the_remat_levers_lower_temporaries_on_v5e_2x2():
    # One test, so that parallel test workers do not compile the smoke step twice.
    # 8 sequences per chip: enough activations that the levers' savings show.
    result = run_cli("--config", SMOKE, "--topology", "v5e:2x2", "--config.batch_size=32")
    assert result.returncode == 0, result.stderr
    # libtpu's start-up warnings are silenced: nothing but the JSON.
    assert result.stderr.strip() == "", result.stderr
    r = json.loads(result.stdout)
    assert all(field in r for field in FIELDS), sorted(r)
    assert r["topology"] == "v5e:2x2" and r["accelerator_type"] == "v5litepod-4"
    assert r["num_devices"] == 4 and r["device_kind"] == "TPU v5 lite"
    assert r["mesh"] == {"slice": 1, "data": 4, "fsdp": 1}
    assert r["levers"] == {
        "remat": "none",
        "fsdp": 1,
        "teacher_param_dtype": "float32",
        "grad_accum_steps": 1,
        "distill_implementation": "auto",
    }
    sizes = r["per_device_bytes"]
    assert set(sizes) >= {"arguments", "temporaries", "outputs", "total"}
    assert sizes["total"] == (
        sizes["arguments"]
        + sizes["outputs"]
        - sizes["aliased"]
        + sizes["temporaries"]
        + sizes["code"]
    )
    assert r["hbm_bytes"] == 16 * 2**30 and r["fits"] is True
    # XLA counts at least the step's matmuls (written out in bench.step), spread over 4 chips.
    config = configs.load_experiment(os.path.join(REPO, SMOKE))
    config.batch_size = 32
    teacher = fitcheck.teacher_config(config)
    student = make_student_config(config, teacher)
    matmuls = step_flops(teacher, student, config.teacher.layer, 32, 32, 3) / 4
    assert matmuls <= r["flops_per_device"] <= 4 * matmuls, (matmuls, r["flops_per_device"])
    assert r["step_seconds"]["at_40pct"] == pytest.approx(r["step_seconds"]["at_peak"] / 0.4)
    assert r["run_hours"]["at_peak"] == pytest.approx(
        r["step_seconds"]["at_peak"] * r["total_steps"] / 3600
    )
    # The same step, the student's layers rematerialised (the CLI's own fit_check, in this
    # process): fewer temporaries, paid for with recomputed FLOPs; "layer" recomputes more.
    previous = r
    for policy in ("attention", "layer"):
        config.remat = policy
        with jax.default_matmul_precision("default"):  # as the CLI (conftest sets "highest")
            lever = fitcheck.fit_check(config, "v5e:2x2")
        assert lever["levers"]["remat"] == policy and lever["fits"] is True
        temporaries = lever["per_device_bytes"]["temporaries"]
        assert temporaries < sizes["temporaries"], (policy, temporaries, sizes["temporaries"])
        assert lever["flops_per_device"] > previous["flops_per_device"], policy
        previous = lever


def test_cli_exits_3_with_the_levers_when_the_batch_does_not_fit():
    result = run_cli(
        "--config",
        SMOKE,
        "--topology",
        "v5e:2x2",
        "--config.batch_size=65536",
        "--config.max_len=512",
    )
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["fits"] is False and report["per_device_bytes"]["arguments"] > 0
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("does not fit:") and "GiB usable on v5e:2x2" in line
    for lever in ("mesh.fsdp", "grad_accum_steps", "teacher.param_dtype", "distill.implementation"):
        assert lever in line


def test_cli_config_errors_exit_2_with_one_line():
    result = run_cli("--config", SMOKE, "--topology", "v5e:3x3")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --topology='v5e:3x3': unknown TPU slice; known:")
    assert "v5e:{1x1,2x2,2x4,4x4" in result.stderr and len(result.stderr.splitlines()) == 1


def test_topology_names_and_slices():
    assert tpu.parse_topology("v5e-16").name == "v5e:4x4"
    assert tpu.parse_topology("v5litepod-8").name == "v5e:2x4"
    assert tpu.parse_topology("v4-32").name == "v4:2x2x4"  # Cloud counts v4 TensorCores
    assert tpu.parse_topology("V6E:2x2").accelerator_type == "v6e-4"
    with pytest.raises(ValueError, match="unknown TPU slice; known: v4:"):
        tpu.parse_topology("v5e-12")
    devices = tpu.topology_devices(tpu.parse_topology("v4:2x2x1"))
    assert len(devices) == 4 and devices[0].device_kind == "TPU v4"  # megacore: 1 per chip
    devices = tpu.topology_devices(tpu.parse_topology("v5e:2x2"), num_slices=2)
    assert sorted({d.slice_index for d in devices}) == [0, 1]
    from minilm_jax import parallel

    mesh = parallel.mesh_from_config({"slices": 2, "fsdp": 2}, devices)
    assert dict(mesh.shape) == {"slice": 2, "data": 2, "fsdp": 2}
    for block, slice_index in zip(mesh.devices, (0, 1)):  # each slice one block of the outer axis
        assert {d.slice_index for d in block.flat} == {slice_index}


def test_libtpu_version_must_match_the_jax_pin(monkeypatch):
    assert tpu.libtpu_requirement().startswith("libtpu==")
    tpu.check_libtpu()
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "0.0.1" if name == "libtpu" else real_version(name),
    )
    with pytest.raises(
        ValueError, match=r"libtpu 0\.0\.1 does not match jax .* pip install 'libtpu=="
    ):
        tpu.check_libtpu()


def test_out_of_memory_messages_are_parsed():
    message = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (18.30G) exceeds available HBM (15.75G)."
    )
    assert fitcheck.parse_out_of_memory(message) == {
        "temporaries": int(18.30 * 2**30),
        "usable": int(15.75 * 2**30),
    }
    assert fitcheck.parse_out_of_memory("INVALID_ARGUMENT: something else") is None


def test_programs_print_nothing_from_libtpu_where_no_tpu_is_attached():
    if tpu.tpu_attached():
        pytest.skip("this host has a TPU: JAX uses it")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    # Importing minilm_jax picks the platform (tpu.configure_platforms) before JAX starts.
    program = (
        "import os, minilm_jax; print(os.environ['JAX_PLATFORMS']); import jax; "
        "print(jax.devices()[0].platform)"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.split() == ["cpu", "cpu"]
