"""XNLI and MLQA as fine-tuning tasks (minilm_jax.tasks.XnliTask, MlqaTask) end to end.

The smoke experiments run through the command line in this process on TFDS mock data
(tests/mock_tfds.py: real-shaped XNLI rows), and every recorded number is recomputed here from
what the run saved: XNLI accuracies with scikit-learn from predictions.npz against labels read
from TFDS here; MLQA EM/F1 per language with the independent implementation of
mlqa_evaluation_v1.py in mlqa_test.py (`ref_scores`) from the predictions_*.json files against
golds read from TFDS here.
"""

import json
import os

import numpy as np
import pytest
import sklearn.metrics

import mock_tfds
from minilm_jax import configs, finetune, mlqa, tasks, xnli
from mlqa_test import ref_scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XNLI = os.path.join(REPO, "experiments", "xnli.py")
MLQA = os.path.join(REPO, "experiments", "mlqa.py")
RUN = "lr0.001_ep1_seed0"


def run_cli(argv):
    """`python -m minilm_jax.finetune ARGV` in this process on TFDS mock data."""
    with mock_tfds.mock_data():
        with pytest.raises(SystemExit) as exit_info:
            finetune.main(argv)
    return exit_info.value.code


def only_record(workdir):
    with open(os.path.join(workdir, "results.jsonl")) as f:
        (line,) = f.readlines()
    return json.loads(line)["result"]


def mock_rows(name, split, n):
    import tensorflow_datasets as tfds

    with mock_tfds.mock_data():
        source = tfds.data_source(name, split=split)
        return [source[i] for i in range(n)]


def test_xnli_cli_on_mock_data_matches_sklearn(tmp_path):
    workdir = str(tmp_path)
    assert run_cli(["--config", f"{XNLI}:smoke", "--workdir", workdir]) == 0
    record = only_record(workdir)
    config = configs.load_experiment(f"{XNLI}:smoke")
    n = config.max_eval_examples
    saved = np.load(os.path.join(workdir, "runs", RUN, "predictions.npz"))
    metrics = record["metrics"]
    per_language = []
    for split, prefix in (("validation", "validation"), ("test", "test")):
        labels = np.asarray([int(r["label"]) for r in mock_rows("xnli", split, n)])
        for lang in xnli.LANGUAGES:
            if split == "test":
                logits = saved[f"test_{lang}/logits"]
                accuracy = sklearn.metrics.accuracy_score(labels, logits.argmax(-1))
                assert metrics[f"test_accuracy_{lang}"] == pytest.approx(accuracy, abs=1e-12)
                per_language.append(accuracy)
            else:  # the joint set: every language's pairs, in xnli.LANGUAGES order
                rows = saved["validation/languages"] == lang
                np.testing.assert_array_equal(saved["validation/labels"][rows], labels)
    joint = saved["validation/logits"].argmax(-1)
    assert metrics["dev_accuracy"] == pytest.approx(
        sklearn.metrics.accuracy_score(saved["validation/labels"], joint), abs=1e-12
    )
    assert len(joint) == 15 * n and record["validation_pairs"] == 15 * n
    assert metrics["test_accuracy"] == pytest.approx(np.mean(per_language), abs=1e-12)
    assert record["score"] == metrics["dev_accuracy"]
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["metric_names"][:2] == ["dev_accuracy", "test_accuracy"]


def test_mlqa_cli_on_mock_data_matches_the_official_metric(tmp_path):
    workdir = str(tmp_path)
    # An XLM-R student: the fairseq window layout and tokenizer end to end.
    spec = f"{MLQA}:smoke,family=xlm-roberta"
    assert run_cli(["--config", spec, "--workdir", workdir]) == 0
    record = only_record(workdir)
    n = configs.load_experiment(spec).max_eval_examples
    metrics = record["metrics"]

    def check(name, lang, split, prefix):
        golds = {
            str(r["id"]): [str(t) for t in r["answers"]["text"]]
            for r in mock_rows(f"mlqa/{lang}", split, n)
        }
        with open(os.path.join(workdir, "runs", RUN, f"predictions_{name}.json")) as f:
            predictions = json.load(f)
        assert set(predictions) == set(golds)
        want = ref_scores(golds, predictions, lang)
        for metric in ("exact_match", "f1"):
            key = f"test_{metric}_{lang}" if prefix.startswith("test") else f"dev_{metric}"
            assert metrics[key] == pytest.approx(want[metric] / 100, abs=1e-12), key
        return want

    check("validation_en", "en", "validation", "dev_")
    tests = [check(f"test_{lang}", lang, "test", f"test_{lang}_") for lang in mlqa.LANGUAGES]
    for metric in ("exact_match", "f1"):  # the means over the 7 languages
        want = np.mean([t[metric] for t in tests]) / 100
        assert metrics[f"test_{metric}"] == pytest.approx(want, abs=1e-12)
    assert record["score"] == metrics["dev_f1"]
    assert record["validation_en_examples"] == n and record["train_examples"] == 48


def test_unknown_languages_are_refused_before_anything_is_written(tmp_path, capsys):
    for experiment, language, dataset in ((XNLI, "xx", "XNLI"), (MLQA, "fr", "MLQA")):
        workdir = tmp_path / "run"
        argv = ["--config", f"{experiment}:smoke", "--workdir", str(workdir)]
        assert run_cli([*argv, f"--config.languages=('de', '{language}')"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"error: config.languages=('de', '{language}'): {dataset} has no language "
            f"'{language}'; allowed: "
        )
        assert_nothing_written(workdir)
    config = configs.load_experiment(f"{XNLI}:smoke")
    config.languages = ("de", "de")
    with pytest.raises(ValueError, match="name each language once"):
        finetune.validate_config(config)
    del config["languages"]
    with pytest.raises(ValueError, match=r"needs the config field\(s\) \['languages'\]"):
        finetune.validate_config(config)


def test_experiment_recipes():
    x = configs.load_experiment(XNLI)
    assert (x.task, x.max_len, x.batch_size, x.weight_decay) == ("xnli", 128, 128, 0.001)
    assert tuple(x.sweep.learning_rates) == (5e-5,) and tuple(x.sweep.epochs) == (5,)
    # The README's 500 warmup steps of ceil(392,702 / 128) * 5 = 15,340.
    assert round(x.warmup_fraction * 15_340) == 500
    assert tuple(x.languages) == xnli.LANGUAGES and len(x.languages) == 15
    m = configs.load_experiment(MLQA)
    assert (m.task, m.max_len, m.doc_stride, m.batch_size) == ("mlqa", 384, 128, 48)
    assert tuple(m.languages) == ("ar", "de", "en", "es", "hi", "vi", "zh")
    assert tasks.get_task(m.task).metric_names[:4] == (
        "dev_exact_match",
        "dev_f1",
        "test_exact_match",
        "test_f1",
    )


def assert_nothing_written(workdir):
    """Bad input writes nothing: no folder, or (when it failed after the folder was claimed,
    e.g. reading the data) only the claim's own files, which a corrected rerun takes over."""
    from minilm_jax import rundir

    if workdir.exists():
        claim_files = {rundir.MARKER_FILE, rundir.CONFIG_FILE, rundir.HISTORY_FILE}
        assert set(os.listdir(workdir)) <= claim_files, sorted(os.listdir(workdir))
