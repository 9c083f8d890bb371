"""Every experiment file's smoke variant trains and resumes; sweeps run and summarise."""

import glob
import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from minilm_jax import configs, relations, sweep, train

from conftest import TEST_XLA_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINETUNING_EXPERIMENTS = ("glue.py", "squad.py", "xnli.py", "mlqa.py")  # finetune_test.py
DISTILLATION_EXPERIMENTS = sorted(
    os.path.basename(p)
    for p in glob.glob(os.path.join(REPO, "experiments", "*.py"))
    if os.path.basename(p) not in FINETUNING_EXPERIMENTS
)
# Teachers beyond the paper: their settings and CLI smoke runs are tested in families_test.py.
NEW_TEACHER_ROWS = (
    "deberta_v3_base_6x384.py",
    "modernbert_base_6x384.py",
    "modernbert_base_bert6x384.py",
    "xlmr_xl_12x384.py",
)
PAPER_ROWS = [
    e
    for e in DISTILLATION_EXPERIMENTS
    if e not in ("quickstart.py", "ablations.py", *NEW_TEACHER_ROWS)
]


def test_the_paper_rows_are_all_there():
    assert sorted(PAPER_ROWS) == sorted(
        [
            "bert_base_6x384.py",
            "bert_base_6x768.py",
            "bert_large_6x384.py",
            "bert_large_6x768.py",
            "roberta_large_12x384.py",
            "roberta_large_6x768.py",
            "roberta_large_6x384.py",
            "xlmr_large_12x384.py",
            "xlmr_large_6x384.py",
        ]
    )


@pytest.mark.parametrize(
    "name, teacher, layer, heads, student",
    [
        ("bert_base_6x384.py", "bert-base-uncased", 12, 48, "6x384"),
        ("bert_base_6x768.py", "bert-base-uncased", 12, 48, "6x768"),
        ("bert_large_6x384.py", "bert-large-uncased", 21, 64, "6x384"),
        ("bert_large_6x768.py", "bert-large-uncased", 21, 64, "6x768"),
        ("roberta_large_12x384.py", "roberta-large", 19, 64, "12x384"),
        ("roberta_large_6x768.py", "roberta-large", 19, 64, "6x768"),
        ("roberta_large_6x384.py", "roberta-large", 19, 64, "6x384"),
        ("xlmr_large_12x384.py", "xlm-roberta-large", 19, 64, "12x384"),
        ("xlmr_large_6x384.py", "xlm-roberta-large", 19, 64, "6x384"),
    ],
)
def test_paper_settings(name, teacher, layer, heads, student):
    c = configs.load_experiment(os.path.join(REPO, "experiments", name))
    assert c.teacher.path.endswith(teacher)
    assert (c.teacher.layer, c.distill.num_relation_heads, c.student.spec) == (
        layer,
        heads,
        student,
    )
    assert tuple(c.distill.relations) == ("qq", "kk", "vv")
    assert (c.max_len, c.batch_size, c.total_steps, c.warmup_steps) == (512, 1024, 400_000, 4000)
    assert (c.learning_rate, c.adam_b1, c.adam_b2, c.adam_eps, c.weight_decay) == (
        6e-4,
        0.9,
        0.999,
        1e-6,
        0.01,
    )
    assert c.student.num_heads == 12 and c.student.intermediate_size is None  # FFN = 4 x hidden
    assert c.student.dropout == 0.1 and c.student.init == "random"
    if teacher.startswith("bert"):
        assert "wikipedia" in c.data.tfds_sources


def test_the_corpus_follows_the_teachers_family_not_its_path(monkeypatch):
    """MINILM_TEACHERS=/data/xlm-work/teachers must not turn a BERT row into a CC-100 run."""
    monkeypatch.setenv("MINILM_TEACHERS", "/data/xlm-work/teachers")
    bert = configs.load_experiment(os.path.join(REPO, "experiments", "bert_base_6x384.py"))
    assert bert.teacher.path == "/data/xlm-work/teachers/bert-base-uncased"
    assert bert.data.text_files == configs.CORPORA["bert"]["text_files"]
    xlmr = configs.load_experiment(os.path.join(REPO, "experiments", "xlmr_large_6x384.py"))
    assert xlmr.data.text_files == configs.CORPORA["xlm-roberta"]["text_files"]
    smoke = configs.load_experiment(
        os.path.join(REPO, "experiments", "roberta_large_6x384.py:smoke")
    )
    assert hf_family(smoke.teacher.path) == "roberta"


def hf_family(path):
    from minilm_jax import hf

    return hf.load_config(path).family


# Resume does not depend on the family: the new teachers' smoke runs are in families_test.py.
@pytest.mark.parametrize("name", [e for e in DISTILLATION_EXPERIMENTS if e not in NEW_TEACHER_ROWS])
def test_smoke_variant_trains_and_resumes(name, tmp_path, monkeypatch):
    config = configs.load_experiment(os.path.join(REPO, "experiments", f"{name}:smoke"))
    config.plots = False
    workdir = tmp_path / "run"

    real, calls = train.next_train_batch, {"n": 0}

    def preempt_at_step_4(train_iter, mesh):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(train_iter, mesh)

    monkeypatch.setattr(train, "next_train_batch", preempt_at_step_4)
    first = train.train_and_evaluate(config, str(workdir))
    assert first["preempted_at"] == 4
    monkeypatch.setattr(train, "next_train_batch", real)
    second = train.train_and_evaluate(config, str(workdir))
    assert second["start_step"] == 4 and second["last_checkpoint"] == config.total_steps
    assert second["eval_end"]["loss"] >= 0.0
    assert os.path.exists(os.path.join(second["hf_student"], "model.safetensors"))


SWEEP_FILE = """
from minilm_jax import configs

def get_config(arg=None):
    return configs.load_experiment("{repo}/experiments/quickstart.py:smoke")

def sweep(arg=None):
    return [("heads-2", {{"distill.num_relation_heads": 2}}), ("layer-3", {{"teacher.layer": 3}})]
"""


def test_sweep_of_two_configs_runs_and_summarises(tmp_path):
    exp = tmp_path / "two_points.py"
    exp.write_text(SWEEP_FILE.format(repo=REPO))
    root = tmp_path / "sweep"
    env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minilm_jax.sweep",
            "--config",
            str(exp),
            "--workdir",
            str(root),
            "--config.plots=False",
            "--config.total_steps=3",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((root / "summary.json").read_text())
    assert [r["name"] for r in rows] == ["heads-2", "layer-3"]
    for row in rows:
        run = json.loads((root / row["name"] / "summary.json").read_text())
        assert row["held_out_end"] == pytest.approx(run["eval_end"]["loss"])
        assert row["held_out_start"] == pytest.approx(run["eval_start"]["loss"])
        assert set(row["per_relation_end"]) == {"qq", "kk", "vv"}
    resolved = json.loads((root / "layer-3" / "run_config.json").read_text())
    assert resolved["teacher"]["layer"] == 3 and resolved["total_steps"] == 3
    table = (root / "summary.md").read_text()
    assert "| heads-2 |" in table and "| layer-3 |" in table


def test_two_point_sweep_scored_end_to_end_on_a_task(tmp_path):
    """`--evaluate mnli,squad2`: each point is distilled, its student fine-tuned on (mock)
    MNLI and SQuAD 2.0, and summary.md gets one row per point with each task's dev score (MNLI
    accuracy, SQuAD 2.0 F1), the mean over seeds at the best learning rate, as recomputed here
    from each point's own fine-tuning results."""
    exp = tmp_path / "two_points.py"
    exp.write_text(SWEEP_FILE.format(repo=REPO))
    root = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tests", "mock_tfds.py"),
            "-m",
            "minilm_jax.sweep",
            "--config",
            f"{exp}:smoke",
            "--workdir",
            str(root),
            "--evaluate",
            "mnli,squad2",
            "--config.plots=False",
            "--config.total_steps=3",
        ],
        cwd=REPO,
        env={**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (root / "summary.md").read_text()
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    tasks = ("mnli", "squad2")
    assert header[-2:] == [f"{task} (dev, mean over seeds)" for task in tasks]
    for name in ("heads-2", "layer-3"):
        (row,) = [line for line in table.splitlines() if line.startswith(f"| {name} |")]
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        for task, cell in zip(tasks, cells[-2:]):
            with open(root / name / "eval" / task / "results.jsonl") as f:
                runs = [json.loads(line)["result"] for line in f]
            by_lr = {}
            for run in runs:
                by_lr.setdefault(run["learning_rate"], []).append(run["score"])
            best = max(sum(v) / len(v) for v in by_lr.values())
            assert cell == f"{100 * best:.2f}", (task, row, best)
        assert (root / name / "hf_student" / "model.safetensors").exists()
    squad = json.loads((root / "heads-2" / "eval" / "squad2" / "results.jsonl").read_text())
    assert squad["result"]["score"] == squad["result"]["metrics"]["f1"]  # SQuAD 2.0 dev F1


def test_ablation_sweeps_cover_the_paper():
    module = configs.load_experiment_module(os.path.join(REPO, "experiments", "ablations.py"))
    pairs = [o["distill.relations"] for _, o in module.sweep("ablation=pairs")]
    assert ("qq", "kk", "vv") in pairs and tuple(relations.MINILM_V1_RELATIONS) in pairs
    assert {("qq",), ("kk",), ("vv",), ("qq", "kk"), ("qq", "vv"), ("kk", "vv")} <= set(pairs)
    layers = [o["teacher.layer"] for _, o in module.sweep("ablation=teacher_layer")]
    assert layers == list(range(1, 13))
    for _, overrides in module.sweep("ablation=relation_heads"):
        assert 768 % overrides["distill.num_relation_heads"] == 0
        assert 384 % overrides["distill.num_relation_heads"] == 0
    large = [
        o["teacher.layer"] for _, o in module.sweep("ablation=teacher_layer,teacher=roberta-large")
    ]
    assert large == list(range(1, 25))
    assert module.get_config("ablation=teacher_layer,teacher=roberta-large").teacher.path.endswith(
        "roberta-large"
    )
    for _, overrides in module.sweep("ablation=relation_heads,teacher=bert-large-uncased"):
        assert 1024 % overrides["distill.num_relation_heads"] == 0
        assert 384 % overrides["distill.num_relation_heads"] == 0
    shapes = [o["student.spec"] for _, o in module.sweep("ablation=student_shape")]
    assert shapes == ["3x384", "4x384", "6x384", "6x768"]
    with pytest.raises(ValueError, match="allowed"):
        module.get_config("ablation=nope")


def test_sweep_prints_the_job_graph(tmp_path):
    spec = os.path.join(REPO, "experiments", "ablations.py") + ":ablation=pairs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "minilm_jax.sweep",
            "--config",
            spec,
            "--workdir",
            str(tmp_path),
            "--evaluate",
            "mnli",
            "--print_only",
            "--config.seed=3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = [json.loads(line) for line in proc.stdout.splitlines()]
    points = sweep.sweep_points(spec)
    assert [j["id"] for j in jobs] == [
        f"{name}/{kind}" for name, _ in points for kind in ("distill", "eval/mnli")
    ]
    distill, evaluate = jobs[4], jobs[5]
    assert evaluate["after"] == [distill["id"]]
    cmd = distill["command"]
    assert cmd.startswith("python -m minilm_jax.main --config ")
    assert "--config.seed=3" in cmd and "--config.distill.relations=" in cmd
    # The printed override parses back to the same tuple.
    base = configs.load_experiment(spec)
    (arg,) = [a for a in shlex.split(cmd) if a.startswith("--config.distill.relations=")]
    configs.override(base, "distill.relations", arg.split("=", 1)[1])
    assert tuple(base.distill.relations) == points[2][1]["distill.relations"]
    student = os.path.join(str(tmp_path), points[2][0], "hf_student")
    assert evaluate["command"].startswith("python -m minilm_jax.finetune --config ")
    assert f"--config.student_path={student}" in evaluate["command"]
    assert "glue.py:task=mnli" in evaluate["command"]
