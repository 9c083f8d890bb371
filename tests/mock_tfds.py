"""Runs a module's command line with TFDS reading mock data (test scaffolding).

    python tests/mock_tfds.py [--examples N] -m minilm_jax.finetune --config ...:smoke --workdir DIR

`tfds.testing.mock_data` (MockPolicy.USE_CODE) makes `tfds.data_source` return random
examples with each dataset's real features, without the data being prepared. The smoke
variants of the fine-tuning experiments run this way in the tests and in the README's smoke
commands; real runs read prepared datasets.

One dataset needs more than random features: XNLI's hypothesis is a
TranslationVariableLanguages feature, whose language codes USE_CODE draws as random strings;
`mock_data` gives every XNLI row the 15 real codes (each hypothesis a random text), as the
prepared dataset has them. Tests use `mock_data` in-process as well.
"""

import contextlib
import os
import runpy
import sys
from unittest import mock

import numpy as np

XNLI_LANGUAGES = (
    "ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh",
)  # fmt: skip


class _XnliRows:
    """A mock XNLI data source whose rows have a hypothesis in each of the 15 languages."""

    def __init__(self, source):
        self.source = source
        self.dataset_info = getattr(source, "dataset_info", None)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        row = dict(self.source[i])
        premise = row["premise"]
        # A hypothesis per language that differs from its premise: the premise reversed.
        texts = [str(np.asarray(premise[lang]).item())[::-1] for lang in XNLI_LANGUAGES]
        row["hypothesis"] = {
            "language": np.asarray(XNLI_LANGUAGES),
            "translation": np.asarray(texts),
        }
        return row


@contextlib.contextmanager
def mock_data(num_examples: int = 48):
    """`tfds.testing.mock_data(num_examples, policy=USE_CODE)`, with real-shaped XNLI rows."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import dataset_builder

    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE):
        random_source = dataset_builder.DatasetBuilder.as_data_source  # mock_data's own mock

        def as_data_source(builder, split=None, **kwargs):
            source = random_source(builder, split, **kwargs)
            return _XnliRows(source) if builder.name == "xnli" else source

        with mock.patch.object(dataset_builder.DatasetBuilder, "as_data_source", as_data_source):
            yield


def main(argv: list[str]) -> None:
    examples = 48
    if argv[:1] == ["--examples"]:
        examples, argv = int(argv[1]), argv[2:]
    if argv[:1] != ["-m"] or len(argv) < 2:
        raise SystemExit("usage: python tests/mock_tfds.py [--examples N] -m MODULE [ARGS...]")
    module, args = argv[1], argv[2:]
    # As `python -m MODULE` run from the repository root: this checkout's minilm_jax, not an
    # installed one (the script's own folder is what Python put first on the path).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    saved = sys.argv
    sys.argv = [module, *args]
    try:
        with mock_data(examples):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main(sys.argv[1:])
