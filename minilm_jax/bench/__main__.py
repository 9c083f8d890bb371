"""`python -m minilm_jax.bench NAME [--flags]`: runs `minilm_jax.bench.NAME.main(flags)`."""

import importlib
import sys

from minilm_jax.bench import BENCHMARKS

USAGE = f"usage: python -m minilm_jax.bench NAME [--flags], NAME one of: {', '.join(BENCHMARKS)}"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 0 if argv else 2
    name, flags = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; {USAGE}", file=sys.stderr)
        return 2
    module_name = f"minilm_jax.bench.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:  # a missing dependency inside the benchmark: show it as is
            raise
        print(
            f"benchmark {name!r} is listed but {module_name} is not installed; {USAGE}",
            file=sys.stderr,
        )
        return 2
    return module.main(flags) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
