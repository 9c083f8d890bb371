"""Test-wide setup, before jax is imported anywhere: 8 forced CPU devices, fast compiles.

Subprocesses started by tests (the CLI, multi-process runs) inherit ``TEST_XLA_FLAGS`` and
the compilation cache through the environment.
"""

import os
import tempfile

# The suite compiles hundreds of small programs and runs each a few times: LLVM's
# optimisation passes cost far more than they save (a train step compiles in ~4 s
# instead of ~15 s on a 2-core machine). Numbers are unaffected beyond float rounding.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS, "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Programs that several tests (and pytest-xdist workers, and CLI subprocesses) compile
# identically are compiled once.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "minilm_jax_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The cached tiny random models of the smoke runs (minilm_jax.tiny), shared by workers.
os.environ.setdefault(
    "MINILM_JAX_CACHE", os.path.join(tempfile.gettempdir(), "minilm_jax_test_cache")
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (after the environment on purpose)

jax.config.update("jax_default_matmul_precision", "highest")
