"""XNLI: label order against the TFDS builders' own feature definitions, the per-language
expansion of TFDS's Translation / TranslationVariableLanguages features, and the friendly
errors of ``minilm_jax.tfds_source``."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from minilm_jax import glue, tfds_source, xnli


def test_label_order_equals_mnli_in_the_builders():
    """A classifier fine-tuned on glue/mnli predicts XNLI's classes only if both ClassLabels
    list the same names in the same order."""
    xnli_names = tfds.builder("xnli").info.features["label"].names
    mnli_names = tfds.builder("glue/mnli").info.features["label"].names
    assert xnli_names == mnli_names == list(xnli.LABELS)
    assert xnli.LABELS == ("entailment", "neutral", "contradiction")
    assert tuple(tfds.builder("xnli").info.features["premise"].languages) == xnli.LANGUAGES
    with pytest.raises(ValueError, match="wrong classes"):
        xnli.check_label_names(["neutral", "entailment", "contradiction"], "xnli")


def _row(i: int, languages=xnli.LANGUAGES, label: int = 0):
    """One example as tfds.data_source returns xnli: premise a dict (Translation), hypothesis
    parallel arrays (TranslationVariableLanguages, languages sorted, bytes as stored)."""
    hyp_langs = sorted(languages)
    return {
        "premise": {lang: f"premise {i} in {lang}" for lang in languages},
        "hypothesis": {
            "language": np.asarray([lang.encode() for lang in hyp_langs], object),
            "translation": np.asarray(
                [f"hypothesis {i} in {lang}".encode() for lang in hyp_langs], object
            ),
        },
        "label": np.int64(label),
    }


def test_examples_expand_per_language():
    source = [_row(i, label=i % 3) for i in range(4)]
    examples = xnli.examples_from_source(source, "xnli test", ("de", "zh"), limit=3)
    assert set(examples) == {"de", "zh"}
    assert examples["zh"].texts == (
        ("premise 0 in zh", "premise 1 in zh", "premise 2 in zh"),
        ("hypothesis 0 in zh", "hypothesis 1 in zh", "hypothesis 2 in zh"),
    )
    np.testing.assert_array_equal(examples["de"].labels, [0, 1, 2])
    joined = xnli.joined(examples)
    assert len(joined) == 6 and joined.texts[1][3] == "hypothesis 0 in zh"
    scores = xnli.accuracies({"de": np.array([0, 1, 0]), "zh": np.array([0, 1, 2])}, examples)
    assert scores == pytest.approx({"accuracy_de": 2 / 3, "accuracy_zh": 1.0, "accuracy": 5 / 6})


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"XNLI language\(s\) \['xx'\]; allowed"):
        xnli.examples_from_source([_row(0)], "xnli", ("en", "xx"))
    with pytest.raises(ValueError, match=r"example 0 has no 'fr' hypothesis"):
        xnli.examples_from_source(
            [{**_row(0), "hypothesis": _row(0, languages=("en",))["hypothesis"]}], "xnli", ("fr",)
        )
    with pytest.raises(ValueError, match=r"label\(s\) outside"):
        xnli.examples_from_source([_row(0, label=-1)], "xnli", ("en",))
    with pytest.raises(ValueError, match=r"XNLI split 'train'.*glue/mnli"):
        xnli.read_xnli("train")


def test_read_xnli_and_mnli_from_tfds_mock():
    rows = [_row(i, label=i % 3) for i in range(5)]

    def as_data_source(builder, split, **kwargs):
        assert builder.name == "xnli" and split == "validation"
        return rows

    with tfds.testing.mock_data(
        as_data_source_fn=as_data_source, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        examples = xnli.read_xnli("validation", limit=4)
    assert list(examples) == list(xnli.LANGUAGES) and all(len(e) == 4 for e in examples.values())
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        mnli = xnli.read_mnli_train()
    assert len(mnli) == 6 and isinstance(mnli, glue.Examples)


# ------------------------------------------------------------------ tfds_source errors


def test_not_prepared_names_dataset_split_dir_and_command(tmp_path):
    with pytest.raises(ValueError) as info:
        xnli.read_xnli("test", data_dir=str(tmp_path))
    message = str(info.value)
    assert message.startswith(
        f"cannot open TFDS dataset 'xnli' split 'test' (data_dir='{tmp_path}')"
    )
    assert f"it is not prepared in {tmp_path}" in message
    assert message.endswith(tfds_source.prepare_command("xnli", str(tmp_path)))
    assert tfds_source.prepare_command("mlqa/de") == (
        "python -c \"import tensorflow_datasets as tfds; tfds.builder('mlqa/de')"
        ".download_and_prepare(file_format='array_record')\""
    )


def test_reasons_for_prepared_datasets():
    """A prepared dataset without the split, or prepared as tfrecord, says so."""

    def fake_tfds(prepared=True, file_format=types.SimpleNamespace(value="array_record")):
        info = types.SimpleNamespace(file_format=file_format, splits={"train": 1, "test": 1})
        builder = types.SimpleNamespace(
            is_prepared=lambda: prepared, data_dir="/d/x/1.0.0", info=info
        )
        return types.SimpleNamespace(builder=lambda name, data_dir=None: builder)

    why = tfds_source._why_not_open
    error = ValueError("Unknown split 'validation'.\nmore lines")
    assert why(fake_tfds(), "x", "validation", None, error) == (
        "it has no split 'validation'; its splits: ['test', 'train']"
    )
    assert "as tfrecord, not array_record" in why(
        fake_tfds(file_format=types.SimpleNamespace(value="tfrecord")), "x", "train", None, error
    )
    assert (
        why(fake_tfds(prepared=False), "x", "train", None, error)
        == "it is not prepared in /d/x/1.0.0"
    )
    assert why(fake_tfds(), "x", "train[:10]", None, error) == "Unknown split 'validation'"


def test_missing_tensorflow_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(
        ImportError, match=r"'xnli' needs tensorflow-datasets: pip install 'minilm_jax\[tfds\]'"
    ):
        tfds_source.open_source("xnli", "test")


def test_reads_a_real_array_record_xnli_dataset(tmp_path):
    """The real TFDS xnli builder prepares array_record files from XNLI-1.0-style TSV files
    (download patched); read_xnli expands them per language, with the prepared labels checked."""
    from unittest import mock

    root = tmp_path / "src"
    (root / "XNLI-1.0").mkdir(parents=True)
    gold = ["entailment", "neutral", "contradiction"]
    for split, pairs in (("dev", 3), ("test", 2)):
        lines = ["language\tgold_label\tsentence1\tsentence2\tpairID"]
        for pair in range(pairs):
            for lang in xnli.LANGUAGES:
                lines.append(
                    f"{lang}\t{gold[pair % 3]}\tp{pair} {lang}\th{pair} {lang}\t{split}{pair}"
                )
        (root / "XNLI-1.0" / f"xnli.{split}.tsv").write_text(
            "\n".join(lines) + "\n", encoding="utf-8"
        )
    data_dir = str(tmp_path / "tfds")
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", lambda self, url: str(root)
    ):
        tfds.builder("xnli", data_dir=data_dir).download_and_prepare(file_format="array_record")
    examples = xnli.read_xnli("validation", data_dir, languages=("en", "zh"))
    rows = sorted(zip(*examples["zh"].texts, examples["zh"].labels.tolist()))
    assert rows == [(f"p{i} zh", f"h{i} zh", i % 3) for i in range(3)]
    assert len(xnli.read_xnli("test", data_dir)["sw"]) == 2
