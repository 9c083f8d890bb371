"""XNLI (Conneau et al., 2018), zero-shot cross-lingual NLI: languages, labels, TFDS reading.

The paper's protocol: fine-tune on English MNLI (TFDS ``glue/mnli`` train, ``read_mnli_train``),
select the model on XNLI's validation set of all 15 languages joined (``joined``), report test
accuracy per language and the average. TFDS ``xnli`` has only "validation" and "test"; each
example is one sentence pair in all 15 languages: ``premise`` is a Translation feature (a dict
language -> text) and ``hypothesis`` a TranslationVariableLanguages feature ({"language": [...],
"translation": [...]}). ``read_xnli`` expands every example into one pair per language.

Labels: XNLI's ClassLabel names are glue/mnli's, in the same order (0 entailment, 1 neutral,
2 contradiction), so an MNLI classifier is scored on XNLI as is; ``check_label_names`` guards
that against the prepared data's own feature definition.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from minilm_jax import glue
from minilm_jax.data.sources import as_text
from minilm_jax.tfds_source import open_source

DATASET = "xnli"
LANGUAGES = (
    "ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh",
)  # fmt: skip
LABELS = ("entailment", "neutral", "contradiction")  # = glue/mnli's label order
SPLITS = ("validation", "test")


def check_languages(languages: Sequence[str]) -> tuple[str, ...]:
    languages = tuple(languages)
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown or not languages:
        raise ValueError(f"XNLI language(s) {unknown or '(none)'}; allowed: {list(LANGUAGES)}")
    return languages


def check_label_names(names: Sequence[str], what: str) -> None:
    """Raises unless ``names`` (a TFDS ClassLabel's names) are MNLI's labels in MNLI's order."""
    if tuple(names) != LABELS:
        raise ValueError(
            f"{what} labels are {list(names)}, not MNLI's {list(LABELS)} in that order: a "
            f"classifier fine-tuned on MNLI would be scored against the wrong classes"
        )


def read_xnli(
    split: str,
    data_dir: str | None = None,
    languages: Sequence[str] = LANGUAGES,
    limit: int = 0,
) -> dict[str, glue.Examples]:
    """language -> the (premise, hypothesis) pairs and labels of ``xnli`` split "validation"
    or "test" in that language (from the first ``limit`` TFDS examples when ``limit`` > 0);
    never downloads."""
    if split not in SPLITS:
        raise ValueError(
            f"XNLI split {split!r}; allowed: {list(SPLITS)} (train on glue/mnli, as the paper)"
        )
    source = open_source(DATASET, split, data_dir)
    info = getattr(source, "dataset_info", None)
    if info is not None:
        check_label_names(info.features["label"].names, f"{DATASET} ({split})")
    return examples_from_source(source, f"{DATASET} split {split!r}", languages, limit)


def examples_from_source(
    source: Sequence[Mapping[str, Any]], what: str, languages: Sequence[str], limit: int = 0
) -> dict[str, glue.Examples]:
    """Per-language examples from any random-access sequence of TFDS-style xnli dicts."""
    languages = check_languages(languages)
    n = len(source) if limit <= 0 else min(limit, len(source))
    if n == 0:
        raise ValueError(f"{what} has no examples")
    premises = {lang: [] for lang in languages}
    hypotheses = {lang: [] for lang in languages}
    labels = []
    for i in range(n):
        row = source[i]
        premise = {as_text(k): as_text(v) for k, v in row["premise"].items()}
        hypothesis = dict(
            zip(
                (as_text(x) for x in row["hypothesis"]["language"]),
                (as_text(x) for x in row["hypothesis"]["translation"]),
            )
        )
        for lang in languages:
            if lang not in premise or lang not in hypothesis:
                raise ValueError(
                    f"{what}: example {i} has no {lang!r} "
                    f"{'premise' if lang not in premise else 'hypothesis'} (premise languages "
                    f"{sorted(premise)}, hypothesis languages {sorted(hypothesis)})"
                )
            premises[lang].append(premise[lang])
            hypotheses[lang].append(hypothesis[lang])
        labels.append(int(np.asarray(row["label"])))
    label_array = np.asarray(labels, np.int64)
    bad = (label_array < 0) | (label_array >= len(LABELS))
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} label(s) outside 0..{len(LABELS) - 1}")
    return {
        lang: glue.Examples((tuple(premises[lang]), tuple(hypotheses[lang])), label_array)
        for lang in languages
    }


def joined(examples: Mapping[str, glue.Examples]) -> glue.Examples:
    """All languages' examples as one set (XNLI's joint validation set for model selection)."""
    if not examples:
        raise ValueError("no XNLI languages to join")
    parts = list(examples.values())
    return glue.Examples(
        tuple(tuple(t for part in parts for t in part.texts[k]) for k in range(2)),
        np.concatenate([part.labels for part in parts]),
    )


def read_mnli_train(data_dir: str | None = None, limit: int = 0) -> glue.Examples:
    """The English training set: TFDS ``glue/mnli`` split "train"."""
    task = glue.get_task("mnli")
    source = open_source(f"glue/{task.name}", task.train_split, data_dir)
    return glue.examples_from_source(task, source, task.train_split, limit)


def accuracies(
    predictions: Mapping[str, np.ndarray], examples: Mapping[str, glue.Examples]
) -> dict[str, float]:
    """Accuracy per language (``accuracy_<lang>``) and their mean (``accuracy``), the paper's
    XNLI columns; predictions are class ids per language."""
    out = {
        f"accuracy_{lang}": glue.accuracy(np.asarray(predictions[lang]), examples[lang].labels)
        for lang in examples
    }
    out["accuracy"] = float(np.mean(list(out.values())))
    return out
