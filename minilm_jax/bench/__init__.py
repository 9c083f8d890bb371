"""Benchmarks that print one JSON object per measured case: `python -m minilm_jax.bench NAME`.

Each benchmark is a module `minilm_jax.bench.NAME` exposing `main(argv)`, where `argv` is the
list of flags after NAME.
"""

BENCHMARKS = ("relations", "step", "teacher_dtype")
