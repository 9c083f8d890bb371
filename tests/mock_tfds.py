"""Runs a module's command line with TFDS reading mock data (test scaffolding).

    python tests/mock_tfds.py [--examples N] -m minilm_jax.finetune --config ...:smoke --workdir DIR

`tfds.testing.mock_data` (MockPolicy.USE_CODE) makes `tfds.data_source` return random
examples with each dataset's real features, without the data being prepared. The smoke
variants of the fine-tuning experiments run this way in the tests and in the README's smoke
commands; real runs read prepared datasets.
"""

import runpy
import sys


def main(argv: list[str]) -> None:
    examples = 48
    if argv[:1] == ["--examples"]:
        examples, argv = int(argv[1]), argv[2:]
    if argv[:1] != ["-m"] or len(argv) < 2:
        raise SystemExit("usage: python tests/mock_tfds.py [--examples N] -m MODULE [ARGS...]")
    module, args = argv[1], argv[2:]
    import tensorflow_datasets as tfds

    sys.argv = [module, *args]
    with tfds.testing.mock_data(num_examples=examples, policy=tfds.testing.MockPolicy.USE_CODE):
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
