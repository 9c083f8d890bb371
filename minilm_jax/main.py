"""Command line: ``python -m minilm_jax.main --config experiments/NAME.py[:ARGS] --workdir DIR``.

Any config field can be overridden, e.g. ``--config.teacher.layer=10``. Library logs are
at WARNING by default; ``--verbosity=0`` shows INFO (Orbax, data loading, ...). A run resumes from
``DIR`` when a checkpoint is there, and writes the student to ``DIR/hf_student`` at the end.
"""

from __future__ import annotations

import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file (experiments/NAME.py[:ARGS]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, student).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax and Grain log every step of a save at INFO; the progress lines are ours.
        absl_logging.set_verbosity(absl_logging.WARNING)
    # Imported here so `--help` and flag errors do not wait for JAX.
    from minilm_jax import train

    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError, train.TrainingError) as e:
        # Configuration and data problems: one clear line, not a traceback.
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2 if not isinstance(e, train.TrainingError) else 3)


if __name__ == "__main__":
    app.run(main)
