r"""MiniLMv2 ablations as sweeps over the BERT-base -> 6x384 recipe.

The paper's ablations (Wang et al. 2021, sections 4-5) vary one thing at a time and compare
the students after fine-tuning (MNLI-m, SQuAD 2.0). Four sweeps, chosen with ``ablation=``:

  pairs           which relations: Q-Q+K-K+V-V (MiniLMv2), Q-K+V-V per attention head
                  (MiniLM v1), each pair alone, each pair of two
  relation_heads  A_r in {12, 24, 48, 96} (BERT-base: 768 and 384 both divide), or
                  {16, 32, 64, 128} for 1024-wide teachers
  teacher_layer   every layer of the teacher, 1..12 for base teachers, 1..24 for large ones
                  (the paper's layers 19/21 for large teachers come from secondary sources:
                  this sweep is how to check them); 1..4 in the smoke variant
  student_shape   3x384, 4x384, 6x384, 6x768

``teacher=`` picks the teacher (default bert-base-uncased; any key of
minilm_jax.configs.TEACHERS, e.g. ``ablation=teacher_layer,teacher=roberta-large``). That
includes the teachers the paper did not use (modernbert-base/-large, deberta-v3-base/-large,
xlm-roberta-xl/-xxl), whose layer and relation heads were chosen by analogy: these sweeps are
how to check them. ``--config.student.family=bert`` sweeps BERT students of them.

Launch a sweep locally, one run after another, each in WORKDIR/NAME, then a summary table of
their final held-out losses (WORKDIR/summary.md):
    python -m minilm_jax.sweep --config experiments/ablations.py:ablation=teacher_layer \
        --workdir runs/ablations/teacher_layer
Print the commands instead, for a cluster scheduler:
    python -m minilm_jax.sweep --config experiments/ablations.py:ablation=pairs \
        --workdir runs/ablations/pairs --print_only
The held-out losses are comparable within the teacher_layer, student_shape sweeps only
partly (each run distils a different target) and not across the pairs sweep (different
objectives): the paper compares fine-tuned accuracy, which ``python -m minilm_jax.finetune``
measures on each run's hf_student.

Smoke variant (tiny random teacher, seconds per run): append ``,smoke``.
"""

from minilm_jax import configs, relations, tiny

ABLATIONS = ("pairs", "relation_heads", "teacher_layer", "student_shape")


def _args(arg):
    a = configs.parse_arg(arg, ablation="pairs", teacher="bert-base-uncased", smoke=False)
    if a.ablation not in ABLATIONS:
        raise ValueError(f"ablation={a.ablation!r}; allowed: {ABLATIONS}")
    if a.teacher not in configs.TEACHERS:
        raise ValueError(f"teacher={a.teacher!r}; allowed: {sorted(configs.TEACHERS)}")
    return a


def get_config(arg=None):
    a = _args(arg)
    return configs.paper_experiment(a.teacher, "6x384", "smoke" if a.smoke else None)


def sweep(arg=None):
    """The runs of one ablation: a list of (name, {dotted config field: value})."""
    a = _args(arg)
    teacher = configs.TEACHERS[a.teacher]
    if a.ablation == "pairs":
        choices = [
            ("qq", "kk", "vv"),
            relations.MINILM_V1_RELATIONS,
            ("qq",),
            ("kk",),
            ("vv",),
            ("qq", "kk"),
            ("qq", "vv"),
            ("kk", "vv"),
        ]
        return [("relations-" + "+".join(c), {"distill.relations": tuple(c)}) for c in choices]
    if a.ablation == "relation_heads":
        heads = (12, 24, 48, 96) if teacher["hidden"] == 768 else (16, 32, 64, 128)
        heads = (2, 4, 8) if a.smoke else heads
        return [(f"heads-{h}", {"distill.num_relation_heads": h}) for h in heads]
    if a.ablation == "teacher_layer":
        top = tiny.SMOKE_TEACHER["num_layers"] if a.smoke else teacher["layers"]
        layers = range(1, top + 1)
        return [(f"layer-{layer}", {"teacher.layer": layer}) for layer in layers]
    if a.ablation == "student_shape":
        shapes = ("1x32", "2x32", "2x64") if a.smoke else ("3x384", "4x384", "6x384", "6x768")
        return [(f"student-{s}", {"student.spec": s}) for s in shapes]
    raise AssertionError(a.ablation)  # _args checked it
