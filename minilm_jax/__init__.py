"""minilm_jax: MiniLMv2 multi-head self-attention relation distillation in JAX/Flax NNX."""

__version__ = "0.1.0"

# Where libtpu is installed (the `tpu` extra: the compile-only fit check) on a host without a
# TPU, JAX's default platform search would make libtpu print start-up warnings in every
# program: pick the platform explicitly there, before JAX starts a backend (minilm_jax.tpu).
from minilm_jax import tpu as _tpu  # noqa: E402

_tpu.configure_platforms()
