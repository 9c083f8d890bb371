"""MLQA (Lewis et al., 2020), zero-shot cross-lingual extractive QA: languages, TFDS reading and
MLQA's own metric.

The paper's protocol: fine-tune on SQuAD 1.1 (English, ``minilm_jax.qa.read_squad("1.1",
"train")``), select the model on ``mlqa/en`` validation, report test EM/F1 per language and
their average. TFDS ``mlqa/<lang>`` holds the dev ("validation") and test splits of the
context-language = question-language pairs (MLQA's ``*-context-<lang>-question-<lang>.json``);
the cross-language pairs (G-XLT) are not in TFDS.

The metric is ``mlqa_evaluation_v1.py`` of facebookresearch/MLQA: as SQuAD 1.1's, except that
every Unicode punctuation character is removed, articles are removed per language and Chinese
is segmented into characters (``normalize_answer``).
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Mapping, Sequence

from minilm_jax import qa
from minilm_jax.tfds_source import open_source

LANGUAGES = ("ar", "de", "en", "es", "hi", "vi", "zh")
SPLITS = ("validation", "test")

# Articles (and, for Vietnamese, the function words the official script lists) removed as
# whole words; Hindi and Chinese have none. Arabic removes the definite article "ال" wherever
# it occurs (the official pattern r'\sال^|ال': its first alternative can never match).
_ARTICLES = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "ar": re.compile("ال"),
}
# Languages whose characters are each one token (the official range U+4E00..U+9FA5).
_CHARACTER_LANGUAGES = ("zh",)
_CJK = re.compile("[\u4e00-\u9fa5]")


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"MLQA language {language!r}; allowed: {list(LANGUAGES)}")
    return language


def dataset_name(language: str) -> str:
    """The TFDS name of one language's MLQA ("mlqa/de")."""
    return f"mlqa/{check_language(language)}"


def read_mlqa(
    language: str, split: str, data_dir: str | None = None, limit: int = 0
) -> list[qa.QAExample]:
    """The examples of ``mlqa/<language>`` split "validation" or "test" (the first ``limit``
    ones when ``limit`` > 0); never downloads. MLQA has no training split."""
    if split not in SPLITS:
        raise ValueError(
            f"MLQA split {split!r}; allowed: {list(SPLITS)} (train on SQuAD 1.1, as the paper)"
        )
    name = dataset_name(language)
    source = open_source(name, split, data_dir)
    return qa.examples_from_source(source, f"{name} split {split!r}", limit)


def is_punctuation(ch: str) -> bool:
    """MLQA's punctuation: every Unicode category P* character, and ASCII string.punctuation
    (which adds the symbols $ + < = > ^ ` | ~)."""
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def _tokens(text: str, language: str) -> list[str]:
    if language not in _CHARACTER_LANGUAGES:
        return text.split()
    # Mixed segmentation: each CJK (or punctuation) character alone, other runs split on
    # whitespace.
    tokens, run = [], []
    for ch in text:
        if _CJK.match(ch) or is_punctuation(ch):
            tokens.extend("".join(run).split())
            run = []
            tokens.append(ch)
        else:
            run.append(ch)
    tokens.extend("".join(run).split())
    return tokens


def normalize_answer(text: str, language: str) -> str:
    """Lowercase, remove punctuation, remove the language's articles, then tokens (characters
    for Chinese) joined by single spaces."""
    check_language(language)
    text = "".join(ch for ch in text.lower() if not is_punctuation(ch))
    if language in _ARTICLES:
        text = _ARTICLES[language].sub(" ", text)
    return " ".join(token for token in _tokens(text, language) if token.strip())


def mlqa_scores(
    golds: Mapping[str, Sequence[str]], predictions: Mapping[str, str], language: str
) -> dict:
    """MLQA's official ``exact_match`` and ``f1`` in percent for one answer language: each the
    maximum over a question's gold answers, F1 over the normalised tokens (0 when they share
    none). A question without a prediction scores 0 and still counts, as the official script
    ("Unanswered question ... will receive score 0")."""
    check_language(language)
    return qa.exact_match_f1(golds, predictions, lambda text: normalize_answer(text, language))
