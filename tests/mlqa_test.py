"""MLQA: its metric against an independent implementation of mlqa_evaluation_v1.py's semantics
(Unicode punctuation, per-language articles, mixed segmentation for Chinese), handmade
normalisations per language, and reading TFDS mock data."""

from __future__ import annotations

import re
import string

import numpy as np
import pytest
import regex

from minilm_jax import mlqa

# ------------------------------------------------------------------ reference semantics
# From the text of mlqa_evaluation_v1.py, written independently of minilm_jax.mlqa: Unicode
# punctuation via the `regex` module's \p{P}, the official article patterns verbatim, and the
# zh segmentation as one regex.

_PUNCT = regex.compile(r"[\p{P}" + regex.escape(string.punctuation) + "]")
_REF_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": "\\sال^|ال",
}


def ref_normalize(text: str, lang: str) -> str:
    text = _PUNCT.sub("", text.lower())
    if lang in _REF_ARTICLES:
        text = re.sub(_REF_ARTICLES[lang], " ", text)
    if lang == "zh":
        tokens = re.findall(r"[\u4e00-\u9fa5]|[^\s\u4e00-\u9fa5]+", text)
    else:
        tokens = text.split()
    return " ".join(tokens)


def ref_f1(prediction: str, gold: str, lang: str) -> float:
    p, g = ref_normalize(prediction, lang).split(), ref_normalize(gold, lang).split()
    common = sum(min(p.count(t), g.count(t)) for t in set(p))
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def ref_scores(golds, predictions, lang):
    exact = f1 = 0.0
    for qid, answers in golds.items():
        if qid in predictions:
            pred = predictions[qid]
            exact += max(ref_normalize(pred, lang) == ref_normalize(a, lang) for a in answers)
            f1 += max(ref_f1(pred, a, lang) for a in answers)
    return {"exact_match": 100 * exact / len(golds), "f1": 100 * f1 / len(golds)}


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    "lang, text, expected",
    [
        ("en", "«The» cat — a hat¿", "cat hat"),
        ("es", "El gato, la casa y unos perros.", "gato casa y perros"),
        ("de", "Der Hund und die Katze!", "hund und katze"),
        ("de", "Theater der Stadt", "theater stadt"),  # 'the' is no German article
        ("ar", "الكتاب الجديد", "كتاب جديد"),  # the definite article goes wherever it is
        ("vi", "của tôi là cái bàn", "tôi bàn"),
        ("hi", "भारत। की राजधानी", "भारत की राजधानी"),  # danda is punctuation; no articles
        ("zh", "2008年北京奥运会。", "2008 年 北 京 奥 运 会"),
        ("zh", "The iPhone手机", "the iphone 手 机"),  # no articles in zh, Latin runs stay words
        ("en", "", ""),
    ],
)
def test_normalize_answer_per_language(lang, text, expected):
    assert mlqa.normalize_answer(text, lang) == expected
    assert ref_normalize(text, lang) == expected


def test_zh_f1_counts_characters():
    # "北京大学" vs "北京": 2 common characters, precision 1/2, recall 1 -> F1 2/3.
    got = mlqa.mlqa_scores({"q": ["北京"]}, {"q": "北京大学"}, "zh")
    assert got == pytest.approx({"exact_match": 0.0, "f1": 100 * 2 / 3})
    # The same strings as English are one token each: no overlap.
    assert mlqa.mlqa_scores({"q": ["北京"]}, {"q": "北京大学"}, "en")["f1"] == 0.0


_VOCAB = {
    "en": ["The", "a", "cat", "Cat's", "“dogs”", "an", "2008", "—", "hat"],
    "es": ["El", "la", "gato", "¿Qué?", "los", "casa", "unas", "¡sí!"],
    "de": ["Der", "die", "Hund", "dem", "„Haus“", "eines", "und"],
    "ar": ["الكتاب", "ال", "جديد", "،", "قلم", "في"],
    "hi": ["भारत", "।", "की", "राजधानी", "दिल्ली"],
    "vi": ["của", "tôi", "là", "cái", "bàn", "những", "…"],
    "zh": ["北京", "大学", "2008年", "，", "奥运会", "iPhone", "的"],
}


@pytest.mark.parametrize("lang", mlqa.LANGUAGES)
def test_mlqa_scores_match_reference(lang):
    rng = np.random.default_rng(len(lang) + ord(lang[0]))

    def text():
        words = rng.choice(_VOCAB[lang], size=rng.integers(0, 4))
        return rng.choice(["", " ", "  "]).join(words)

    golds = {
        f"q{i}": [text() or _VOCAB[lang][2] for _ in range(rng.integers(1, 4))] for i in range(80)
    }
    predictions = {q: text() for q in list(golds)[:-5]}  # five unanswered: scored 0
    assert mlqa.mlqa_scores(golds, predictions, lang) == pytest.approx(
        ref_scores(golds, predictions, lang)
    )


def test_bad_language_and_split():
    with pytest.raises(ValueError, match=r"MLQA language 'fr'; allowed"):
        mlqa.normalize_answer("x", "fr")
    with pytest.raises(ValueError, match=r"MLQA split 'train'; allowed.*SQuAD 1.1"):
        mlqa.read_mlqa("en", "train")
    with pytest.raises(ValueError, match="gold answer"):
        mlqa.mlqa_scores({"q": []}, {"q": ""}, "en")


def test_read_mlqa_from_tfds_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        examples = mlqa.read_mlqa("zh", "test")
    assert len(examples) == 3 and all(isinstance(e.question, str) for e in examples)
    assert mlqa.dataset_name("de") == "mlqa/de"


def test_reads_a_real_array_record_mlqa_dataset(tmp_path):
    """The real TFDS mlqa/zh builder prepares array_record files from MLQA-layout JSON files
    (download patched); read_mlqa reads them back and the golds score 100 against themselves."""
    import json
    from unittest import mock

    import tensorflow_datasets as tfds

    context = "北京大学创建于1898年，初名京师大学堂。"
    data = {
        "version": "1.0",
        "data": [
            {
                "title": "北京大学",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": "zh1",
                                "question": "北京大学创建于哪一年？",
                                "answers": [
                                    {"text": "1898年", "answer_start": context.index("1898")}
                                ],
                            },
                            {
                                "id": "zh2",
                                "question": "北京大学最初叫什么？",
                                "answers": [
                                    {"text": "京师大学堂", "answer_start": context.index("京师")}
                                ],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    root = tmp_path / "src"
    for split, folder in (("test", "test"), ("dev", "dev")):
        (root / "MLQA_V1" / folder).mkdir(parents=True)
        name = f"{split}-context-zh-question-zh.json"
        (root / "MLQA_V1" / folder / name).write_text(
            json.dumps(data, ensure_ascii=False), encoding="utf-8"
        )
    data_dir = str(tmp_path / "tfds")
    with mock.patch.object(
        tfds.download.DownloadManager,
        "download_and_extract",
        lambda self, urls: {k: str(root) for k in urls},
    ):
        tfds.builder("mlqa/zh", data_dir=data_dir).download_and_prepare(file_format="array_record")
    examples = sorted(mlqa.read_mlqa("zh", "test", data_dir), key=lambda e: e.id)
    assert [(e.id, e.context, e.answers) for e in examples] == [
        ("zh1", context, ("1898年",)),
        ("zh2", context, ("京师大学堂",)),
    ]
    assert examples[0].answer_starts == (context.index("1898"),)
    golds = {e.id: list(e.answers) for e in examples}
    predictions = {"zh1": "1898", "zh2": "京师大学堂"}  # "1898" vs "1898 年": F1 2/3
    assert mlqa.mlqa_scores(golds, predictions, "zh") == pytest.approx(
        {"exact_match": 50.0, "f1": 100 * (2 / 3 + 1) / 2}
    )
