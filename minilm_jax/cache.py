"""Where minilm_jax keeps files it derives and reuses across processes: the tiny random models
of the smoke runs and the parsed offline Python-docs corpus. `$MINILM_JAX_CACHE`, default
`~/.cache/minilm_jax`; everything in it can be deleted and is rebuilt on demand."""

from __future__ import annotations

import os


def cache_dir() -> str:
    return os.environ.get("MINILM_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "minilm_jax"
    )
