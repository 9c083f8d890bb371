"""Distilling from every new family (ModernBERT, DeBERTa-v3, XLM-R XL): the tiny smoke models
and their tokenizers (deterministic across processes), the new teachers' experiment settings,
a smoke distillation of each family's experiment file through the command line (`main.main`,
in this process) whose exported student transformers loads with our outputs, a ModernBERT
teacher -> BERT student, students that continue from a checkpoint (refused, by the command in
a process of its own, in one line naming both folders, when its tokenizer is not the
teacher's), and students initialised from teacher layers (they compute what the teacher
computes, or are refused)."""

import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tokenizers
import torch
import transformers
from flax import nnx

from family_fixtures import forward, real_max_diff
from minilm_jax import configs, hf, main, tiny, train
from minilm_jax.data import packing
from minilm_jax.models import build_model, student_config
from minilm_jax.models.modernbert import ModernBertConfig

from conftest import TEST_XLA_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_FAMILIES = ("modernbert", "deberta-v2", "xlm-roberta-xl")
# Texts for comparing our exported students with transformers': 3 to 47 tokens with the smoke
# tokenizers, longer than the smoke ModernBERT's window and DeBERTa's relative buckets.
TEXTS = (
    "Return the number of items in a container.",
    "The quick brown fox jumps over the lazy dog, twice; then it rests.",
    "a",
)
TOL = 1e-5


def experiment(name: str) -> str:
    return os.path.join(REPO, "experiments", name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """`--config.*` overrides that make a smoke run read a small text file instead of the
    Python-docs corpus, which takes seconds to parse in each new process."""
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    paragraphs = [
        f"Paragraph {i}: the student reads the teacher's token ids and learns how its queries, "
        f"keys and values relate; run {i} of the smoke test repeats it {i % 7} times."
        for i in range(40)
    ]
    path.write_text("\n\n".join(paragraphs) + "\n")
    return [
        "--config.data.python_docs=False",
        f"--config.data.text_files={path}",
        "--config.data.eval_every_kth_document=10",
    ]


def run_cli(spec: str, workdir, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m minilm_jax.main --config SPEC --workdir WORKDIR OVERRIDES...` in a process of
    its own (the test's XLA flags, device count and compilation cache come through the
    environment)."""
    return subprocess.run(
        [sys.executable, "-m", "minilm_jax.main", "--config", spec, "--workdir", str(workdir)]
        + list(overrides),
        cwd=REPO,
        env={**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", TEST_XLA_FLAGS)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def quiet_cli_restored():
    """`cli.run` sets library log levels for its process; put them back for later tests."""
    from absl import logging as absl_logging

    root, absl_level = logging.getLogger().level, absl_logging.get_verbosity()
    yield
    logging.getLogger().setLevel(root)
    absl_logging.set_verbosity(absl_level)


def run_cli_here(*argv: str) -> int:
    """The command line `python -m minilm_jax.main ARGV` run in this process (compiled
    programs and the loaded corpus are shared with the other tests); returns the exit code."""
    with pytest.raises(SystemExit) as exit_info:
        main.main(list(argv))
    return exit_info.value.code


def batch_of(tokenizer, pad_id: int):
    """(input_ids, attention_mask) of TEXTS, right-padded with `pad_id`."""
    rows = [tokenizer.encode(t).ids for t in TEXTS]
    length = max(map(len, rows))
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask


def transformers_difference(folder) -> float:
    """Max |ours - transformers'| of every hidden state of the exported model in `folder` on
    TEXTS (real tokens only): our import of it against `transformers.AutoModel`."""
    config, ours = hf.load_pretrained(folder)
    ids, mask = batch_of(hf.load_tokenizer(folder), config.pad_token_id)
    theirs = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = theirs(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            output_hidden_states=True,
        )
    mine = forward(ours, ids, mask).hidden_states
    assert len(mine) == len(out.hidden_states)
    return max(real_max_diff(a, b.double().numpy(), mask) for a, b in zip(mine, out.hidden_states))


# --------------------------------------------------------------------------- tiny models


CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "a b c d e f g h: ties everywhere, tie after tie, the end",
    "Return the number of items in a container. Raise TypeError otherwise!",
    "naïve café 東京 déjà vu -- 3.14159 == pi",
] * 3
FINGERPRINT = """
import hashlib, json, sys
from minilm_jax import tiny
texts = json.load(sys.stdin)
print(json.dumps({f: hashlib.sha256(tiny.train_tokenizer(f, texts, 200).to_str().encode())
                  .hexdigest() for f in tiny.FAMILIES}))
"""


def test_tiny_tokenizers_are_the_same_in_every_process():
    """tokenizers' WordPiece and Unigram trainers break ties in hash order, which changes from
    process to process; tiny's tokenizers of every family must not."""
    here = {
        f: hashlib.sha256(tiny.train_tokenizer(f, CORPUS, 200).to_str().encode()).hexdigest()
        for f in tiny.FAMILIES
    }
    other = subprocess.run(
        [sys.executable, "-c", FINGERPRINT],
        input=json.dumps(CORPUS),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 0, other.stderr[-2000:]
    assert json.loads(other.stdout.splitlines()[-1]) == here
    assert set(here) == {"bert", "roberta", "xlm-roberta", *NEW_FAMILIES}


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_smoke_model_of_each_new_family(family):
    path = tiny.smoke_model(family)
    config, tok = hf.load_config(path), hf.load_tokenizer(path)
    assert (config.family, config.num_layers, config.hidden_size) == (family, 4, 64)
    special = packing.special_token_ids(tok, family)
    assert config.pad_token_id == special.pad_id
    ids = tok.encode("Return the number of items.").ids
    assert (ids[0], ids[-1]) == (special.cls_id, special.sep_id)
    smoke_len = configs.apply_smoke(configs.base_config(), family).max_len
    if family == "modernbert":
        # Specials after the vocabulary and an embedding table larger than the tokenizer, as
        # ModernBERT's; a window shorter than the smoke sequences, so local layers matter.
        names = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
        n = tok.get_vocab_size()
        assert [tok.token_to_id(t) for t in names] == list(range(n - 5, n))
        assert config.vocab_size > n
        assert config.local_attention // 2 < smoke_len
        assert "sliding_attention" in config.layer_types
    elif family == "deberta-v2":
        names = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
        assert [tok.token_to_id(t) for t in names] == [0, 1, 2, 3]
        assert tok.token_to_id("[MASK]") == tok.get_vocab_size() - 1 < config.vocab_size
        assert config.position_buckets // 2 < smoke_len  # log buckets reached
        assert tok.encode("a", "b").type_ids == [0, 0, 0, 1, 1]
    else:
        assert [tok.token_to_id(t) for t in ["<s>", "<pad>", "</s>"]] == [0, 1, 2]


# --------------------------------------------------------------------------- experiments


@pytest.mark.parametrize(
    "name, teacher, family, layer, heads, spec, student_family",
    [
        ("modernbert_base_6x384.py", "modernbert-base", "modernbert", 19, 48, "6x384", ""),
        ("modernbert_base_bert6x384.py", "modernbert-base", "modernbert", 19, 48, "6x384", "bert"),
        ("deberta_v3_base_6x384.py", "deberta-v3-base", "deberta-v2", 12, 48, "6x384", ""),
        ("xlmr_xl_12x384.py", "xlm-roberta-xl", "xlm-roberta-xl", 28, 64, "12x384", ""),
    ],
)
def test_new_teacher_settings(name, teacher, family, layer, heads, spec, student_family):
    c = configs.load_experiment(experiment(name))
    assert c.teacher.path.endswith(teacher) and configs.TEACHERS[teacher]["family"] == family
    assert (c.teacher.layer, c.distill.num_relation_heads, c.student.spec) == (layer, heads, spec)
    assert c.student.family == student_family and c.student.init == "random"
    for field, value in configs.CORPORA[family].items():
        assert c.data[field] == value
    setting = configs.TEACHERS[teacher]
    assert setting["hidden"] % heads == 0 and int(spec.split("x")[1]) % heads == 0
    if family == "modernbert":  # a global-attention layer (1-based 1, 4, 7, ...)
        assert (layer - 1) % 3 == 0
    smoke = configs.load_experiment(experiment(name) + ":smoke")
    assert hf.load_config(smoke.teacher.path).family == family
    assert smoke.student.family == student_family


# --------------------------------------------------------------------------- distillation


def test_cli_distils_a_modernbert_teacher_into_a_bert_student(tmp_path, corpus, quiet_cli_restored):
    teacher = tiny.smoke_model("modernbert")
    workdir = tmp_path / "run"
    code = run_cli_here(
        "--config", experiment("modernbert_base_bert6x384.py") + ":smoke",
        "--workdir", str(workdir), "--config.total_steps=2", *corpus,
    )  # fmt: skip
    assert code == 0
    student_dir = workdir / "hf_student"
    student, teacher_cfg = hf.load_config(student_dir), hf.load_config(teacher)
    # The student reads the teacher's token ids: its embedding rows and pad id; BERT's own
    # positions, token types and LayerNorm epsilon.
    assert (student.family, student.num_layers, student.hidden_size) == ("bert", 2, 32)
    assert (student.vocab_size, student.pad_token_id) == (
        teacher_cfg.vocab_size,
        teacher_cfg.pad_token_id,
    )
    assert (student.max_position_embeddings, student.type_vocab_size) == (512, 2)
    assert student.layer_norm_eps == 1e-12
    tokenizers_differ = train.tokenizer_difference(
        hf.load_tokenizer(teacher), hf.load_tokenizer(student_dir)
    )
    assert tokenizers_differ is None
    assert type(transformers.AutoModel.from_pretrained(student_dir)).__name__ == "BertModel"
    diff = transformers_difference(student_dir)
    print(f"\nModernBERT -> BERT student vs transformers: {diff:.2e}")
    assert diff < TOL


@pytest.mark.parametrize(
    "name, family, model_class",
    [
        ("modernbert_base_6x384.py", "modernbert", "ModernBertModel"),
        ("deberta_v3_base_6x384.py", "deberta-v2", "DebertaV2Model"),
        ("xlmr_xl_12x384.py", "xlm-roberta-xl", "XLMRobertaXLModel"),
    ],
)
def test_smoke_distillation_of_each_new_family(
    name, family, model_class, tmp_path, corpus, quiet_cli_restored
):
    """The command line (run in this process) distils each family's smoke teacher into a
    student of its family; transformers loads the export with our outputs."""
    workdir = tmp_path / "run"
    code = run_cli_here(
        "--config", experiment(name) + ":smoke", "--workdir", str(workdir),
        "--config.total_steps=2", *corpus,
    )  # fmt: skip
    assert code == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["eval_end"]["loss"] > 0
    student_dir = workdir / "hf_student"
    student = hf.load_config(student_dir)
    assert (student.family, student.num_layers, student.hidden_size) == (family, 2, 32)
    assert type(transformers.AutoModel.from_pretrained(student_dir)).__name__ == model_class
    diff = transformers_difference(student_dir)
    print(f"\n{family} student vs transformers: {diff:.2e}")
    assert diff < TOL


# --------------------------------------------------------------------------- pretrained students


def test_a_pretrained_student_with_another_tokenizer_is_refused(tmp_path):
    """A BERT checkpoint with BERT's tokenizer cannot continue as the student of a ModernBERT
    teacher: exit 2, one line naming both folders, nothing written."""
    teacher, other = tiny.smoke_model("modernbert"), tiny.smoke_model("bert")
    workdir = tmp_path / "run"
    proc = run_cli(
        experiment("modernbert_base_bert6x384.py") + ":smoke",
        workdir,
        "--config.student.init=pretrained",
        f"--config.student.path={other}",
        "--config.student.spec=4x64",
        "--config.student.num_heads=4",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: config.student.path="), errors
    assert f"teacher folder {teacher}" in errors[0] and f"student folder {other}" in errors[0]
    assert "tokenizer is not the teacher's (vocabularies differ" in errors[0]
    assert not workdir.exists()


def pretrained_config(student_dir, **fields):
    c = configs.load_experiment(experiment("modernbert_base_bert6x384.py") + ":smoke")
    c.student.init, c.student.path = "pretrained", str(student_dir)
    c.student.spec, c.student.num_heads = "2x32", 4
    for k, v in fields.items():
        configs.set_fields(c, {k: v})
    return c


def test_a_pretrained_student_continues_from_its_checkpoint(tmp_path):
    """A checkpoint saved with the teacher's tokenizer (here a BERT student of the ModernBERT
    teacher) is accepted and is the student's starting point, with this run's dropout."""
    teacher = tiny.smoke_model("modernbert")
    cfg = student_config("2x32", hf.load_config(teacher), family="bert", num_heads=4)
    saved = build_model(cfg, rngs=nnx.Rngs(7))
    hf.export_student(cfg, saved, teacher, tmp_path / "student")
    config = pretrained_config(tmp_path / "student", **{"student.dropout": 0.05})
    teacher_cfg = train.validate_config(config)
    student_cfg = train.make_student_config(config, teacher_cfg)
    assert student_cfg == cfg.replace(hidden_dropout=0.05, attention_dropout=0.05)
    student = train.init_student(config, student_cfg, None, teacher_cfg)
    ours = dict(nnx.to_flat_state(nnx.state(student, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(saved, nnx.Param)):
        np.testing.assert_array_equal(np.asarray(ours[path][...]), np.asarray(var[...]))
    # Its shape is the checkpoint's: a spec or head count that says otherwise is refused.
    with pytest.raises(
        ValueError, match=r"config\.student\.spec='6x384'.*set student\.spec='2x32'"
    ):
        train.validate_config(pretrained_config(tmp_path / "student", **{"student.spec": "6x384"}))
    with pytest.raises(ValueError, match=r"config\.student\.num_heads=2.*num_heads=4"):
        train.validate_config(pretrained_config(tmp_path / "student", **{"student.num_heads": 2}))
    with pytest.raises(ValueError, match=r"config\.student\.path='': .*set student\.path"):
        train.validate_config(pretrained_config("", **{"student.path": ""}))


def test_tokenizers_are_compared_beyond_their_vocabularies(tmp_path):
    """Same vocabulary, other normalisation (no lower-casing): different token ids, refused."""
    path = tiny.smoke_model("bert")
    tok = hf.load_tokenizer(path)
    assert train.tokenizer_difference(tok, hf.load_tokenizer(path)) is None
    cased = tokenizers.Tokenizer.from_str(tok.to_str())
    cased.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=False)
    assert cased.get_vocab() == tok.get_vocab()
    difference = train.tokenizer_difference(tok, cased)
    assert difference.startswith('they encode ("Hello, World! The quick') and "vs" in difference


# --------------------------------------------------------------------------- students of a family


def test_cross_family_student_config():
    modernbert_base = ModernBertConfig(
        family="modernbert",
        vocab_size=50368,
        hidden_size=768,
        num_layers=22,
        num_heads=12,
        intermediate_size=1152,
        max_position_embeddings=8192,
        pad_token_id=50283,
        bos_token_id=50281,
        eos_token_id=50282,
    )
    bert = student_config("6x384", modernbert_base, family="bert", hidden_dropout=0.1)
    assert (bert.family, bert.num_layers, bert.hidden_size, bert.intermediate_size) == (
        "bert",
        6,
        384,
        1536,
    )
    assert (bert.vocab_size, bert.pad_token_id, bert.bos_token_id) == (50368, 50283, 50281)
    assert (bert.max_position_embeddings, bert.type_vocab_size, bert.layer_norm_eps) == (
        512,
        2,
        1e-12,
    )
    assert (
        student_config("6x384", modernbert_base, family="bert", max_length=2048).max_sequence_length
        == 2048
    )
    same = student_config("6x384", modernbert_base)
    assert (same.family, same.intermediate_size, same.local_attention) == ("modernbert", 576, 128)
    # init='teacher' into a 6 x 768 ModernBERT: layer 0 from layer 0 (no attention LayerNorm),
    # the others from evenly spaced layers of their attention kind.
    wide = student_config("6x768", modernbert_base, intermediate_size=1152)
    assert train.teacher_init_layers(configs.base_config(), modernbert_base, wide) == (
        0, 7, 10, 15, 17, 20,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"needs a teacher of that family"):
        student_config("6x384", hf.load_config(tiny.smoke_model("bert")), family="modernbert")


def test_student_family_must_find_its_special_tokens():
    """A RoBERTa-style student looks up <s>, </s>, <pad>, which a ModernBERT tokenizer lacks."""
    c = configs.load_experiment(experiment("modernbert_base_bert6x384.py") + ":smoke")
    c.student.family = "roberta"
    with pytest.raises(ValueError, match=r"config\.student\.family='roberta'.*allows: \['bert'\]"):
        train.validate_config(c)
    c.student.family = "albert"
    with pytest.raises(ValueError, match=r"config\.student\.family='albert': allowed"):
        train.validate_config(c)
    c.student.family = "deberta-v2"
    with pytest.raises(ValueError, match=r"family='deberta-v2': a deberta-v2 student needs a t"):
        train.validate_config(c)


def teacher_init_config(family, spec="4x64", **fields):
    c = configs.apply_smoke(configs.base_config(), family)
    c.student.spec, c.student.num_heads, c.student.intermediate_size = spec, 4, 128
    c.student.init = "teacher"
    for k, v in fields.items():
        configs.set_fields(c, {k: v})
    return c


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_student_initialised_from_every_teacher_layer_computes_the_teacher(family):
    """init='teacher' with all four layers of the smoke teacher gives a student that computes
    exactly what the teacher does: every parameter outside the layers (DeBERTa's relative
    table, the final norms) is copied too."""
    config = teacher_init_config(family)
    teacher_cfg = train.validate_config(config)
    student_cfg = train.make_student_config(config, teacher_cfg)
    assert train.teacher_init_layers(config, teacher_cfg, student_cfg) == (0, 1, 2, 3)
    _, teacher = hf.load_pretrained(config.teacher.path)
    student = train.init_student(config, student_cfg, teacher, teacher_cfg)
    ids, mask = batch_of(hf.load_tokenizer(config.teacher.path), teacher_cfg.pad_token_id)
    ours, theirs = forward(student, ids, mask), forward(teacher, ids, mask)
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        assert real_max_diff(a, b, mask) == 0.0


def test_modernbert_teacher_layers_follow_its_layer_structure():
    """ModernBERT's layer 0 has no attention LayerNorm and its layers alternate global and
    sliding-window attention: a student layer is copied only from a teacher layer of its
    structure. 4 -> 2 layers: student layer 0 (global, no norm) from teacher layer 0, student
    layer 1 (sliding) from the sliding layer nearest the top (2); other choices are refused."""
    config = teacher_init_config("modernbert", spec="2x64")
    teacher_cfg = train.validate_config(config)
    student_cfg = train.make_student_config(config, teacher_cfg)
    assert student_cfg.layer_types == ("full_attention", "sliding_attention")
    assert train.teacher_init_layers(config, teacher_cfg, student_cfg) == (0, 2)
    _, teacher = hf.load_pretrained(config.teacher.path)
    student = train.init_student(config, student_cfg, teacher, teacher_cfg)
    np.testing.assert_array_equal(
        np.asarray(student.layers[1].attention.query.kernel[...]),
        np.asarray(teacher.layers[2].attention.query.kernel[...]),
    )
    np.testing.assert_array_equal(
        np.asarray(student.final_norm.scale[...]), np.asarray(teacher.final_norm.scale[...])
    )
    with pytest.raises(
        ValueError,
        match=r"config\.student\.init_layers=\(1, 3\): teacher layer 1 cannot initialise student "
        r"layer 0: the teacher layer is sliding_attention, the student layer full_attention and "
        r"parameters only in the teacher layer \['attention\.layer_norm\.scale'\], only in the "
        r"student layer \[\]; .*e\.g\. \(0, 2\)",
    ):
        train.validate_config(
            teacher_init_config("modernbert", "2x64", **{"student.init_layers": (1, 3)})
        )
    with pytest.raises(
        ValueError,
        match=r"teacher layer 3 cannot initialise student layer 1: the teacher layer is "
        r"full_attention, the student layer sliding_attention",
    ):
        train.validate_config(
            teacher_init_config("modernbert", "2x64", **{"student.init_layers": (0, 3)})
        )


def test_teacher_init_needs_the_teachers_family():
    config = teacher_init_config("modernbert", spec="2x64", **{"student.family": "bert"})
    with pytest.raises(ValueError, match=r"config\.student\.init='teacher'.*family 'modernbert'"):
        train.validate_config(config)
