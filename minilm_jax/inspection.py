"""Looking inside a distillation: one sentence's relations per relation head, and how far the
student is from the teacher on each head. Used by ``notebooks/inspect_relations.ipynb``.

``plots.py`` draws the run-level pictures (loss curves, relations averaged over heads); this
module keeps the relation heads apart, because a mean over heads hides the heads the student
has not learnt yet. Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global
figure state), so they work under any backend; a notebook displays a returned figure.

Named ``inspection`` rather than ``inspect`` so that no script run from inside the package
folder can shadow the standard library's ``inspect`` module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from matplotlib.figure import Figure

from minilm_jax import data, relations

QKV = relations.QKV


def encode_texts(
    tokenizer, family: str, texts: Sequence[str], *, max_tokens: int | None = None
) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    """Texts -> a model batch and each text's token strings.

    Each text becomes ``[CLS] text [SEP]`` (the family's start and separator tokens, exactly
    as the training data is built), cut to ``max_tokens`` tokens in all, right-padded to the
    longest. Returns ``({"input_ids", "attention_mask", "token_type_ids"}: int32 [N, T],
    tokens)``; ``tokens[i]`` lists text i's real tokens, special tokens included.
    """
    if isinstance(texts, str) or not texts:
        raise ValueError(f"texts must be a non-empty sequence of strings, got {texts!r}")
    if max_tokens is not None and max_tokens < 3:
        raise ValueError(f"max_tokens={max_tokens!r} must be at least 3 ([CLS], a token, [SEP])")
    special = data.special_token_ids(tokenizer, family)
    to_ids = data.DocumentTokenizer(tokenizer)
    contents = [to_ids(text) for text in texts]
    if max_tokens is not None:
        contents = [c[: max_tokens - 2] for c in contents]
    length = max(len(c) for c in contents) + 2
    rows = [data.make_sequence(c, special, length) for c in contents]
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    tokens = [
        [
            tokenizer.id_to_token(int(i)) or "?"
            for i, m in zip(row["input_ids"], row["attention_mask"])
            if m
        ]
        for row in rows
    ]
    return batch, tokens


def relation_maps(
    qkv: QKV, attention_mask: jax.Array, pairs: Sequence[str], num_relation_heads: int
) -> dict[str, np.ndarray]:
    """``{pair: softmax(X_r Y_r^T / sqrt(d_r))}``, float32 ``[B, R, T, T]`` per pair name."""
    for pair in pairs:
        relations.pair_indices(pair)  # every name checked before any work
    return {
        pair: np.asarray(
            relations.relation_probabilities(qkv, attention_mask, pair, num_relation_heads)
        )
        for pair in pairs
    }


def per_head_kl(
    teacher_qkv: QKV,
    student_qkv: QKV,
    attention_mask: jax.Array,
    pair: str,
    num_relation_heads: int,
) -> jax.Array:
    """KL(teacher || student) of the pair's relation, one value per relation head: ``[R]``.

    Each head is averaged like the training loss (valid query rows of each sequence, then the
    sequences with equal weight), so the mean over heads is exactly the pair's term of
    ``relations.minilmv2_loss``.
    """
    ix, iy = relations.pair_indices(pair)
    t_logits = relations.relation_logits(
        teacher_qkv[ix], teacher_qkv[iy], attention_mask, num_relation_heads
    )
    s_logits = relations.relation_logits(
        student_qkv[ix], student_qkv[iy], attention_mask, num_relation_heads
    )
    # One head at a time is the one-head case of relation_kl: [B, 1, T, T] per head.
    return jax.vmap(
        lambda t, s: relations.relation_kl(t[:, None], s[:, None], attention_mask), in_axes=1
    )(t_logits, s_logits)


def format_kl_table(kl_by_pair: Mapping[str, Sequence[float]]) -> str:
    """A text table: one row per relation head, one column per pair, and a mean row."""
    pairs = list(kl_by_pair)
    columns = [np.asarray(kl_by_pair[p], np.float64) for p in pairs]
    lines = ["head " + "".join(f"{p.upper():>10}" for p in pairs)]
    for head in range(len(columns[0])):
        lines.append(f"{head:>4} " + "".join(f"{c[head]:>10.4f}" for c in columns))
    lines.append("mean " + "".join(f"{c.mean():>10.4f}" for c in columns))
    return "\n".join(lines)


def plot_relation_heads(
    top: np.ndarray,
    bottom: np.ndarray,
    tokens: Sequence[str],
    *,
    heads: Sequence[int],
    labels: tuple[str, str] = ("teacher", "student"),
    kl: Sequence[float] | None = None,
    title: str = "relation",
) -> Figure:
    """Two relations of one sentence, one column per relation head in ``heads``: ``top``
    (e.g. the teacher's) above ``bottom`` (e.g. the student's), both ``[R, T, T]``. Only the
    first ``len(tokens)`` rows and columns (the real tokens) are drawn. ``kl`` (``[R]``, e.g.
    from ``per_head_kl``) goes into the bottom titles. Both rows of a column share one colour
    scale, so a blurred student head looks paler than its teacher."""
    n = len(tokens)
    heads = list(heads)
    num_heads = top.shape[0]
    if top.shape[0] != bottom.shape[0]:
        raise ValueError(f"top has {top.shape[0]} relation heads but bottom has {bottom.shape[0]}")
    bad = [h for h in heads if not 0 <= h < num_heads]
    if bad or not heads:
        raise ValueError(f"heads={heads!r}: need relation head indices in 0..{num_heads - 1}")
    fig = Figure(figsize=(3.2 * len(heads) + 0.6, 6.6), layout="constrained")
    axes = fig.subplots(2, len(heads), squeeze=False)
    for col, head in enumerate(heads):
        t = np.asarray(top[head])[:n, :n]
        s = np.asarray(bottom[head])[:n, :n]
        vmax = max(float(t.max()), float(s.max()), 1e-6)
        for row, (label, m) in enumerate(zip(labels, (t, s))):
            ax = axes[row, col]
            im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=vmax)
            subtitle = f"{label}, head {head}"
            if row == 1 and kl is not None:
                subtitle += f"\nKL {float(kl[head]):.3f}"
            ax.set_title(subtitle, fontsize=9)
            ax.set_xticks(range(n), tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(n), tokens if col == 0 else [""] * n, fontsize=7)
        fig.colorbar(im, ax=axes[:, col], fraction=0.05, shrink=0.6)
    fig.suptitle(f"{title} per relation head (rows: query tokens, columns: key tokens)")
    return fig


def plot_head_kl(kl_by_pair: Mapping[str, Sequence[float]]) -> Figure:
    """Grouped bars: KL(teacher || student) per relation head, one colour per pair."""
    pairs = list(kl_by_pair)
    num_heads = len(kl_by_pair[pairs[0]])
    width = 0.8 / len(pairs)
    fig = Figure(
        figsize=(min(max(6.0, 0.3 * num_heads * len(pairs)), 14.0), 3.6), layout="constrained"
    )
    ax = fig.subplots()
    for i, pair in enumerate(pairs):
        values = np.asarray(kl_by_pair[pair], np.float64)
        ax.bar(
            np.arange(num_heads) + (i - (len(pairs) - 1) / 2) * width,
            values,
            width,
            label=f"{pair.upper()} (mean {values.mean():.3f})",
        )
    ax.set_xticks(range(num_heads))
    ax.set_xlabel("relation head")
    ax.set_ylabel("KL(teacher || student)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
