"""The mesh (data x fsdp, slices) and the fsdp rule table, on 8 forced CPU devices."""

import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from minilm_jax import configs, optim, parallel, steps, train
from minilm_jax.configs import base_config
from minilm_jax.models.transformer import Transformer, TransformerConfig, student_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Widths chosen so the rules meet every case at fsdp=8: vocabulary rows (99) and token types
# (2) that do not divide, hidden (48) and feed-forward (192) widths that do.
TEACHER = TransformerConfig(
    family="bert",
    vocab_size=99,
    hidden_size=48,
    num_layers=2,
    num_heads=4,
    intermediate_size=192,
    max_position_embeddings=64,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=0,
)
STUDENT = student_config("2x32", TEACHER, num_heads=4, hidden_dropout=0.0, attention_dropout=0.0)


def abstract_state():
    """The student's TrainState (params + AdamW state) as shapes."""
    student = nnx.eval_shape(lambda: Transformer(STUDENT, rngs=nnx.Rngs(0)))
    _, params = nnx.split(student, nnx.Param)
    tx = optim.make_optimizer(base_config())
    return jax.eval_shape(lambda p: steps.init_state(p, tx, 0), params)


def named_leaves(tree):
    return {
        parallel.path_name(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


# ---------------------------------------------------------------------------------------------
# The mesh.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2), (2, 4), (1, 8)])
def test_meshes_cover_every_device_and_split_the_batch_over_all(data, fsdp):
    for sizes in ({"data": data, "fsdp": fsdp}, {"data": -1, "fsdp": fsdp}, {"fsdp": fsdp}):
        mesh = parallel.mesh_from_config(sizes)
        assert dict(mesh.shape) == {"slice": 1, "data": data, "fsdp": fsdp}
        assert set(mesh.devices.flat) == set(jax.devices())
    rows = np.arange(16 * 3, dtype=np.int32).reshape(16, 3)
    batch = parallel.to_global({"x": rows}, mesh)["x"]
    shards = {s.device: np.asarray(s.data) for s in batch.addressable_shards}
    assert len(shards) == 8 and all(s.shape == (2, 3) for s in shards.values())
    np.testing.assert_array_equal(np.concatenate([shards[d] for d in mesh.devices.flat]), rows)


def test_make_mesh_without_sizes_is_the_one_dimensional_data_mesh():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == 8
    assert parallel.batch_sharded(mesh).spec == P("data")
    assert parallel.describe_mesh(mesh) == {"slice": 1, "data": 8, "fsdp": 1}


@pytest.mark.parametrize(
    "sizes,message",
    [
        ({"data": 3, "fsdp": 2}, "slices=1 x data=3 x fsdp=2 = 6 devices, but this run has 8"),
        ({"data": 4, "fsdp": 4}, "= 16 devices, but this run has 8"),
        ({"data": -1, "fsdp": 3}, "config.mesh.data=-1: the other axes"),
        ({"data": -1, "fsdp": -1}, "both -1"),
        ({"fsdp": 0}, "config.mesh.fsdp=0: must be a positive integer or -1"),
        ({"slices": -1}, "config.mesh.slices=-1: must be a positive integer"),
        ({"fsdp": 2.0}, "config.mesh.fsdp=2.0: must be an integer"),
        ({"model": 2}, "config.mesh.model: unknown field; allowed: ['data', 'fsdp', 'slices']"),
        ({"slices": 2}, "config.mesh.slices=2, but the 8 devices form 1 slice(s)"),
    ],
)
def test_mesh_errors_name_the_fields_and_the_device_count(sizes, message):
    with pytest.raises(ValueError) as e:
        parallel.mesh_from_config(sizes)
    assert message in str(e.value)


# ---------------------------------------------------------------------------------------------
# The rule table.
# ---------------------------------------------------------------------------------------------


def test_rules_pick_the_first_dividing_dimension_else_replicate():
    # Written out from the table's comments, independently of the matching code.
    cases = [
        ("embeddings.word_embeddings.embedding", (30522, 768), 8, P(None, "fsdp")),
        ("embeddings.position_embeddings.embedding", (512, 768), 8, P("fsdp")),
        ("embeddings.token_type_embeddings.embedding", (2, 768), 8, P(None, "fsdp")),
        ("layers.0.feed_forward.intermediate.kernel", (768, 3072), 8, P(None, "fsdp")),
        ("layers.0.feed_forward.output.kernel", (3072, 768), 8, P("fsdp")),
        ("layers.0.attention.query.kernel", (768, 768), 8, P("fsdp")),
        ("layers.0.attention.query.kernel", (36, 36), 8, P()),  # nothing divides
        ("layers.0.attention.query.kernel", (36, 40), 8, P(None, "fsdp")),
        ("layers.0.attention.query.bias", (768,), 8, P()),
        ("layers.0.attention.layer_norm.scale", (768,), 8, P()),
        ("layers.0.attention.query.kernel", (768, 768), 1, P()),  # no fsdp axis in use
        ("opt_state.0.count", (), 8, P()),
        ("some.unknown.leaf", (64, 64), 8, P()),
    ]
    for name, shape, fsdp, expected in cases:
        assert parallel.leaf_spec(name, shape, fsdp) == expected, name


def test_state_shardings_cover_params_and_adam_moments():
    state = abstract_state()
    mesh = parallel.mesh_from_config({"fsdp": 8})
    shardings = parallel.state_shardings(state, mesh)
    assert jax.tree.structure(shardings) == jax.tree.structure(state)
    leaves, specs = named_leaves(state), named_leaves(shardings)
    assert all(isinstance(s, NamedSharding) and s.mesh == mesh for s in specs.values())
    for name, leaf in leaves.items():
        spec = specs[name].spec
        if len(spec):  # the sharded dimension really divides
            assert leaf.shape[len(spec) - 1] % 8 == 0, name
    params = {k.removeprefix("params."): v for k, v in specs.items() if k.startswith("params.")}
    assert params["embeddings.word_embeddings.embedding"].spec == P(None, "fsdp")  # 99 rows
    assert params["embeddings.position_embeddings.embedding"].spec == P("fsdp")
    assert params["layers.0.feed_forward.intermediate.kernel"].spec == P(None, "fsdp")
    assert params["layers.1.attention.query.bias"].spec == P()
    # Every Adam moment is sharded like its parameter; step counts are replicated.
    moments = [k for k in specs if ".mu." in k or ".nu." in k]
    assert len(moments) >= len(params)
    for name in moments:
        param = name.split(".mu.")[-1].split(".nu.")[-1]
        assert specs[name].spec == params[param].spec, name
    counts = [k for k in specs if k.endswith("count")]
    assert counts and all(specs[k].spec == P() for k in counts)
    assert specs["step"].spec == P() and specs["rng"].spec == P()


def test_fsdp8_cuts_per_device_state_bytes_at_least_fourfold():
    state = abstract_state()
    compiled_bytes = {}
    for fsdp in (1, 8):
        mesh = parallel.mesh_from_config({"fsdp": fsdp})
        shardings = parallel.state_shardings(state, mesh)
        args = parallel.abstract(state, shardings)
        scale = jax.jit(lambda s: jax.tree.map(lambda x: x * 2, s))
        memory = scale.lower(args).compile().memory_analysis()
        compiled_bytes[fsdp] = memory.argument_size_in_bytes
        # Our own count of the shards agrees with XLA's.
        assert parallel.bytes_per_device(state, shardings) == memory.argument_size_in_bytes
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert compiled_bytes[1] == total
    assert compiled_bytes[8] * 4 <= compiled_bytes[1], compiled_bytes


def test_place_puts_each_shard_where_its_sharding_says():
    mesh = parallel.mesh_from_config({"data": 2, "fsdp": 4})
    tree = {"layer": {"kernel": np.arange(8 * 6, dtype=np.float32).reshape(8, 6)}}
    shardings = parallel.state_shardings(tree, mesh)
    placed = parallel.place(tree, shardings)["layer"]["kernel"]
    assert placed.sharding == shardings["layer"]["kernel"]
    np.testing.assert_array_equal(np.asarray(placed), tree["layer"]["kernel"])
    assert {s.data.shape for s in placed.addressable_shards} == {(2, 6)}


# ---------------------------------------------------------------------------------------------
# The default mesh computes exactly what the original one does.
# ---------------------------------------------------------------------------------------------


def test_default_config_mesh_step_is_bit_identical_to_the_original_mesh():
    """The trainer's step (the smoke run of bert_base_6x384, as tests/podscale_test.py runs
    it) on the default config.mesh against the original 1-D data mesh: every parameter and
    metric bit for bit."""
    config = configs.load_experiment(os.path.join(REPO, "experiments/bert_base_6x384.py:smoke"))
    config.batch_size = 16
    outputs = []
    for mesh in (parallel.make_mesh(), None):  # None: config.mesh, the default
        run = train.setup_run(config, mesh=mesh)
        if mesh is None:
            assert dict(run.mesh.shape) == {"slice": 1, "data": 8, "fsdp": 1}
            assert all(s.spec == P() for s in jax.tree.leaves(run.step.state_sharding))
        train_iter, _ = train.make_data(
            config, run.tokenizer, run.teacher_cfg.family, process_index=0, process_count=1
        )
        batch = parallel.to_global(next(train_iter), run.mesh)
        train_iter.close()
        new_state, metrics = run.train_fn(run.state, batch)
        outputs.append(parallel.gather((new_state.params, metrics)))
    assert np.isfinite(outputs[0][1]["loss"])
    jax.tree.map(np.testing.assert_array_equal, outputs[0], outputs[1])
