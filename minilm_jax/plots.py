"""Pictures of a run: loss curves from metrics.jsonl, and the teacher's vs the student's
relation matrices for one sentence. Matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from minilm_jax import metrics, relations


def _pyplot():
    """pyplot on the Agg backend, chosen only when a picture is written (importing this
    module in a notebook leaves the notebook's backend alone)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg" and "inline" not in matplotlib.get_backend():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(metrics_path: str, out_path: str) -> str:
    """Train loss (total and per relation) and held-out loss against the step."""
    records = metrics.read_jsonl(metrics_path)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sorted({k for r in train for k in r if k.startswith("loss/")})
    if train:
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["loss"] for r in train], label="train (total)", lw=2)
        for name in names:
            ax.plot(steps, [r[name] for r in train], label=f"train {name[5:]}", lw=1, alpha=0.7)
    if evals:
        ax.plot(
            [r["step"] for r in evals],
            [r["loss"] for r in evals],
            "o-",
            label="held-out (total)",
            lw=2,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("relation KL")
    ax.set_title("MiniLMv2 distillation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_relations(teacher_rel, student_rel, tokens: list[str], pairs, out_path: str) -> str:
    """One row per pair: teacher | student | |difference|, each the mean over relation heads."""
    n = len(tokens)
    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 3, figsize=(12, 3.8 * len(pairs)), squeeze=False)
    for row, pair in enumerate(pairs):
        t = np.asarray(teacher_rel[pair])[:n, :n]
        s = np.asarray(student_rel[pair])[:n, :n]
        for col, (title, m) in enumerate(
            (("teacher", t), ("student", s), ("|teacher - student|", np.abs(t - s)))
        ):
            ax = axes[row, col]
            im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=max(float(t.max()), 1e-6))
            ax.set_title(f"{pair.upper()} relation: {title}", fontsize=9)
            if n <= 40:
                ax.set_xticks(range(n), tokens, rotation=90, fontsize=6)
                ax.set_yticks(range(n), tokens, fontsize=6)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Relations for one held-out sentence (mean over relation heads)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def write_run_plots(
    workdir, teacher, student, tokenizer, config, eval_text: str = ""
) -> dict[str, str]:
    """The two pictures of a finished run: loss curves and relation heatmaps for one
    held-out sentence (``eval_text``, or the first held-out document, cut to 40 tokens)."""
    from minilm_jax import data

    out = {
        "loss_curves": plot_loss_curves(
            os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "loss_curves.png")
        )
    }
    if not eval_text:
        cfg = data.validate_data_config(config.data)
        train_docs, held_out = data.held_out_split(
            data.load_documents(cfg), cfg["eval_every_kth_document"]
        )
        eval_text = held_out[0] if len(held_out) else train_docs[0]
    special = data.special_token_ids(tokenizer, teacher.config.family)
    content = data.DocumentTokenizer(tokenizer)(eval_text)[: min(config.max_len, 40) - 2]
    ids = np.asarray(data.make_sequence(content, special, len(content) + 2)["input_ids"])
    input_ids = jnp.asarray(ids)[None]
    mask = jnp.ones_like(input_ids)
    types = jnp.zeros_like(input_ids)
    t_out = teacher(input_ids, mask, types, num_layers=config.teacher.layer)
    s_out = student(input_ids, mask, types)
    pairs = [p for p in config.distill.relations if p in relations.PAIR_NAMES] or ["qq"]
    heads = config.distill.num_relation_heads

    def head_mean(qkv, pair):  # [T, T]: the one sentence's relation, mean over heads
        return relations.relation_probabilities(qkv, mask, pair, heads)[0].mean(0)

    t_rel = {p: head_mean(t_out.qkv[config.teacher.layer - 1], p) for p in pairs}
    s_rel = {p: head_mean(s_out.qkv[-1], p) for p in pairs}
    tokens = [tokenizer.id_to_token(int(i)) or "?" for i in ids]
    out["relations"] = plot_relations(
        t_rel, s_rel, tokens, pairs, os.path.join(workdir, "relations.png")
    )
    return out
