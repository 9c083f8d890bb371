"""The reference pages stay true: every config field is documented in docs/training.md, and
every page the README links exists."""

import os
import re

import ml_collections

from minilm_jax import configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fields(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _fields(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _documented(text: str) -> set[str]:
    """Names in the first column of the markdown tables (`a`, `b` / `c`; `x.*` covers x)."""
    names = set()
    section = ""
    for line in text.splitlines():
        if line.startswith("`config.data`"):
            section = "data."
        elif line.startswith("Fine-tuning ("):
            section = ""
        if line.startswith("| `"):
            first = line.split("|")[1]
            names |= {section + n for n in re.findall(r"`([^`]+)`", first)}
    return names


def test_every_config_field_is_in_the_training_reference():
    text = open(os.path.join(REPO, "docs", "training.md"), encoding="utf-8").read()
    documented = _documented(text)
    wildcards = {n[:-1] for n in documented if n.endswith(".*")}
    for config in (configs.base_config(), configs.finetune_base_config()):
        missing = [
            f
            for f in _fields(config)
            if f not in documented and not any(f.startswith(w) for w in wildcards)
        ]
        assert not missing, f"docs/training.md lacks {missing}"


def test_the_readme_links_resolve():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    links = re.findall(r"\]\(((?:docs|notebooks|experiments)/[^)#]+)", text)
    assert links
    for link in links:
        assert os.path.exists(os.path.join(REPO, link)), link
