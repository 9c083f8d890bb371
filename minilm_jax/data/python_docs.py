"""An offline English corpus every Python installation carries: Python's own documentation.

Two parts of the standard library hold real prose: `pydoc_data.topics` (the language
reference sections that `help("if")` prints) and the docstrings of the pure-Python standard
library modules. Docstrings are read from the module *sources* with `ast` (nothing is
imported, and it works under `python -OO`, which strips docstrings from imported modules).

Kept: paragraphs of prose (code, grammar rules, tables, lists and doctest blocks are
dropped), each on one line, deduplicated, in a fixed order: topics by name, then modules in
the order of `STDLIB_MODULES`, their docstrings in source order. The text differs a little
between Python versions; it is fixed for a given installation.

    python -m minilm_jax.data python-docs OUT_DIR   # writes the paragraph-format files
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import sys
import sysconfig
from typing import Iterator

from minilm_jax.cache import cache_dir

# Pure-Python modules present in every CPython build (no optional C extension, no GUI).
STDLIB_MODULES = (
    "abc argparse ast asyncio/base_events asyncio/events asyncio/futures asyncio/locks "
    "asyncio/queues asyncio/streams asyncio/tasks base64 bdb bisect calendar cmd code codecs "
    "collections concurrent/futures/_base configparser contextlib copy copyreg csv "
    "dataclasses datetime difflib dis doctest email/message email/parser email/utils enum "
    "filecmp fileinput fnmatch fractions ftplib functools getopt getpass gettext glob gzip "
    "hashlib heapq hmac html html/parser http/client http/cookiejar http/cookies http/server "
    "imaplib importlib importlib/abc inspect io ipaddress json json/decoder json/encoder "
    "keyword linecache locale logging logging/config logging/handlers mailbox mimetypes "
    "multiprocessing/connection multiprocessing/managers multiprocessing/pool "
    "multiprocessing/process multiprocessing/queues netrc numbers opcode operator optparse "
    "os pathlib pdb pickle pickletools pkgutil platform plistlib poplib posixpath pprint "
    "profile pstats py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter "
    "runpy sched secrets selectors shelve shlex shutil site smtplib socket socketserver "
    "statistics string stringprep struct subprocess symtable sysconfig tabnanny tarfile "
    "tempfile textwrap threading timeit token tokenize trace traceback tracemalloc types "
    "typing unittest/case unittest/loader unittest/mock unittest/result unittest/runner "
    "unittest/suite urllib/error urllib/parse urllib/request urllib/response uuid warnings "
    "wave weakref webbrowser wsgiref/handlers wsgiref/simple_server wsgiref/util "
    "xml/dom/minidom xml/dom/pulldom xml/etree/ElementTree xml/sax/handler xml/sax/saxutils "
    "xmlrpc/client xmlrpc/server zipapp zipfile _pydecimal _pyio _collections_abc _strptime"
).split()

# Bumped when the parsing below changes, so cached corpora of an older parser are not reused.
_FORMAT_VERSION = 1
_MIN_WORDS = 8
_MIN_LETTER_FRACTION = 0.75
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[-=+|~^#]{3,}|[*-] |\d+\. |::)")
_FOOTNOTE = re.compile(r"\s*\[\d+\]$")


def prose_paragraphs(text: str) -> Iterator[str]:
    """The prose paragraphs of a docstring or help text, each joined onto one line."""
    for block in re.split(r"\n[ \t]*\n", text.expandtabs()):
        lines = [line for line in block.split("\n") if line.strip()]
        # Indented blocks are code examples, grammar or the bodies of definition lists.
        if not lines or any(line[:1].isspace() for line in lines):
            continue
        if any(_CODE_LINE.match(line) for line in lines) or "::=" in block:
            continue
        # Single spaces only: the paragraph survives a round trip through a text file.
        paragraph = _FOOTNOTE.sub("", " ".join(" ".join(lines).split()))
        letters = sum(c.isalpha() or c == " " for c in paragraph)
        if (
            len(paragraph.split()) >= _MIN_WORDS
            and letters >= _MIN_LETTER_FRACTION * len(paragraph)
            and paragraph[0] in '"*' + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            and paragraph[-1] in '.?!:)"'
        ):
            yield paragraph


def _module_source(name: str) -> str | None:
    stdlib = sysconfig.get_paths()["stdlib"]
    for path in (os.path.join(stdlib, name + ".py"), os.path.join(stdlib, name, "__init__.py")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    return None  # an installation without sources (e.g. an embedded zip of .pyc files)


def _docstrings(source: str) -> Iterator[str]:
    tree = ast.parse(source)
    nodes = [tree] + [
        node
        for node in ast.walk(tree)
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and not node.name.startswith("_")  # private helpers document implementation details
    ]
    for node in nodes:
        docstring = ast.get_docstring(node, clean=True)
        if docstring:
            yield docstring


def python_docs_documents() -> list[str]:
    """The corpus as a list of one-line English paragraphs (deterministic per installation)."""
    return list(_documents())


@functools.cache  # the list is the same for the whole process
def _documents() -> tuple[str, ...]:
    """Parsed once per installation (several seconds) and kept in the project's cache
    directory, keyed by the interpreter and the parser's version."""
    key = hashlib.sha256(
        f"{_FORMAT_VERSION}|{sys.version}|{sysconfig.get_paths()['stdlib']}".encode()
    ).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"python_docs-{key}.json")
    try:
        with open(path, encoding="utf-8") as f:
            return tuple(json.load(f))
    except (OSError, ValueError):
        pass
    documents = _parse_documents()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(documents, f)
        os.replace(tmp, path)  # whole or not at all, for concurrent processes
    except OSError:  # a read-only home: parse again next time
        pass
    return documents


def _parse_documents() -> tuple[str, ...]:
    texts: list[str] = []
    try:
        from pydoc_data import topics  # pylint: disable=import-outside-toplevel

        texts.extend(topics.topics[name] for name in sorted(topics.topics))
    except ImportError:  # some distributions package pydoc_data separately
        pass
    for name in STDLIB_MODULES:
        source = _module_source(name)
        if source is not None:
            texts.extend(_docstrings(source))
    documents = list(dict.fromkeys(p for text in texts for p in prose_paragraphs(text)))
    if not documents:
        raise RuntimeError(
            f"no Python documentation found under {sysconfig.get_paths()['stdlib']!r}: this "
            "installation ships neither pydoc_data nor standard-library sources"
        )
    return tuple(documents)


def python_docs_corpus(out_dir: str, *, documents_per_file: int = 1000) -> list[str]:
    """Writes the corpus as "paragraph"-format text files; returns their paths.

    Reading the files back with `TextFileDocuments(paths, "paragraph")` gives exactly
    `python_docs_documents()`. Files are written whole and renamed into place, so a reader
    never sees half a file.
    """
    documents = python_docs_documents()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for n, start in enumerate(range(0, len(documents), documents_per_file)):
        path = os.path.join(out_dir, f"python_docs-{n:03d}.txt")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n\n".join(documents[start : start + documents_per_file]) + "\n")
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths
