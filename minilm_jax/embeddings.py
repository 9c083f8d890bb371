"""Sentence embeddings from any of our encoders, and how well two models' embeddings agree.

`encode(model, tokenizer, texts, config)` computes what `SentenceTransformer(path).encode(texts)`
computes for a sentence-transformers folder (`config = config_from_folder(path)`): texts
(prompt prepended, lowercased if the folder says so) tokenised and truncated to the folder's
max length, the encoder's last hidden state pooled (cls / mean / max / ... over real tokens)
and, with a Normalize module, L2-normalised. Any encoder with the call protocol
`model(input_ids, attention_mask) -> .last_hidden_state` works: the teacher, a student, an
untrained student.

The agreement measures (reported at the end of a distillation run, docs/embeddings.md) are
pure NumPy functions of embedding matrices:
  * `similarity_spearman(a, b)`: Spearman correlation between the cosine similarities of every
    pair of texts under model a and under model b (1: the student orders pairs by similarity
    as the teacher does);
  * `retrieval_top1(queries, documents)`: how often query i's most cosine-similar document is
    document i (here the first and second halves of the same paragraphs).
`agreement_report` runs both for teacher, student and (optionally) an untrained student.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx
from tokenizers import normalizers

from minilm_jax import hf
from minilm_jax.hf.sentence_transformers import (
    POOLING_MODES,
    SentenceEmbeddingConfig,
    read_sentence_transformers,
)
from minilm_jax.hf.tokenizer import prepared_tokenizer

__all__ = [
    "POOLING_MODES",
    "SentenceEmbeddingConfig",
    "agreement_report",
    "config_from_folder",
    "encode",
    "l2_normalize",
    "load_folder",
    "pairwise_cosines",
    "pool",
    "retrieval_top1",
    "similarity_spearman",
    "spearman",
    "split_halves",
]

# Sequence lengths are padded up to a power of two (from this minimum) so a stream of texts of
# every length compiles a handful of programs, not one per length.
_MIN_BUCKET = 16


def config_from_folder(path) -> SentenceEmbeddingConfig:
    """The pooling, normalisation, max length, lowercasing and prompts of a sentence-transformers
    folder; a plain checkpoint folder gets mean pooling without normalisation or max length."""
    config = read_sentence_transformers(hf.check_folder(path))
    return SentenceEmbeddingConfig() if config is None else config


def load_folder(path, dtype=jnp.float32):
    """(model, tokenizer, config) of a checkpoint folder, ready for `encode`:
    `hf.load_pretrained`, `hf.load_tokenizer` and `config_from_folder`."""
    config = config_from_folder(path)
    _, model = hf.load_pretrained(path, dtype=dtype)
    return model, hf.load_tokenizer(path), config


# ---------------------------------------------------------------------------------------------
# Pooling (pure JAX, as sentence-transformers 6.2's Pooling and Normalize modules)
# ---------------------------------------------------------------------------------------------


def pool(
    hidden: jax.Array,
    attention_mask: jax.Array,
    modes: Sequence[str] = ("mean",),
    *,
    prompt_length: int | jax.Array = 0,
) -> jax.Array:
    """Sentence vectors [B, len(modes) * D] from token states `hidden` [B, T, D].

    `attention_mask` [B, T] is 1 for real tokens. The first `prompt_length` real tokens of each
    row (a prompt that must not be pooled) are excluded. Modes are concatenated in order:
    "cls" the first pooled token, "mean", "mean_sqrt_len_tokens" (sum / sqrt(count)), "max",
    "weightedmean" (token t of a row weighted t, counting from 1 at its first real token),
    "lasttoken" the last pooled token. A row with nothing to pool gives 0 (mean modes) or -inf
    (max), as in sentence-transformers.
    """
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise ValueError(f"pooling modes {list(modes)}: each must be one of {POOLING_MODES}")
    hidden = jnp.asarray(hidden)
    real = jnp.asarray(attention_mask).astype(bool)
    positions = jnp.arange(hidden.shape[1])
    first_real = jnp.argmax(real, axis=1)  # > 0 only with left padding
    pooled = real & (positions[None, :] >= (first_real + prompt_length)[:, None])
    weights = pooled.astype(hidden.dtype)[..., None]
    rows = jnp.arange(hidden.shape[0])

    def clamp(x):
        return jnp.maximum(x, 1e-9)

    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[rows, jnp.argmax(pooled, axis=1)])
        elif mode == "max":
            out.append(jnp.max(jnp.where(weights > 0, hidden, -jnp.inf), axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total, count = jnp.sum(hidden * weights, axis=1), clamp(jnp.sum(weights, axis=1))
            out.append(total / (count if mode == "mean" else jnp.sqrt(count)))
        elif mode == "weightedmean":
            w = weights * (positions[None, :, None] + 1 - first_real[:, None, None])
            out.append(jnp.sum(hidden * w, axis=1) / clamp(jnp.sum(w, axis=1)))
        else:  # lasttoken (index 0 of a row with nothing pooled, which is then zeroed)
            last = hidden.shape[1] - 1 - jnp.argmax(pooled[:, ::-1], axis=1)
            last = jnp.where(jnp.any(pooled, axis=1), last, 0)
            out.append(hidden[rows, last] * weights[rows, last])
    return jnp.concatenate(out, axis=-1)


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / max(||x||, 1e-12) over the last axis (torch.nn.functional.normalize)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, 1e-12)


@functools.partial(jax.jit, static_argnames=("graphdef", "modes", "normalize"))
def _embed_batch(graphdef, state, input_ids, attention_mask, prompt_length, *, modes, normalize):
    model = nnx.merge(graphdef, state)
    hidden = model(input_ids, attention_mask).last_hidden_state.astype(jnp.float32)
    pooled = pool(hidden, attention_mask, modes, prompt_length=prompt_length)
    return l2_normalize(pooled) if normalize else pooled


# ---------------------------------------------------------------------------------------------
# Text -> embeddings
# ---------------------------------------------------------------------------------------------


def _has_lowercase(normalizer) -> bool:
    if isinstance(normalizer, normalizers.Lowercase):
        return True
    return isinstance(normalizer, normalizers.Sequence) and any(
        isinstance(n, normalizers.Lowercase) for n in normalizer
    )


def sentence_tokenizer(
    tokenizer: tokenizers.Tokenizer, config: SentenceEmbeddingConfig, max_length: int | None
) -> tokenizers.Tokenizer:
    """A copy of `tokenizer` (the caller's is not changed) that truncates to `max_length` and,
    if `config.do_lower_case`, lowercases first unless its normalizer already does (what
    sentence-transformers' Transformer module does to the tokenizer)."""
    tok = prepared_tokenizer(tokenizer, max_length=max_length)
    if config.do_lower_case and not _has_lowercase(tok.normalizer):
        existing = tok.normalizer
        if existing is None:
            chain = []
        elif isinstance(existing, normalizers.Sequence):
            chain = list(existing)
        else:
            chain = [existing]
        tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), *chain])
    return tok


def _model_max_length(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_sequence_length", None)


def _prompt_length(tok: tokenizers.Tokenizer, prompt: str) -> int:
    """Tokens of the prompt at the start of each text: its encoding without the closing special
    token ([SEP], </s>), as sentence-transformers measures it."""
    encoding = tok.encode(prompt)
    n = len(encoding.ids)
    return n - 1 if n and encoding.special_tokens_mask[-1] else n


def encode(
    model,
    tokenizer: tokenizers.Tokenizer,
    texts: Sequence[str],
    config: SentenceEmbeddingConfig | None = None,
    *,
    prompt: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Sentence embeddings [len(texts), D'] (float32 NumPy) of `texts` under `model`.

    Args:
      model: an encoder with the call protocol (`model(ids, mask).last_hidden_state`).
      tokenizer: its tokenizer (`hf.load_tokenizer(folder)`); not modified.
      config: pooling, normalisation, max length, lowercasing, prompts
        (`config_from_folder(path)`); default: mean pooling, no normalisation, texts truncated
        only to the model's positions.
      prompt: text prepended to every input; None: the config's default prompt (if any);
        "": none.
      batch_size: texts per forward pass; texts are sorted by length into batches, and
        lengths (and the row count of a last, smaller batch) are padded to powers of two, so
        few programs compile.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    config = SentenceEmbeddingConfig() if config is None else config
    limits = [n for n in (config.max_seq_length, _model_max_length(model)) if n is not None]
    max_length = min(limits) if limits else None
    tok = sentence_tokenizer(tokenizer, config, max_length)
    prompt = config.default_prompt if prompt is None else prompt
    prompt_length = 0
    if prompt:
        texts = [prompt + text for text in texts]
        if not config.include_prompt:
            prompt_length = _prompt_length(tok, prompt)
    encodings = tok.encode_batch(texts)
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", 0) or 0
    graphdef, state = nnx.split(model)
    out = np.zeros((len(texts), 0), np.float32)
    order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        longest = max(len(encodings[i].ids) for i in rows)
        length = max(_MIN_BUCKET, 1 << (longest - 1).bit_length())
        if max_length is not None:
            length = max(min(length, max_length), longest)
        num_rows = min(batch_size, 1 << (len(rows) - 1).bit_length())  # a last, small batch
        ids = np.full((num_rows, length), pad_id, np.int32)
        mask = np.zeros((num_rows, length), np.int32)  # rows past the texts: ignored
        for row, i in enumerate(rows):
            n = len(encodings[i].ids)
            ids[row, :n], mask[row, :n] = encodings[i].ids, 1
        vectors = np.asarray(
            _embed_batch(
                graphdef,
                state,
                ids,
                mask,
                jnp.int32(prompt_length),
                modes=config.pooling,
                normalize=config.normalize,
            )
        )
        if out.shape[1] == 0:
            out = np.zeros((len(texts), vectors.shape[1]), np.float32)
        out[rows] = vectors[: len(rows)]
    return out


# ---------------------------------------------------------------------------------------------
# Agreement between two models' embeddings (NumPy in, NumPy out)
# ---------------------------------------------------------------------------------------------


def _unit_rows(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a [texts, dimension] matrix, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pairwise_cosines(embeddings) -> np.ndarray:
    """Cosine similarity of every pair (i < j) of rows, in row-major order: [N (N - 1) / 2]."""
    unit = _unit_rows(embeddings)
    i, j = np.triu_indices(len(unit), k=1)
    return np.einsum("nd,nd->n", unit[i], unit[j])


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # the last (1-based) rank of each distinct value
    return (ends - (counts - 1) / 2.0)[inverse]


def spearman(x, y) -> float:
    """Spearman rank correlation of two equally long vectors (Pearson correlation of their
    average ranks); NaN if either is constant."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(
            f"spearman needs two vectors of the same length >= 2, got {x.shape}, {y.shape}"
        )
    rx, ry = _average_ranks(x) - (x.size + 1) / 2.0, _average_ranks(y) - (y.size + 1) / 2.0
    denominator = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    return float(np.sum(rx * ry) / denominator) if denominator > 0 else float("nan")


def similarity_spearman(a, b) -> float:
    """Spearman correlation between the pairwise cosine similarities of the same N texts
    embedded by two models (`a`, `b`: [N, D_a], [N, D_b]; the widths may differ)."""
    if len(a) != len(b):
        raise ValueError(f"the two embedding matrices have {len(a)} and {len(b)} rows")
    if len(a) < 3:
        raise ValueError("similarity_spearman needs at least 3 texts (3 pairs)")
    return spearman(pairwise_cosines(a), pairwise_cosines(b))


def retrieval_top1(queries, documents) -> float:
    """Fraction of queries i whose most cosine-similar document is document i (ties go to the
    lowest index)."""
    q, d = _unit_rows(queries), _unit_rows(documents)
    if q.shape[0] != d.shape[0]:
        raise ValueError(f"{q.shape[0]} queries but {d.shape[0]} documents")
    best = np.argmax(q @ d.T, axis=1)
    return float(np.mean(best == np.arange(len(q))))


def split_halves(paragraphs: Sequence[str]) -> tuple[list[str], list[str], list[int]]:
    """(first halves, second halves, indices of the paragraphs used): each paragraph of at
    least 2 words split at its middle word (the second half gets the odd word)."""
    firsts, seconds, used = [], [], []
    for i, paragraph in enumerate(paragraphs):
        words = paragraph.split()
        if len(words) >= 2:
            firsts.append(" ".join(words[: len(words) // 2]))
            seconds.append(" ".join(words[len(words) // 2 :]))
            used.append(i)
    return firsts, seconds, used


def agreement_report(
    teacher,
    student,
    tokenizer: tokenizers.Tokenizer,
    paragraphs: Sequence[str],
    *,
    untrained=None,
    config: SentenceEmbeddingConfig | None = None,
    batch_size: int = 32,
) -> dict:
    """How well the student's sentence embeddings agree with the teacher's on `paragraphs`.

    Paragraphs with fewer than 2 words are skipped (at least 3 must remain). Returns
    {"num_paragraphs", "pooling", "normalize",
     "similarity_spearman": {"student": ..., "untrained": ...}  (vs the teacher's, on whole
         paragraphs),
     "retrieval_top1": {"teacher": ..., "student": ..., "untrained": ...}  (each model finds a
         paragraph's second half from its first half among all second halves)};
    "untrained" entries only when `untrained` (e.g. the student at initialisation) is given.
    """
    config = SentenceEmbeddingConfig() if config is None else config
    firsts, seconds, used = split_halves(paragraphs)
    if len(used) < 3:
        raise ValueError(
            f"agreement_report needs at least 3 paragraphs of 2 or more words; got {len(used)} "
            f"of {len(paragraphs)}"
        )
    texts = [paragraphs[i] for i in used]
    models = {"teacher": teacher, "student": student}
    if untrained is not None:
        models["untrained"] = untrained
    spearmans, retrieval = {}, {}
    teacher_whole = None
    for name, model in models.items():
        whole, first, second = (
            encode(model, tokenizer, x, config, batch_size=batch_size)
            for x in (texts, firsts, seconds)
        )
        if name == "teacher":
            teacher_whole = whole
        else:
            spearmans[name] = similarity_spearman(teacher_whole, whole)
        retrieval[name] = retrieval_top1(first, second)
    return {
        "num_paragraphs": len(used),
        "pooling": list(config.pooling),
        "normalize": config.normalize,
        "similarity_spearman": spearmans,
        "retrieval_top1": retrieval,
    }
