"""The path layer (minilm_jax.paths) on a URL scheme that needs no network: fsspec's
``memory://``. What a pod keeps on ``gs://`` (the corpus, metrics, TensorBoard files, the
exported student) goes through the same code; Orbax and TFDS get their URLs unchanged."""

import os
import uuid

import fsspec
import jax
import numpy as np
import pytest
from flax import nnx

from minilm_jax import data, hf, metrics, parallel, paths, tiny, train
from minilm_jax.data import sources

PARAGRAPHS = {
    "a.txt": "First document,\nwrapped.\n\nSecond one.\n",
    "b.txt": "\n\nThird document\nin b.\n",
}


@pytest.fixture
def root():
    """A fresh memory:// folder."""
    url = f"memory://minilm_test_{uuid.uuid4().hex}"
    yield url
    fsspec.filesystem("memory").rm(url, recursive=True)


def _write(url: str, text: str) -> None:
    with paths.open(url, "w", encoding="utf-8") as f:
        f.write(text)


def test_text_corpus_globs_and_documents_from_a_url(root, tmp_path):
    for name, text in PARAGRAPHS.items():
        _write(f"{root}/corpus/{name}", text)
        (tmp_path / name).write_text(text, encoding="utf-8")
    _write(f"{root}/corpus/notes.md", "not matched\n")
    files = data.expand_globs(f"{root}/corpus/*.txt")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a.txt", "b.txt"]
    assert all(paths.is_url(f) for f in files)
    remote = sources.TextFileDocuments(files, "paragraph")
    local = sources.TextFileDocuments(sorted(str(p) for p in tmp_path.glob("*.txt")), "paragraph")
    assert (
        list(remote)
        == list(local)
        == [
            "First document, wrapped.",
            "Second one.",
            "Third document in b.",
        ]
    )
    with pytest.raises(FileNotFoundError, match=r"memory://.*/corpus/\*\.json.*matched no files"):
        data.expand_globs(f"{root}/corpus/*.json")


def test_metrics_and_tensorboard_files_on_a_url(root):
    run = f"{root}/run"
    writer = metrics.MetricWriter(run, enabled=True)
    for step in (1, 2, 3):
        writer.write(step, {"loss": 1.0 / step}, kind="train")
    writer.close()
    jsonl = paths.join(run, "metrics.jsonl")
    assert [r["step"] for r in metrics.read_jsonl(jsonl)] == [1, 2, 3]
    events = paths.glob(f"{run}/tensorboard/events.out.tfevents.*")
    assert len(events) == 1 and paths.size(events[0]) > 0
    # A resumed run drops the records after its checkpoint, then appends.
    writer = metrics.MetricWriter(run, enabled=True, resume_step=1)
    writer.write(2, {"loss": 0.4}, kind="train")
    writer.close()
    assert [(r["step"], r["loss"]) for r in metrics.read_jsonl(jsonl)] == [(1, 1.0), (2, 0.4)]


def test_exported_student_and_config_on_a_url(root, tmp_path):
    folder = tiny.smoke_model("bert", tiny.SMOKE_STUDENT)
    config, model = hf.load_pretrained(folder)
    graphdef, params = nnx.split(model, nnx.Param)
    path = train.export_student(parallel.gather(params), graphdef, config, folder, f"{root}/run")
    assert path == f"{root}/run/hf_student"
    local = tmp_path / "downloaded"
    local.mkdir()
    for url in paths.glob(f"{path}/*"):
        with paths.open(url, "rb") as src:
            (local / url.rsplit("/", 1)[-1]).write_bytes(src.read())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(local))
    _, reloaded = hf.load_pretrained(str(local))
    for a, b in zip(jax.tree.leaves(nnx.state(reloaded, nnx.Param)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_urls_reach_orbax_and_tfds_unchanged(monkeypatch):
    # Orbax (checkpoints) and TFDS (data_dir) read gs:// themselves: no local mangling.
    assert paths.resolve("gs://bucket/run/checkpoints") == "gs://bucket/run/checkpoints"
    assert paths.resolve("~/run") == os.path.join(os.path.expanduser("~"), "run")
    seen = {}

    def data_source(name, *, split, data_dir, download):
        seen.update(name=name, data_dir=data_dir, download=download)
        raise RuntimeError("stop here")

    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds, "data_source", data_source)
    with pytest.raises(ValueError, match="data_dir='gs://bucket/tfds'"):
        sources.TfdsDocuments("wikipedia/20230601.en:text", data_dir="gs://bucket/tfds")
    assert seen == {
        "name": "wikipedia/20230601.en",
        "data_dir": "gs://bucket/tfds",
        "download": False,
    }


def test_a_url_workdir_is_claimed_config_checked_and_never_a_model_folder(root):
    """The run directory's guarantees through the path layer (no lock on object stores)."""
    from minilm_jax import rundir

    single = {"process_index": 0, "process_count": 1, "allow_url": True}
    workdir = paths.join(root, "run")
    with rundir.claim(workdir, {"seed": 0, "total_steps": 10}, kind="distill", **single) as run:
        assert not run.resumed
    assert paths.isfile(paths.join(workdir, rundir.MARKER_FILE))
    _write(paths.join(workdir, "checkpoints", "10", "state"), "x")  # a result: the run has begun
    longer = {"seed": 0, "total_steps": 20}  # a safe change: resumes
    with rundir.claim(workdir, longer, kind="distill", **single) as run:
        assert run.resumed and run.changed == {"total_steps": [10, 20]}
    with pytest.raises(rundir.RunDirError, match=r"seed.*0 -> 1"):
        rundir.claim(workdir, {"seed": 1, "total_steps": 20}, kind="distill", **single).__enter__()
    with pytest.raises(rundir.RunDirError, match="a finetune run needs its own"):
        rundir.claim(workdir, longer, kind="finetune", **single).__enter__()
    model = paths.join(root, "model")
    _write(paths.join(model, "config.json"), "{}")
    with pytest.raises(rundir.RunDirError, match=r"not a minilm_jax run directory.*config\.json"):
        rundir.claim(model, longer, kind="distill", **single).__enter__()
    with paths.open(paths.join(model, "config.json"), encoding="utf-8") as f:
        assert f.read() == "{}"  # nothing written into the model folder
    with pytest.raises(rundir.RunDirError, match="only distillation .* takes a URL workdir"):
        rundir.claim(paths.join(root, "ft"), {"seed": 0}, kind="finetune").__enter__()
