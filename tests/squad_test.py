"""SQuAD 2.0 / 1.1 as fine-tuning tasks (minilm_jax.tasks.SquadTask) end to end.

References: the official evaluate-v2.0.py semantics as written independently in qa_test.py
(`ref_v2_scores`, `ref_best_thresholds`), recomputed here from the JSON files each run leaves
(predictions.json, null_odds.json, best_spans.json) against golds this test wrote or read from
TFDS itself; the `tokenizers` library's own encodings for the training labels; the span model
called per window, unpadded, for the bucketed prediction path. The command line runs in this
process (`finetune.main`), on a SQuAD-format split written here and on TFDS mock data
(tests/mock_tfds.py), with the smoke experiment's tiny student, so the runs share compiled
programs.
"""

import contextlib
import json
import os
import shutil

import numpy as np
import pytest

import mock_tfds
from minilm_jax import configs, finetune, qa, tasks
from qa_test import ref_best_thresholds, ref_f1, ref_normalize, ref_v2_scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQUAD = os.path.join(REPO, "experiments", "squad.py")

# Contexts long enough for several smoke windows (32 tokens, questions cut at 12, stride 8;
# the smoke tokenizer splits most words into characters).
RIVER = (
    "The Tiber river flows south through Rome and reaches the sea at Ostia after a long "
    "journey across the hills of central Italy."
)
BRIDGE = "The old stone bridge was finished in 1473 by the builders of Pope Sixtus IV."
LONG_ANSWER = "flows south through Rome and reaches the sea at Ostia after a long journey"

TRAIN = [
    # (id, question, context, answer or None, answer_start override)
    ("t-ostia", "Where is the sea?", RIVER, "Ostia", None),
    ("t-rome", "Which city?", RIVER, "Rome", None),
    ("t-none", "Who swam?", RIVER, None, None),
    ("t-long", "What does it do?", RIVER, LONG_ANSWER, None),  # longer than any window
    (
        "t-longq",  # a question longer than max_question_len: cut, counted
        "In the long and winding story of the famous old river, which country is it in?",
        RIVER,
        "Italy",
        None,
    ),
    ("t-shift", "What hills?", RIVER, "hills", 3),  # answer_start points elsewhere: counted
    ("t-year", "When was it done?", BRIDGE, "1473", None),
    ("t-none2", "Who paid?", BRIDGE, None, None),
]
DEV = [
    # (id, question, context, gold answers; [] = unanswerable)
    ("d-year", "When was the bridge finished?", BRIDGE, ["1473", "in 1473"]),
    ("d-who", "Who built it?", BRIDGE, ["the builders of Pope Sixtus IV", "builders"]),
    ("d-what", "What was finished?", BRIDGE, ["The old stone bridge"]),
    ("d-none", "Who crossed it first?", BRIDGE, []),
    ("d-sea", "Where does the river reach the sea?", RIVER, ["at Ostia", "Ostia"]),
    ("d-none2", "How deep is the river?", RIVER, []),
    ("d-region", "Which part of Italy?", RIVER, ["central Italy", "central"]),
    # One short window each; a gold as long as the context gives a random span partial F1.
    ("d-city", "Which city?", "Rome is in Italy.", ["Rome", "Rome is in Italy"]),
    ("d-old", "Is it new?", "The city is old.", []),
    ("d-land", "Where?", "Paris is in France.", ["France", "Paris is in France"]),
]


def squad_json(rows, dev: bool) -> dict:
    paragraphs = {}
    for row in rows:
        if dev:
            qid, question, context, answers = row
            answer_items = [{"text": a, "answer_start": context.index(a)} for a in answers]
        else:
            qid, question, context, answer, start = row
            answers = [answer] if answer else []
            answer_items = [
                {"text": answer, "answer_start": context.index(answer) if start is None else start}
                for answer in answers
            ]
        qa_item = {
            "id": qid,
            "question": question,
            "answers": answer_items,
            "is_impossible": not answers,
        }
        paragraphs.setdefault(context, []).append(qa_item)
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "handmade",
                "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()],
            }
        ],
    }


@pytest.fixture(scope="module")
def squad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("squad_json")
    paths = {}
    for name, rows, dev in (("train", TRAIN, False), ("dev", DEV, True)):
        paths[name] = str(folder / f"{name}-v2.0.json")
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump(squad_json(rows, dev), f)
    return paths


def smoke_config(arg="smoke"):
    return configs.load_experiment(f"{SQUAD}:{arg}")


def run_cli(argv, *, mock: bool):
    """`python -m minilm_jax.finetune ARGV` in this process (on TFDS mock data when `mock`);
    returns the exit code."""
    with mock_tfds.mock_data() if mock else contextlib.nullcontext():
        with pytest.raises(SystemExit) as exit_info:
            finetune.main(argv)
    return exit_info.value.code


def read_results(workdir):
    with open(os.path.join(workdir, "results.jsonl")) as f:
        return [json.loads(line)["result"] for line in f]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------ batches and labels


@pytest.fixture(scope="module")
def handmade(squad_files):
    config = smoke_config()
    config.train_file, config.eval_file = squad_files["train"], squad_files["dev"]
    student = finetune.load_student(config.student_path, with_pooler=False)
    task = tasks.get_task("squad2")
    return config, student, task, task.prepare(config, student)


def test_training_batches_label_the_answer_tokens(handmade):
    """Every training window's labels, as the batch carries them, against the `tokenizers`
    library's own encoding of the context: a window whose context holds the whole answer
    labels its first and last token; every other window, and every unanswerable question,
    labels token 0."""
    config, student, _, data = handmade
    windows = data.train
    tok = student.tokenizer
    batch = windows.batch(np.arange(len(windows)), config.max_len, student.config.pad_token_id)
    assert batch["input_ids"].shape == (len(windows), config.max_len)
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), windows.lengths)
    labelled = {}
    for w, i in enumerate(windows.example_index):
        qid, _, context, answer, start = TRAIN[i]
        start_char = None if answer is None else (context.index(answer) if start is None else start)
        s, e = batch["start_positions"][w], batch["end_positions"][w]
        if answer is None:
            assert s == e == 0
            continue
        enc = tok.encode(context, add_special_tokens=False)
        end_char = start_char + len(answer)
        inside = [k for k, (a, b) in enumerate(enc.offsets) if a < end_char and b > start_char]
        want = enc.ids[inside[0] : inside[-1] + 1]
        if s == 0:
            assert e == 0
            continue
        labelled.setdefault(qid, []).append(w)
        np.testing.assert_array_equal(batch["input_ids"][w, s : e + 1], want)
        assert batch["token_type_ids"][w, s] == 1 and batch["weight"][w] == 1
    # Each short answer is labelled in some window: with 17 context tokens per window and a
    # stride of 8, consecutive windows share 9 tokens, more than any short answer has.
    for qid, _, context, answer, _ in TRAIN:
        if answer and answer != LONG_ANSWER:
            assert len(tok.encode(answer, add_special_tokens=False).ids) <= 9
            assert qid in labelled, qid
    assert "t-long" not in labelled
    questions = [row[1] for row in TRAIN]
    too_long = sum(
        len(tok.encode(q, add_special_tokens=False).ids) > config.max_question_len
        for q in questions
    )
    assert too_long >= 1
    assert data.info["train_questions_truncated"] == too_long
    assert data.info["train_answer_in_no_window"] == 1  # t-long only
    assert data.info["train_answer_text_mismatch"] == 1  # t-shift
    assert data.info["train_unanswerable"] == 2
    assert data.info["validation_examples"] == len(DEV)


def test_bucketed_prediction_lays_out_per_token_outputs(handmade):
    """Span logits ([B, T] outputs) of a first batch padded to a short length bucket and of
    later batches padded to max_len land in one [N, max_len] array: each row's first `length`
    logits are those of the same window predicted without buckets (padded to max_len), and the
    short batch's rows hold zeros past their bucket. (The logits themselves are checked
    against transformers in heads_test.py.)"""
    config, student, task, data = handmade
    short = [qa.QAExample(f"s{i}", "Who?", f"Rome {i}.") for i in range(16)]
    windows = task.encoder(config, student).windows([*short, *data.evals["validation"].labels])
    first = np.argsort(windows.lengths, kind="stable")[:16]  # the first batch: the short ones
    bucket = int(windows.lengths[first].max())
    assert bucket < config.max_len and (windows.lengths == config.max_len).any()
    plain = finetune.Finetuner(smoke_config(), task, student, data)  # one length: max_len
    bucketed_config = smoke_config()
    bucketed_config.length_buckets = (bucket,)
    bucketed = finetune.Finetuner(bucketed_config, task, student, data)
    params = plain.init_state(seed=1).params
    got, want = bucketed.predict(params, windows), plain.predict(params, windows)
    assert bucketed.predict_fn._cache_size() == 2  # one program per bucket
    for name in ("start_logits", "end_logits"):
        assert got[name].shape == want[name].shape == (len(windows), config.max_len)
        for w, n in enumerate(windows.lengths):
            np.testing.assert_allclose(got[name][w, :n], want[name][w, :n], atol=1e-5, rtol=1e-5)
        assert not got[name][first, bucket:].any()


def test_squad1_evaluation_from_gold_pointing_logits(handmade):
    """squad1's evaluate: logits that point at the labelled answer tokens decode to the gold
    text (EM 1), the others to some span; EM/F1 as the official v1.1 semantics (qa_test's
    independent `ref_normalize`/`ref_f1`) compute them from the predictions.json it returns."""
    _, student, _, _ = handmade
    task = tasks.get_task("squad1")
    config = smoke_config("smoke,version=1")
    config.max_answer_len = 30  # the longest gold here has 20 tokens
    examples = [
        qa.QAExample(qid, q, c, tuple(golds), tuple(c.index(g) for g in golds))
        for qid, q, c, golds in DEV
        if golds
    ]
    windows = task.encoder(config, student).windows(examples)
    rng = np.random.default_rng(0)
    start, end = rng.normal(size=(2, len(windows), config.max_len)).astype(np.float32)
    pointed = set()
    for w in np.flatnonzero(windows.start_positions > 0):
        if windows.example_index[w] % 2 == 0:  # every other question gets the gold span
            start[w, windows.start_positions[w]] = end[w, windows.end_positions[w]] = 50.0
            pointed.add(examples[windows.example_index[w]].id)
    data = tasks.TaskData(windows, {"validation": tasks.EvalSet(windows, labels=examples)})
    evaluation = task.evaluate(
        data, {"validation": {"start_logits": start, "end_logits": end}}, config
    )
    predictions = evaluation.files["predictions.json"]
    golds = {e.id: e.answers for e in examples}
    assert pointed and all(predictions[qid] == golds[qid][0] for qid in pointed)
    exact = np.mean(
        [max(ref_normalize(predictions[q]) == ref_normalize(a) for a in golds[q]) for q in golds]
    )
    f1 = np.mean([max(ref_f1(predictions[q], a, v2=False) for a in golds[q]) for q in golds])
    assert evaluation.metrics == pytest.approx({"exact_match": exact, "f1": f1}, abs=1e-12)
    assert 0 < exact < 1 and task.score(evaluation.metrics) == evaluation.metrics["f1"]


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def json_run(squad_files, tmp_path_factory):
    """The smoke experiment through the CLI on the handmade SQuAD-format files. A high null
    threshold makes the (untrained) model answer, so EM/F1 are not trivially the NoAns share."""
    workdir = str(tmp_path_factory.mktemp("squad_json_run"))
    argv = [
        "--config",
        f"{SQUAD}:smoke",
        "--workdir",
        workdir,
        f"--config.train_file={squad_files['train']}",
        f"--config.eval_file={squad_files['dev']}",
        "--config.null_threshold=1.0",
    ]
    assert run_cli(argv, mock=False) == 0
    return workdir, argv


def test_json_split_metrics_equal_the_official_semantics(json_run):
    workdir, _ = json_run
    (record,) = read_results(workdir)
    run_dir = os.path.join(workdir, "runs", "lr0.001_ep1_seed0")
    predictions = read_json(os.path.join(run_dir, "predictions.json"))
    null_odds = read_json(os.path.join(run_dir, "null_odds.json"))
    best_spans = read_json(os.path.join(run_dir, "best_spans.json"))
    golds = {qid: answers for qid, _, _, answers in DEV}
    assert set(predictions) == set(null_odds) == set(best_spans) == set(golds)
    contexts = {qid: context for qid, _, context, _ in DEV}
    for qid in golds:  # predictions.json is best_spans.json cut at the run's threshold
        assert predictions[qid] == ("" if null_odds[qid] > 1.0 else best_spans[qid])
        assert best_spans[qid] in contexts[qid]  # a span of the context (or "")
    want = ref_v2_scores(golds, predictions)
    want.update(ref_best_thresholds(golds, best_spans, null_odds))
    got = record["metrics"]
    for key in (
        "exact",
        "f1",
        "HasAns_exact",
        "HasAns_f1",
        "NoAns_exact",
        "NoAns_f1",
        "best_exact",
        "best_f1",
    ):
        assert got[key] == pytest.approx(want[key] / 100, abs=1e-12), key
    assert got["best_f1_thresh"] == pytest.approx(want["best_f1_thresh"], abs=1e-12)
    assert got["best_exact_thresh"] == pytest.approx(want["best_exact_thresh"], abs=1e-12)
    assert record["score"] == got["f1"]
    assert (record["train_examples"], record["train_answer_in_no_window"]) == (len(TRAIN), 1)
    summary = read_json(os.path.join(workdir, "summary.json"))
    assert summary["best_run"]["score"] == pytest.approx(got["f1"])
    assert not os.path.exists(os.path.join(run_dir, "predictions.npz"))  # QA saves JSON only


def test_rerun_skips_and_a_changed_window_setting_is_refused(json_run, capsys):
    _, argv = json_run
    assert run_cli(argv, mock=False) == 0
    assert "finished already, skipped" in capsys.readouterr().out
    assert run_cli([*argv, "--config.doc_stride=4"], mock=False) == 2
    assert "doc_stride: 8 -> 4" in capsys.readouterr().err


def test_squad2_cli_on_tfds_mock_data(tmp_path):
    """The smoke command on mock squad/v2.0 (the README's smoke command): the golds, read
    here from TFDS, score the run's predictions.json as recorded."""
    import tensorflow_datasets as tfds

    workdir = str(tmp_path)
    assert run_cli(["--config", f"{SQUAD}:smoke", "--workdir", workdir], mock=True) == 0
    (record,) = read_results(workdir)
    config = smoke_config()
    with mock_tfds.mock_data():
        source = tfds.data_source("squad/v2.0", split="validation")
        rows = [source[i] for i in range(config.max_eval_examples)]
    golds = {
        str(r["id"]): [] if r["is_impossible"] else [str(t) for t in r["answers"]["text"]]
        for r in rows
    }
    predictions = read_json(os.path.join(workdir, "runs", "lr0.001_ep1_seed0", "predictions.json"))
    assert set(predictions) == set(golds)
    want = ref_v2_scores(golds, predictions)
    for key in ("exact", "f1", "HasAns_f1", "NoAns_f1"):
        assert record["metrics"][key] == pytest.approx(want[key] / 100, abs=1e-12), key
    for key in ("train_windows", "train_answer_in_no_window", "train_questions_truncated"):
        assert key in record
    summary = read_json(os.path.join(workdir, "summary.json"))
    assert summary["task"] == "squad2"
    assert summary["metric_names"] == list(tasks.get_task("squad2").metric_names)


# ------------------------------------------------------------------ bad input


def test_task_names():
    assert tasks.get_task("squad_v2") is tasks.get_task("SQuAD-2.0") is tasks.TASKS["squad2"]
    assert tasks.get_task("squad1.1").name == "squad1"
    assert {"squad2", "squad1", "xnli", "mlqa"} <= set(tasks.TASK_NAMES)
    assert smoke_config("version=1").task == "squad1"
    assert tuple(smoke_config("").sweep.learning_rates) == (3e-5, 4e-5, 6e-5)
    c = smoke_config("size=base")
    assert (c.max_len, c.doc_stride, c.max_question_len, c.batch_size) == (384, 128, 64, 48)
    assert (c.warmup_fraction, c.weight_decay, c.adam_eps) == (0.0, 0.0, 1e-8)
    assert tuple(c.sweep.epochs) == (4,) and 4e-5 in c.sweep.learning_rates


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.task=squad3"], "config.task='squad3' is not a known task; allowed: "),
        (["--config.max_question_len=29"], "config.max_len=32 leaves no room for a context token"),
        (["--config.doc_stride=0"], "config.doc_stride=0: must be a positive integer"),
        (["--config.train_file=/nowhere/train.json"], "config.train_file='/nowhere/train.json'"),
    ],
)
def test_bad_settings_fail_in_one_line_and_write_nothing(tmp_path, capsys, overrides, message):
    workdir = tmp_path / "run"
    argv = ["--config", f"{SQUAD}:smoke", "--workdir", str(workdir), *overrides]
    assert run_cli(argv, mock=False) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert_nothing_written(workdir)


def test_unprepared_dataset_names_the_prepare_command(tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["--config", f"{SQUAD}:smoke", "--workdir", str(workdir)]
    assert run_cli([*argv, f"--config.data_dir={tmp_path}"], mock=False) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot open TFDS dataset 'squad/v2.0' split 'train'")
    assert "it is not prepared in" in err
    assert err.endswith(
        'Prepare it once with: python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('squad/v2.0', data_dir='{tmp_path}')"
        ".download_and_prepare(file_format='array_record')\""
    )
    assert_nothing_written(workdir)


def test_student_without_tokenizer_and_squad1_with_unanswerable_questions(
    tmp_path, capsys, squad_files
):
    student = smoke_config().student_path
    bare = tmp_path / "bare_student"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(student, name), bare / name)
    workdir = tmp_path / "run"
    argv = ["--config", f"{SQUAD}:smoke", "--workdir", str(workdir)]
    assert run_cli([*argv, f"--config.student_path={bare}"], mock=False) == 2
    assert "has no tokenizer" in capsys.readouterr().err
    v1 = [
        "--config",
        f"{SQUAD}:smoke,version=1",
        "--workdir",
        str(workdir),
        f"--config.train_file={squad_files['train']}",
        f"--config.eval_file={squad_files['dev']}",
    ]
    assert run_cli(v1, mock=False) == 2
    err = capsys.readouterr().err
    assert "3 question(s) have no gold answer" in err and "config.task='squad2'" in err
    assert_nothing_written(workdir)


def assert_nothing_written(workdir):
    """Bad input writes nothing: no folder, or (when it failed after the folder was claimed,
    e.g. reading the data) only the claim's own files, which a corrected rerun takes over."""
    from minilm_jax import rundir

    if workdir.exists():
        claim_files = {rundir.MARKER_FILE, rundir.CONFIG_FILE, rundir.HISTORY_FILE}
        assert set(os.listdir(workdir)) <= claim_files, sorted(os.listdir(workdir))
