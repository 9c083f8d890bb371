"""`python -m minilm_jax.data python-docs OUT_DIR`: write the offline Python-docs corpus."""

import sys

from minilm_jax.data import python_docs


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[1] != "python-docs":
        raise SystemExit("usage: python -m minilm_jax.data python-docs OUT_DIR")
    paths = python_docs.python_docs_corpus(argv[2])
    documents = python_docs.python_docs_documents()
    print(
        f"{len(documents)} paragraphs, {sum(map(len, documents))} characters, "
        f"{len(paths)} files: {', '.join(paths)}"
    )


if __name__ == "__main__":
    main(sys.argv)
