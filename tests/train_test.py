"""The distillation loop: sharding, accumulation, resume, the CLI, validation errors."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minilm_jax import checkpointing, configs, data, hf, metrics, models, optim, parallel, tiny
from minilm_jax import finetune, train
from conftest import TEST_XLA_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "bert")
    tiny.write_tiny_model(
        "bert", path, data.python_docs_documents()[:400], seed=7, **tiny.SMOKE_TEACHER
    )
    return path


def smoke_config(teacher_dir, **overrides):
    c = configs.apply_smoke(configs.base_config(), "bert")
    c.teacher.path = teacher_dir
    c.student.spec = "2x32"
    configs.set_fields(c, overrides)
    return c


def run_steps(run, batches, n_steps):
    """Runs ``n_steps`` steps of ``run`` (the trainer's own jitted step) on ``batches`` (host
    numpy) and returns the final state and the losses."""
    state, losses = run.state, []
    for batch in batches[:n_steps]:
        state, m = run.train_fn(state, parallel.to_global(batch, run.mesh))
        losses.append(float(m["loss"]))
    return state, losses


def host_batches(config, run, n, process_index=0, process_count=1):
    it, _ = train.make_data(
        config,
        run.tokenizer,
        run.teacher_cfg.family,
        process_index=process_index,
        process_count=process_count,
    )
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def max_param_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x.addressable_data(0)) - np.asarray(y.addressable_data(0)))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_sharded_step_matches_one_device_and_compiles_once(teacher_dir):
    """The trainer's own step (train.build_step, as train_and_evaluate and the benchmark use
    it) on 8 devices equals 1 device, and three steps compile it once."""
    assert jax.device_count() == 8
    config = smoke_config(teacher_dir, batch_size=16)
    results = {}
    for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
        run = train.setup_run(config, mesh=parallel.make_mesh(devices))
        batches = host_batches(config, run, 3)
        results[name] = run_steps(run, batches, 3)
        assert run.step.train_fn._cache_size() == 1  # three steps, one compilation
    (state1, losses1), (state8, losses8) = results["one"], results["eight"]
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5, atol=1e-6)
    assert max_param_diff(state1.params, state8.params) <= 1e-5
    assert len(set(losses1)) == 3  # the steps really changed the student


def test_gradient_accumulation_matches_full_batch(teacher_dir, tmp_path):
    base = dict(batch_size=16, **{"student.dropout": 0.0})
    full = smoke_config(teacher_dir, **base)
    accum = smoke_config(teacher_dir, grad_accum_steps=2, **base)
    run_full = train.setup_run(full)
    batches = host_batches(full, run_full, 2)
    state_full, losses_full = run_steps(run_full, batches, 2)
    state_acc, losses_acc = run_steps(train.setup_run(accum), batches, 2)
    np.testing.assert_allclose(losses_acc, losses_full, rtol=1e-5)
    assert max_param_diff(state_full.params, state_acc.params) <= 1e-5


def _name(path) -> str:
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
    if (
        len(keys) > 1
        and keys[-1] == "value"
        and keys[-2] in ("kernel", "bias", "scale", "embedding")
    ):
        keys = keys[:-1]  # State paths may end in the Variable's `value` attribute
    return "/".join(str(k) for k in keys)


def test_weight_decay_skips_biases_and_layernorm(teacher_dir):
    run = train.setup_run(smoke_config(teacher_dir))
    mask = optim.decay_mask(run.state.params)
    flat = {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = sorted(k for k, v in flat.items() if v)
    assert decayed and all(("kernel" in k or "embedding" in k) for k in decayed)
    assert not any(v for k, v in flat.items() if "bias" in k or "layer_norm" in k)


@pytest.mark.parametrize(
    "relations, frozen_projections",
    [(("qq", "kk", "vv"), ()), (("qq",), ("key", "value")), (("kk", "vv"), ("query",))],
)
def test_parameters_the_loss_cannot_reach_stay_frozen(teacher_dir, relations, frozen_projections):
    """The student's last attention output, its LayerNorm, its feed-forward, the pooler and
    the last layer's projections no relation reads get no gradient; with weight decay 0.5
    they must still not move, and every other parameter trains."""
    config = smoke_config(
        teacher_dir, weight_decay=0.5, learning_rate=0.1, **{"distill.relations": relations}
    )
    run = train.setup_run(config)
    before = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), run.state.params)
    state, _ = run_steps(run, host_batches(config, run, 2), 2)
    after = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
    used = train.projections_read(relations)
    frozen = models.unreachable_params(run.student_cfg, before, used)
    moved = {
        _name(path): bool(np.any(a != b))
        for (path, a), b in zip(
            jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after)
        )
    }
    is_frozen = {_name(path): f for path, f in jax.tree_util.tree_flatten_with_path(frozen)[0]}
    last = run.student_cfg.num_layers - 1
    assert is_frozen[f"layers/{last}/feed_forward/intermediate/kernel"]
    assert is_frozen[f"layers/{last}/attention/output/kernel"]
    assert is_frozen["pooler/dense/kernel"]
    for projection in ("query", "key", "value"):
        frozen_here = projection in frozen_projections
        assert is_frozen[f"layers/{last}/attention/{projection}/kernel"] == frozen_here
        assert not is_frozen[f"layers/0/attention/{projection}/kernel"]
    for name, f in is_frozen.items():
        assert moved[name] != f, name  # frozen ones stayed, every other one trained


def test_student_init_from_teacher_layers(teacher_dir):
    config = smoke_config(
        teacher_dir,
        **{"student.spec": "2x64", "student.init": "teacher", "student.intermediate_size": 128},
    )
    run = train.setup_run(config)
    _, teacher = hf.load_pretrained(teacher_dir)
    student = nnx.merge(run.step.spec.student_graphdef, run.state.params)
    assert train.teacher_init_layers(config, run.teacher_cfg, run.student_cfg) == (1, 3)
    for dst, src in ((0, 1), (1, 3)):
        for a, b in zip(
            jax.tree.leaves(nnx.state(student.layers[dst], nnx.Param)),
            jax.tree.leaves(nnx.state(teacher.layers[src], nnx.Param)),
        ):
            np.testing.assert_array_equal(np.asarray(a.addressable_data(0)), np.asarray(b))
    np.testing.assert_array_equal(
        np.asarray(student.embeddings.word_embeddings.embedding[...].addressable_data(0)),
        np.asarray(teacher.embeddings.word_embeddings.embedding[...]),
    )


def test_lr_schedule_warmup_then_linear_decay(teacher_dir):
    c = smoke_config(teacher_dir, total_steps=100, warmup_steps=10, learning_rate=1.0)
    schedule = train.build_step(
        c,
        hf.load_config(teacher_dir),
        train.make_student_config(c, hf.load_config(teacher_dir)),
        parallel.make_mesh(),
    ).schedule
    lr = [float(optim.learning_rate(step, schedule)) for step in (0, 5, 10, 55, 100)]
    np.testing.assert_allclose(lr, [0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def _nan_at_call(step, n: int):
    """A DistillStep whose train_fn gets NaN teacher weights at its n-th call."""
    real, calls = step.train_fn, {"n": 0}

    def train_fn(state, batch, schedule, teacher_params):
        calls["n"] += 1
        if calls["n"] == n:
            teacher_params = jax.tree.map(lambda x: x * jnp.nan, teacher_params)
        return real(state, batch, schedule, teacher_params)

    return dataclasses.replace(step, train_fn=train_fn)


def test_nonfinite_loss_stops_with_last_good_checkpoint(teacher_dir, tmp_path, monkeypatch):
    config = smoke_config(teacher_dir, total_steps=6, checkpoint_every=2)
    original_setup = train.setup_run

    def setup_with_nan_at_step_3(*args, **kwargs):
        run = original_setup(*args, **kwargs)
        run.step = _nan_at_call(run.step, 3)
        return run

    monkeypatch.setattr(train, "setup_run", setup_with_nan_at_step_3)
    with pytest.raises(
        train.TrainingError, match=r"Non-finite loss .* step 3.*Last good checkpoint: step 2"
    ):
        train.train_and_evaluate(config, str(tmp_path))
    assert checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=2).all_steps() == [2]
    params = checkpointing.read_state(str(tmp_path / "checkpoints"))["params"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_finetuning_refuses_a_nan_update_the_same_way(tmp_path, monkeypatch):
    """The shared step and loop: a fine-tuning run whose gradient turns NaN at step 3 stops
    with the same error and keeps its last good (finite) checkpoint."""
    import tensorflow_datasets as tfds

    config = configs.load_experiment(os.path.join(REPO, "experiments/glue.py:smoke,task=rte"))
    config.sweep.learning_rates, config.checkpoint_every = (1e-3,), 2
    real_init = finetune.Finetuner.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        real, calls = self.train_fn, {"n": 0}

        def train_fn(state, batch, schedule, aux):
            calls["n"] += 1
            if calls["n"] == 3:  # NaN weights make the loss and the gradient NaN
                state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
            return real(state, batch, schedule, aux)

        self.train_fn = train_fn

    monkeypatch.setattr(finetune.Finetuner, "__init__", init)
    with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(
            train.TrainingError, match=r"Non-finite loss .* step 3.*Last good checkpoint: step 2"
        ):
            finetune.run_sweep(config, str(tmp_path), log=lambda s: None)
    run_dir = tmp_path / "runs" / "lr0.001_ep1_seed0" / "checkpoints"
    params = checkpointing.read_state(str(run_dir))["params"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def _losses_by_step(workdir):
    """Per-step train loss from metrics.jsonl, the last record of each step winning (a
    resumed run re-logs the steps after its checkpoint)."""
    out = {}
    for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        if r["kind"] == "train":
            out[r["step"]] = r["loss"]
    return out


@pytest.mark.parametrize("how", ["crash", "sigterm"])
def test_resume_matches_uninterrupted_run(teacher_dir, tmp_path, monkeypatch, how):
    config = smoke_config(
        teacher_dir, total_steps=6, checkpoint_every=2, log_every=1, eval_every=0, export_hf=False
    )
    full = train.train_and_evaluate(config, str(tmp_path / "full"))
    assert "preempted_at" not in full

    real = train.next_train_batch
    calls = {"n": 0}

    def interrupted(train_iter, mesh):
        calls["n"] += 1
        if calls["n"] == 4:
            if how == "crash":  # dies after the step-2 checkpoint, mid step 4
                raise KeyboardInterrupt("simulated crash")
            os.kill(os.getpid(), signal.SIGTERM)  # preemption notice during step 4
        return real(train_iter, mesh)

    monkeypatch.setattr(train, "next_train_batch", interrupted)
    part = str(tmp_path / "part")
    if how == "crash":
        with pytest.raises(KeyboardInterrupt):
            train.train_and_evaluate(config, part)
    else:
        summary = train.train_and_evaluate(config, part)
        assert summary["preempted_at"] == 4
    monkeypatch.setattr(train, "next_train_batch", real)
    resumed = train.train_and_evaluate(config, part)
    assert resumed["start_step"] == (2 if how == "crash" else 4)

    full_losses, part_losses = _losses_by_step(tmp_path / "full"), _losses_by_step(part)
    assert sorted(part_losses) == list(range(1, 7))
    # The steps replayed after the restart are in metrics.jsonl once, in order.
    records = metrics.read_jsonl(os.path.join(part, "metrics.jsonl"))
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(1, 7))
    np.testing.assert_allclose(
        [part_losses[s] for s in range(1, 7)], [full_losses[s] for s in range(1, 7)], rtol=1e-6
    )
    a = checkpointing.read_state(str(tmp_path / "full" / "checkpoints"))
    b = checkpointing.read_state(os.path.join(part, "checkpoints"))
    assert int(a["step"]) == int(b["step"]) == 6
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _cli(args, **kwargs):
    # One CPU device, as a user's run; the fast-compile flag of conftest stays.
    env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}
    return subprocess.run(
        [sys.executable, "-m", "minilm_jax.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )


def test_cli_smoke_end_to_end(tmp_path):
    import torch
    import transformers

    workdir = tmp_path / "run"
    proc = _cli(
        ["--config", "experiments/quickstart.py:smoke", "--workdir", str(workdir)], timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out loss" in proc.stdout and "step 6/6" in proc.stdout
    resolved = json.loads((workdir / "run_config.json").read_text())
    assert resolved["total_steps"] == 6
    assert resolved["teacher"]["path"] == tiny.smoke_model("bert")  # the cached tiny teacher
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())[-1] == 6
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    kinds = {r["kind"] for r in metrics.read_jsonl(str(workdir / "metrics.jsonl"))}
    assert kinds == {"train", "eval"}
    for picture in ("loss_curves.png", "relations.png"):
        assert (workdir / picture).stat().st_size > 10_000

    student_dir = str(workdir / "hf_student")
    assert os.path.exists(os.path.join(student_dir, "tokenizer.json"))
    cfg, ours = hf.load_pretrained(student_dir)
    theirs = transformers.AutoModel.from_pretrained(student_dir).eval()
    ids = np.array([[2, 40, 41, 42, 3, 0], [2, 50, 51, 52, 53, 3]], np.int64)
    mask = (ids != 0).astype(np.int64)
    with torch.no_grad():
        ref = theirs(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).last_hidden_state.numpy()
    got = np.asarray(
        ours(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)).last_hidden_state
    )
    np.testing.assert_allclose(got[mask == 1], ref[mask == 1], atol=1e-5)

    # Running again resumes at the end and does nothing but re-export.
    again = _cli(
        ["--config", "experiments/quickstart.py:smoke", "--workdir", str(workdir)], timeout=600
    )
    assert again.returncode == 0 and "Resumed from step 6" in again.stdout


def test_two_processes_match_single_process_on_the_same_data(teacher_dir, tmp_path):
    """A real 2-process run (jax.distributed on 127.0.0.1, gloo CPU collectives, 2 devices
    each) against a single-process computation fed the same global batches."""
    import portpicker

    port = portpicker.pick_unused_port()
    steps = 4
    workdir = tmp_path / "multi"
    common = [
        "--config",
        "experiments/quickstart.py:smoke",
        "--workdir",
        str(workdir),
        f"--config.teacher.path={teacher_dir}",
        "--config.student.spec=2x32",
        f"--config.total_steps={steps}",
        "--config.log_every=1",
        "--config.eval_every=0",
        "--config.plots=False",
        "--config.export_hf=False",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        "--config.distributed.cpu_collectives=gloo",
    ]
    env = {**os.environ, "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=2"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "minilm_jax.main",
                *common,
                f"--config.distributed.process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    multi = _losses_by_step(workdir)

    # Reference: one process, the two hosts' batches stacked as make_array_from_process_local_data does.
    config = configs.load_experiment(os.path.join(REPO, "experiments/quickstart.py:smoke"))
    config.teacher.path = teacher_dir
    config.student.spec, config.total_steps = "2x32", steps
    run = train.setup_run(config)
    shards = [host_batches(config, run, steps, p, 2) for p in range(2)]
    batches = [
        {k: np.concatenate([shards[0][i][k], shards[1][i][k]]) for k in shards[0][i]}
        for i in range(steps)
    ]
    _, losses = run_steps(run, batches, steps)
    np.testing.assert_allclose([multi[s] for s in range(1, steps + 1)], losses, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"teacher.path": "/nonexistent/teacher"}, r"config.teacher.path='/nonexistent/teacher'"),
        ({"teacher.layer": 5}, r"config.teacher.layer=5: must be in 1..4"),
        ({"teacher.layer": 0}, r"config.teacher.layer=0: must be in 1..4"),
        ({"distill.num_relation_heads": 5}, r"config.distill.*5"),
        ({"distill.relations": ("qq", "xy")}, r"config.distill.relations.*xy"),
        (
            {"batch_size": 12},
            r"config.batch_size=12 must be a positive multiple of the number of devices \(8",
        ),
        (
            {"data.python_docs": False, "data.text_files": "/nonexistent/*.txt"},
            r"/nonexistent/\*.txt.*matched no files",
        ),
        ({"dtype": "float16"}, r"config.dtype='float16'.*bfloat16"),
        ({"student.spec": "6by384"}, r"config.student.*6by384"),
        ({"student.init": "teacher"}, r"config.student.init='teacher'.*hidden_size"),
        ({"distill.weights": (1.0,)}, r"config.distill.weights.*one weight per relation"),
        ({"grad_accum_steps": 3}, r"config.grad_accum_steps=3"),
    ],
)
def test_validation_errors_name_the_field(teacher_dir, tmp_path, overrides, match):
    config = smoke_config(teacher_dir, **overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train.validate_config(config)


def test_unsupported_teacher_checkpoint_is_named(tmp_path, teacher_dir):
    bad = tmp_path / "gpt"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"config.teacher.path=.*gpt2"):
        train.validate_config(smoke_config(teacher_dir, **{"teacher.path": str(bad)}))


def test_empty_corpus_is_named(teacher_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    config = smoke_config(
        teacher_dir, **{"data.python_docs": False, "data.text_files": str(tmp_path / "*.txt")}
    )
    with pytest.raises(ValueError, match=r"no documents"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_finite_epochs_end_the_run_with_a_checkpoint(teacher_dir, tmp_path):
    words = data.python_docs_documents()[:40]
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(d.split()[:20]) for d in words))
    config = smoke_config(
        teacher_dir,
        total_steps=100,
        checkpoint_every=50,
        eval_every=0,
        export_hf=False,
        **{
            "data.python_docs": False,
            "data.text_files": str(tmp_path / "corpus.txt"),
            "data.text_format": "line",
            "data.num_epochs": 1,
        },
    )
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    last = summary["last_checkpoint"]
    assert 0 < last < 100
    assert checkpointing.Checkpointer(
        str(tmp_path / "run" / "checkpoints"), keep=2
    ).all_steps() == [last]


def test_cli_reports_config_errors_in_one_line(tmp_path):
    proc = _cli(
        [
            "--config",
            "experiments/quickstart.py:smoke",
            "--workdir",
            str(tmp_path),
            "--config.dtype=float16",
        ],
        timeout=300,
    )
    assert proc.returncode == 2
    assert "error: config.dtype='float16'" in proc.stderr
    assert "Traceback" not in proc.stderr
