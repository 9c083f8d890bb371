"""The tests' one independent reference for relations and their KL losses, in float64 NumPy.

Written from docs/method.md ("The method") with plain loops over sequences and relation
heads. Padding is handled by deleting the padded tokens of each sequence (not by masking),
so none of the library's masking code is mirrored here. Inputs are ``(q, k, v)`` triples of
``[B, T, D]`` arrays (any array type) and a ``[B, T]`` mask, nonzero for real tokens.
"""

import math

import numpy as np


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_rows(teacher_logits, student_logits):
    """KL(softmax(teacher) || softmax(student)) of each row."""
    log_t, log_s = log_softmax(teacher_logits), log_softmax(student_logits)
    return np.sum(np.exp(log_t) * (log_t - log_s), axis=-1)


def dot_scores(x, y):
    """The MiniLMv2 relation logits of one head: ``x y^T / sqrt(d)``."""
    return x @ y.T / math.sqrt(x.shape[-1])


def cosine_scores(temperature):
    """Logits of a cosine-similarity relation (a user relation in the notebooks)."""

    def scores(x, y):
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        y = y / np.linalg.norm(y, axis=-1, keepdims=True)
        return x @ y.T / temperature

    return scores


def head_logits(x, y, head, num_heads, scores=dot_scores):
    """Relation logits of relation head ``head`` for one sequence's ``x``, ``y`` (``[n, D]``)."""
    d = x.shape[-1] // num_heads
    return scores(x[:, head * d : (head + 1) * d], y[:, head * d : (head + 1) * d])


def relation_probabilities(qkv, mask, pair, num_heads):
    """``[B, R, T, T]`` relation of each head: rows of real query tokens are distributions
    over the real keys (padded keys 0); rows of padded query tokens are NaN (undefined)."""
    mask = np.asarray(mask)
    batch, length = mask.shape
    qkv = _float64(qkv)
    out = np.full((batch, num_heads, length, length), np.nan)
    for b in range(batch):
        tokens = np.flatnonzero(mask[b])
        x, y = _pair_vectors(qkv, b, tokens, pair)
        for a in range(num_heads):
            out[b, a][tokens] = 0.0
            out[b, a][np.ix_(tokens, tokens)] = np.exp(log_softmax(head_logits(x, y, a, num_heads)))
    return out


def head_kl(teacher_qkv, student_qkv, mask, pair, num_heads, scores=dot_scores):
    """``[R]``: KL(teacher || student) of each relation head, each sequence averaged over its
    real query tokens, then the sequences with equal weight (sequences without tokens left
    out; all zeros when no sequence has a token)."""
    mask = np.asarray(mask)
    teacher_qkv, student_qkv = _float64(teacher_qkv), _float64(student_qkv)
    per_head = np.zeros(num_heads)
    sequences = 0
    for b in range(mask.shape[0]):
        tokens = np.flatnonzero(mask[b])
        if tokens.size == 0:
            continue
        sequences += 1
        teacher = _pair_vectors(teacher_qkv, b, tokens, pair)
        student = _pair_vectors(student_qkv, b, tokens, pair)
        for a in range(num_heads):
            per_head[a] += kl_rows(
                head_logits(*teacher, a, num_heads, scores),
                head_logits(*student, a, num_heads, scores),
            ).mean()
    return per_head / max(sequences, 1)


def relation_loss(teacher_qkv, student_qkv, mask, pair, num_heads, scores=dot_scores):
    """The loss of one pair (docs/method.md): ``1/(R n_b) sum_a sum_t KL`` per sequence,
    averaged over the sequences that have tokens (0.0 if none has)."""
    return float(head_kl(teacher_qkv, student_qkv, mask, pair, num_heads, scores).mean())


def _float64(qkv):
    """float64 NumPy copies; None entries (vectors a relation does not read) stay None."""
    return tuple(None if a is None else np.asarray(a, np.float64) for a in qkv)


def _pair_vectors(qkv, b, tokens, pair):
    """The pair's X and Y of sequence ``b``, its real ``tokens`` only (padding deleted)."""
    return tuple(qkv["qkv".index(kind)][b][tokens] for kind in pair)
