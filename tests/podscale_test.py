"""Pod scale on 8 forced CPU devices: the data x fsdp meshes against one device, fsdp really
sharding the step's arguments, two processes with fsdp, elastic resume (another mesh, another
device count, another host count), the activation levers, the bfloat16 teacher and the
validation of the new fields. TPU compile-only checks are in compile_test.py.

Every test trains the same smoke config (the bert_base_6x384 experiment shrunk to a tiny
random teacher and a 2x32 student), so compiled steps are shared through the compilation
cache."""

import contextlib
import dataclasses
import functools
import io
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minilm_jax import checkpointing, configs, hf, metrics, models, parallel, train
from minilm_jax.bench import teacher_dtype
from minilm_jax.models import attention as attention_lib
from conftest import TEST_XLA_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/bert_base_6x384.py:smoke"
STEPS = 3
# The settings every run here shares (held-out evaluation and exports off: not under test).
COMMON = {
    "batch_size": 16,
    "total_steps": 4,
    "checkpoint_every": 2,
    "keep_checkpoints": 3,
    "log_every": 1,
    "eval_every": 0,
    "eval_at_start": False,
    "data.eval_every_kth_document": 0,
    "export_hf": False,
    "plots": False,
    "embedding_eval_paragraphs": 0,
}


def smoke_config(**overrides):
    c = configs.load_experiment(os.path.join(REPO, SMOKE))
    configs.set_fields(c, {**COMMON, **overrides})
    return c


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


def run_steps(run, state, batches):
    losses = []
    for batch in batches:
        state, m = run.train_fn(state, parallel.to_global(batch, run.mesh))
        losses.append(float(m["loss"]))
    return state, losses


def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def losses_by_step(workdir):
    out = {}
    for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        if r["kind"] == "train":
            out[r["step"]] = r["loss"]
    return out


@dataclasses.dataclass
class Reference:
    batches: list
    losses: list
    params: dict


@pytest.fixture(scope="module")
def reference():
    """STEPS steps of the smoke run on one device: the numbers every mesh must give."""
    config = smoke_config()
    run = train.setup_run(config, mesh=parallel.make_mesh(jax.devices()[:1]))
    batches = host_batches(config, run, STEPS)
    state, losses = run_steps(run, run.state, batches)
    assert len(set(losses)) == STEPS  # the steps really changed the student
    return Reference(batches, losses, parallel.gather(state.params))


# ---------------------------------------------------------------------------------------------
# Meshes.
# ---------------------------------------------------------------------------------------------


def test_meshes_match_one_device_compile_once_and_fsdp_shards_the_arguments(reference):
    argument_bytes = {}
    for data, fsdp in ((8, 1), (4, 2), (2, 4), (1, 8)):
        run = train.setup_run(smoke_config(**{"mesh.data": data, "mesh.fsdp": fsdp}))
        assert dict(run.mesh.shape) == {"slice": 1, "data": data, "fsdp": fsdp}
        state, losses = run_steps(run, run.state, reference.batches)
        assert run.step.train_fn._cache_size() == 1, (data, fsdp)  # three steps, one compile
        np.testing.assert_allclose(losses, reference.losses, rtol=1e-5, atol=1e-6)
        assert max_diff(parallel.gather(state.params), reference.params) <= 1e-5, (data, fsdp)
        if fsdp in (1, 8):
            step = run.step
            compiled = step.train_fn.lower(
                step.abstract_state(),
                step.abstract_batch(16, 32),
                step.schedule,
                step.abstract_teacher_params(),
            ).compile()
            argument_bytes[fsdp] = compiled.memory_analysis().argument_size_in_bytes
    # Student parameters, Adam's moments and the teacher split over 8 devices (the batch is
    # split over all 8 either way; vectors stay whole).
    assert 4 * argument_bytes[8] <= argument_bytes[1], argument_bytes


def test_two_processes_with_fsdp_match_one_process(tmp_path):
    """A real 2-process run (jax.distributed on 127.0.0.1, gloo CPU collectives, 2 devices
    each, mesh data 2 x fsdp 2: every parameter split between each process's two devices)
    against one process fed the same global batches."""
    import portpicker

    port = portpicker.pick_unused_port()
    workdir = tmp_path / "multi"
    overrides = {**COMMON, "total_steps": STEPS, "checkpoint_every": STEPS, "mesh.fsdp": 2}
    common = [
        "--config",
        SMOKE,
        "--workdir",
        str(workdir),
        *(f"--config.{k}={v}" for k, v in overrides.items()),
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
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]

    config = smoke_config()
    run = train.setup_run(config, mesh=parallel.make_mesh(jax.devices()[:1]))
    shards = [host_batches(config, run, STEPS, p, 2) for p in range(2)]
    batches = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*shards)]
    state, losses = run_steps(run, run.state, batches)
    multi = losses_by_step(workdir)
    np.testing.assert_allclose([multi[s] for s in range(1, STEPS + 1)], losses, rtol=1e-5)
    # The checkpoint the two processes wrote together holds the same final parameters.
    saved_params = checkpointing.read_state(str(workdir / "checkpoints"))["params"]
    assert max_diff(saved_params, parallel.gather(state.params)) <= 1e-5


# ---------------------------------------------------------------------------------------------
# Elastic resume.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written_on_2x4(tmp_path_factory):
    """An uninterrupted 4-step run on data 2 x fsdp 4, checkpointed at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("elastic") / "2x4"
    summary = train.train_and_evaluate(
        smoke_config(**{"mesh.data": 2, "mesh.fsdp": 4}), str(workdir)
    )
    assert summary["last_checkpoint"] == 4
    return workdir


def _copy_at_step_2(source, target):
    """The run directory as it was after step 2 (a preempted run)."""
    shutil.copytree(source, target)
    shutil.rmtree(target / "checkpoints" / "4")
    return target


def test_resume_on_another_mesh_continues_the_run(written_on_2x4, tmp_path):
    part = _copy_at_step_2(written_on_2x4, tmp_path / "8x1")
    resumed = train.train_and_evaluate(smoke_config(**{"mesh.data": 8}), str(part))
    assert resumed["start_step"] == 2
    full, cont = losses_by_step(written_on_2x4), losses_by_step(part)
    np.testing.assert_allclose([cont[s] for s in (3, 4)], [full[s] for s in (3, 4)], rtol=1e-5)
    a = checkpointing.read_state(str(written_on_2x4 / "checkpoints"))
    b = checkpointing.read_state(str(part / "checkpoints"))
    assert int(a["step"]) == int(b["step"]) == 4
    assert max_diff(a["params"], b["params"]) <= 1e-5


def _resume_by_hand(config, mesh, directory):
    """What train_and_evaluate does on resume, on ``mesh``: set up, restore, two steps."""
    run = train.setup_run(config, mesh=mesh)
    train_iter, _ = train.make_data(
        config, run.tokenizer, run.teacher_cfg.family, process_index=0, process_count=1
    )
    ckpt = checkpointing.Checkpointer(str(directory), keep=3, use_async=False)
    try:
        state = ckpt.restore(2, checkpointing.abstract_like(run.state), train_iter)
        batches = [next(train_iter) for _ in range(2)]
    finally:
        train_iter.close()
        ckpt.close()
    state, losses = run_steps(run, state, batches)
    return run, ckpt, batches, losses


def test_resume_on_four_devices_and_on_another_host_count(written_on_2x4, tmp_path, caplog):
    config = smoke_config(**{"mesh.data": 2, "mesh.fsdp": 2})
    four = parallel.mesh_from_config(config.mesh, jax.devices()[:4])
    part = _copy_at_step_2(written_on_2x4, tmp_path / "four")
    run, ckpt, _, losses = _resume_by_hand(config, four, part / "checkpoints")
    assert ckpt.data_restarted_at is None  # same host count: the data position restored
    full = losses_by_step(written_on_2x4)
    np.testing.assert_allclose(losses, [full[3], full[4]], rtol=1e-5)

    # The same checkpoint as if two hosts had written it (Grain names one position file per
    # host): the state restores, the data order restarts at the beginning of an epoch.
    data_dir = part / "checkpoints" / "2" / "data"
    (position,) = list(data_dir.glob("process_*.json"))
    for i in range(2):
        shutil.copy(position, data_dir / f"process_{i}-of-2.json")
    position.unlink()
    with caplog.at_level(logging.WARNING):
        _, ckpt, batches, restarted = _resume_by_hand(config, four, part / "checkpoints")
    assert ckpt.data_restarted_at == 2
    assert "written by 2 host(s), this run has 1" in caplog.text
    first = host_batches(config, run, 2)  # a fresh iterator's first batches
    for got, want in zip(batches, first):
        jax.tree.map(np.testing.assert_array_equal, got, want)
    assert restarted[0] != losses[0]  # other data than the interrupted epoch's next batch


# ---------------------------------------------------------------------------------------------
# Activation levers.
# ---------------------------------------------------------------------------------------------


def _float64_attention(q, k, v, allowed, num_heads, scale, bias=None):
    """Softmax attention in float64 NumPy, written out. ``allowed`` [B, Tq, Tk]: which keys a
    query sees; the others get weight 0, and a row that sees no key attends uniformly."""
    b, t, d = q.shape
    q, k, v = (
        np.asarray(x, np.float64).reshape(b, t, num_heads, d // num_heads) for x in (q, k, v)
    )
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        scores = scores + np.asarray(bias, np.float64)
    allowed = np.broadcast_to(allowed[:, None], scores.shape)
    scores = np.where(allowed, scores, -np.inf)
    scores = np.where(allowed.any(-1, keepdims=True), scores, 0.0)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)


def test_attention_through_dot_product_attention_equals_float64_padding_included():
    """Without dropout the kernel is jax.nn.dot_product_attention; with padding (a fully
    padded row too), a sliding window and an additive bias it equals a float64 computation,
    and it equals the path that materialises the probabilities (dropout's) exactly."""
    rng = np.random.default_rng(0)
    b, t, d, heads = 3, 12, 32, 4
    q, k, v = (rng.normal(size=(b, t, d)).astype(np.float32) * 2 for _ in range(3))
    key_mask = jnp.asarray(np.arange(t) < np.array([[12], [5], [0]]))  # full, padded, empty
    bias = rng.normal(size=(b, heads, t, t)).astype(np.float32)
    for window, extra in ((None, None), (4, None), (None, bias)):
        mask = attention_lib.attention_mask(key_mask, window=window)
        kwargs = dict(num_heads=heads, scale=d**-0.5, bias=extra)
        fused = attention_lib.attention(q, k, v, mask, **kwargs)
        probs_path = attention_lib.attention(q, k, v, mask, **kwargs, dropout=lambda p: p)
        allowed = np.asarray(jnp.broadcast_to(mask, (b, 1, t, t)))[:, 0]
        want = _float64_attention(q, k, v, allowed, heads, d**-0.5, extra)
        np.testing.assert_allclose(np.asarray(fused), want, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(fused), np.asarray(probs_path))
    # bfloat16 inputs: float32 scores and softmax on both paths, a bf16 context.
    lo = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    mask = attention_lib.attention_mask(key_mask)
    fused = attention_lib.attention(*lo, mask, num_heads=heads, scale=d**-0.5)
    probs_path = attention_lib.attention(
        *lo, mask, num_heads=heads, scale=d**-0.5, dropout=lambda p: p
    )
    assert fused.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(fused, np.float32), np.asarray(probs_path, np.float32))


@pytest.fixture(scope="module")
def one_device_run():
    config = smoke_config()
    run = train.setup_run(config, mesh=parallel.make_mesh(jax.devices()[:1]))
    batch = host_batches(config, run, 1)[0]
    return run, parallel.gather(run.state.params), parallel.gather(run.teacher_params), batch


def test_remat_policies_give_the_plain_step_losses_and_gradients(one_device_run):
    run, params, teacher, batch = one_device_run
    key = jax.random.key(3)  # dropout on: the recomputed masks must be the same
    results = {}
    for policy in ("none", "attention", "layer"):
        spec = dataclasses.replace(run.step.spec, remat=policy)
        grad_fn = jax.jit(
            jax.value_and_grad(functools.partial(train.distill_loss, spec=spec), has_aux=True)
        )
        results[policy] = jax.tree.map(np.asarray, grad_fn(params, teacher, batch, key))
    (loss, _), grads = results["none"]
    for policy in ("attention", "layer"):
        (other_loss, _), other_grads = results[policy]
        np.testing.assert_allclose(other_loss, loss, rtol=1e-5)
        assert max_diff(other_grads, grads) <= 1e-5, policy


# Tiny configs of the other families, as their Hugging Face config.json would say.
_FAMILY_CONFIGS = {
    "modernbert": dict(
        model_type="modernbert",
        max_position_embeddings=64,
        local_attention=8,
        bos_token_id=2,
        eos_token_id=3,
        cls_token_id=2,
        sep_token_id=3,
    ),
    "xlm-roberta-xl": dict(
        model_type="xlm-roberta-xl", max_position_embeddings=42, type_vocab_size=1
    ),
    "deberta-v2": dict(
        model_type="deberta-v2",
        max_position_embeddings=64,
        relative_attention=True,
        position_buckets=16,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
    ),
}


@pytest.mark.parametrize("family", sorted(_FAMILY_CONFIGS))
def test_remat_is_wired_into_every_family_and_changes_no_gradient(family):
    """Each family's layer loop rematerialises every layer under remat="layer" (one
    checkpointed call per layer in the traced program) and the gradients stay the plain
    ones, dropout included."""
    d = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=1,
        **_FAMILY_CONFIGS[family],
    )
    cfg = hf.config_from_hf_dict(d, source="test")
    graphdef, params = nnx.split(models.build_model(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, 100, (3, 16)), jnp.int32)
    mask = jnp.asarray(np.arange(16) < np.array([[16], [9], [4]]), jnp.int32)

    def loss(p, remat):
        out = nnx.merge(graphdef, p)(
            ids, mask, deterministic=False, rngs=jax.random.key(0), remat=remat
        )
        q, k, v = out.qkv[-1]
        return jnp.sum(q * k) + jnp.sum(v) + jnp.sum(out.last_hidden_state**2)

    for remat, calls in (("none", 0), ("layer", 2)):
        assert str(jax.make_jaxpr(lambda p: loss(p, remat))(params)).count("remat") == calls
    if family == "deberta-v2":
        return  # its numbers: as every family's (jax.checkpoint); compiling it is slow
    both = jax.jit(lambda p: [jax.grad(loss)(p, r) for r in ("none", "layer")])(params)
    plain, rematerialised = jax.tree.map(np.asarray, both)
    scale = max(np.abs(b).max() for b in jax.tree.leaves(plain))  # float32 rounding
    assert max_diff(rematerialised, plain) <= 1e-5 * scale


def _saved_residuals(f, *args):
    """(count, bytes) of what the backward pass of f keeps (JAX's own listing)."""
    from jax.ad_checkpoint import print_saved_residuals

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(f, *args)
    total = 0
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    for line in lines:
        match = re.match(r"\s*(bf16|f32|s32|u32|i32|bool|f16)\[([0-9,]*)\]", line)
        size = {"bf16": 2, "f16": 2, "bool": 1}.get(match.group(1), 4)
        total += size * int(np.prod([int(n) for n in match.group(2).split(",") if n]))
    return len(lines), total


def test_teacher_activations_are_not_kept_for_the_backward_pass(one_device_run):
    """What the backward pass keeps does not grow with the teacher's depth: 1 teacher layer
    or 4, the same residuals (the teacher is not differentiated)."""
    run, params, teacher, batch = one_device_run
    kept = {}
    for layer in (1, 4):
        graphdef, teacher_params = nnx.split(
            train.truncate_teacher(nnx.merge(run.step.spec.teacher_graphdef, teacher), layer),
            nnx.Param,
        )
        spec = dataclasses.replace(run.step.spec, teacher_graphdef=graphdef, teacher_layer=layer)
        kept[layer] = _saved_residuals(
            lambda p: train.distill_loss(p, teacher_params, batch, None, spec=spec)[0], params
        )
    assert kept[1] == kept[4], kept


# ---------------------------------------------------------------------------------------------
# The bfloat16 teacher.
# ---------------------------------------------------------------------------------------------

# KL(relation of the float32 teacher || relation of the same weights in bfloat16) per query
# row, on the tiny random teacher: mean over rows and max. Measured 8e-7 / 4e-6; on the real
# all-MiniLM-L6-v2 3.4e-5 / 1.5e-3 (docs/scaling.md), against 0.7-1.2 mean for an untrained
# student.
BF16_TEACHER_MEAN_KL, BF16_TEACHER_MAX_KL = 1e-4, 5e-3


def test_bfloat16_teacher_loads_runs_and_keeps_its_relations(reference):
    config = smoke_config(**{"teacher.param_dtype": "bfloat16"})
    run = train.setup_run(config, mesh=parallel.make_mesh(jax.devices()[:1]))
    assert {x.dtype for x in jax.tree.leaves(run.teacher_params)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(run.step.abstract_teacher_params())} == {
        jnp.dtype(jnp.bfloat16)
    }
    _, losses = run_steps(run, run.state, reference.batches[:1])
    np.testing.assert_allclose(losses[0], reference.losses[0], rtol=1e-3)  # near, not equal

    graphdef, params = nnx.split(run.teacher, nnx.Param)  # the float32 weights as loaded
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    change = teacher_dtype.relation_change(
        graphdef,
        params,
        rounded,
        reference.batches[0],
        layer=config.teacher.layer,
        relation_heads=config.distill.num_relation_heads,
    )
    for pair, kl in change.items():
        assert kl["mean"] <= BF16_TEACHER_MEAN_KL and kl["max"] <= BF16_TEACHER_MAX_KL, (pair, kl)


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"mesh.data": 3, "mesh.fsdp": 2}, r"config.mesh: slices=1 x data=3 x fsdp=2 = 6 devices"),
        ({"mesh.fsdp": 3}, r"config.mesh.data=-1: the other axes"),
        ({"remat": "full"}, r"config.remat='full': allowed: \('none', 'attention', 'layer'\)"),
        ({"teacher.param_dtype": "float16"}, r"config.teacher.param_dtype='float16': allowed"),
        ({"batch_size": 12}, r"config.batch_size=12 must be a positive multiple"),
    ],
)
def test_validation_names_the_new_fields(overrides, match):
    with pytest.raises(ValueError, match=match):
        train.validate_config(smoke_config(**overrides))


# ---------------------------------------------------------------------------------------------
# Fine-tuning on the same mesh.
# ---------------------------------------------------------------------------------------------


def test_finetuning_shards_its_state_by_the_same_rules():
    """The GLUE smoke fine-tuning with fsdp over the 8 devices (synthetic SST-2-shaped rows):
    the state is placed by the rule table (kernels split, the values those of the unsharded
    init) and a step runs on it. (Sharded steps computing what one device does is tested on
    the trainer's step above: both are steps.jit_train_step.)"""
    from minilm_jax import finetune, glue, optim, tasks

    rng = np.random.default_rng(0)
    ids = tuple(rng.integers(5, 200, n).astype(np.int32) for n in rng.integers(4, 30, 32))
    rows = glue.Encoded(
        ids,
        tuple(np.zeros_like(x) for x in ids),
        rng.integers(0, 2, 32),
        np.array([len(x) for x in ids], np.int32),
    )
    config = configs.load_experiment(os.path.join(REPO, "experiments/glue.py:smoke"))
    config.length_buckets = ()
    config.mesh.fsdp = 8
    student = finetune.load_student(config.student_path, dropout=config.dropout)
    task_data = tasks.TaskData(rows, {"validation": tasks.EvalSet(rows, labels=rows.labels)})
    finetuner = finetune.Finetuner(config, tasks.get_task("sst2"), student, task_data)
    assert dict(finetuner.mesh.shape) == {"slice": 1, "data": 1, "fsdp": 8}
    state = finetuner.init_state(0)
    placed = {
        parallel.path_name(path): x
        for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
    }
    kernel = next(x for name, x in placed.items() if name.endswith("intermediate.kernel"))
    shard = kernel.addressable_shards[0].data
    assert "fsdp" in tuple(kernel.sharding.spec) and shard.size * 8 == kernel.size
    whole = nnx.state(finetuner.build(0), nnx.Param)
    assert max_diff(parallel.gather(state.params), jax.tree.map(np.asarray, whole)) == 0
    batches = finetune.train_batches(
        rows, config.batch_size, 1, 0, finetuner.buckets, student.config.pad_token_id
    )
    batch = parallel.to_global(next(iter(batches)), finetuner.mesh)
    new_state, m = finetuner.train_fn(state, batch, optim.schedule(1e-3, 1, 10), None)
    assert np.isfinite(float(m["loss"])) and int(new_state.step) == 1
