"""minilm_jax: MiniLMv2 multi-head self-attention relation distillation in JAX/Flax NNX."""

__version__ = "0.1.0"
