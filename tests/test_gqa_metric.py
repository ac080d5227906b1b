"""GQA conventions, rule by rule: the official exact match (`gqa_accuracy`, GQA's eval.py and
GQA-OOD's GQAEval), lmms-eval's (`gqa_accuracy_lmms`), LLaVA-1.5's (`gqa_accuracy_llava`), and
`exact_match` (lmms-eval's rule against any answer); then the balanced / GQA-OOD aggregation.

Every lmms-eval row was also checked against `exact_match_hf_evaluate` itself run on the same
strings (numpy 2.x).
"""
import pytest

from robust_atp.data.base import Example
from robust_atp.metrics import METRICS, aggregate, score_all
from robust_atp.metrics.gqa import gqa_accuracy, gqa_accuracy_llava, gqa_accuracy_lmms
from robust_atp.metrics.match import exact_match

# (prediction, answer, official, lmms-eval, LLaVA)
GQA = [
    ("yes", "yes", 1, 1, 1),
    ("Yes", "yes", 0, 1, 1),                     # official: no case folding
    ("YES", "yes", 0, 1, 1),
    ("yes.", "yes", 0, 1, 1),                    # nor punctuation
    ("Yes.", "yes", 0, 1, 1),
    ("yes..", "yes", 0, 1, 1),                   # rstrip('.') takes every trailing period
    ("...yes", "yes", 0, 1, 0),
    ("yes!", "yes", 0, 1, 0),                    # LLaVA strips periods only
    ("yes?", "yes", 0, 1, 0),
    (" yes", "yes", 0, 1, 1),                    # official: no strip
    ("yes ", "yes", 0, 1, 1),
    ("yes\n", "yes", 0, 1, 1),
    ("\tyes\r", "yes", 0, 1, 1),
    ("yes", "yes ", 0, 0, 0),                    # the answer is never stripped
    ("yes", "Yes", 0, 1, 0),                     # LLaVA lower-cases the prediction only
    ("the man", "man", 0, 0, 0),                 # no article rule anywhere
    ("man", "the man", 0, 0, 0),
    ("left  side", "left side", 0, 0, 0),        # inner spaces count
    ("t-shirt", "tshirt", 0, 1, 0),              # lmms-eval deletes punctuation (no space left)
    ("t shirt", "t-shirt", 0, 0, 0),
    ("dont", "don't", 0, 1, 0),
    ("don’t", "don't", 0, 0, 0),                 # the typographic apostrophe is not ASCII punctuation
    ("2", "two", 0, 0, 0),                       # no number words
    ("3.5", "35", 0, 1, 0),
    ("café", "café", 1, 1, 1),                   # non-ASCII
    ("CAFÉ", "café", 0, 1, 1),
    ("İ", "i", 0, 1, 0),                         # numpy cuts "i̇" to the one character of "İ"
    ("İstanbul", "i̇stanbul", 0, 0, 1),          # ... and "i̇stanbul" to eight
    ("yes\x00", "yes", 0, 1, 0),                 # numpy strings lose trailing NULs
    ("", "yes", 0, 0, 0),
    ("", "", 1, 1, 1),
]


@pytest.mark.parametrize("pred, gold, official, lmms, llava", GQA)
def test_gqa_conventions(pred, gold, official, lmms, llava):
    for answers in (gold, (gold,), [gold, "something else"]):  # the string, or a list led by it
        assert gqa_accuracy(pred, answers) == official
        assert gqa_accuracy_lmms(pred, answers) == lmms
        assert gqa_accuracy_llava(pred, answers) == llava
    assert METRICS["gqa_accuracy"](pred, (gold,)) == official
    assert METRICS["gqa_accuracy_lmms"](pred, (gold,)) == lmms
    assert METRICS["gqa_accuracy_llava"](pred, (gold,)) == llava


def test_only_the_first_answer_counts_and_none_scores_zero():
    assert gqa_accuracy("no", ("yes", "no")) == 0.0
    assert gqa_accuracy_lmms("No", ["yes", "no"]) == 0.0
    for fn in (gqa_accuracy, gqa_accuracy_lmms, gqa_accuracy_llava, exact_match):
        assert fn("yes", ()) == 0.0


def test_exact_match_is_lmms_eval_against_any_answer():
    assert exact_match("Yes.", ("no", "yes")) == 1.0
    assert exact_match(" Blue!", ["red", "blue"]) == 1.0
    assert exact_match("red  car", ("red car",)) == 0.0   # spaces are not collapsed
    assert exact_match("t-shirt", ("t shirt",)) == 0.0
    assert exact_match("tshirt", ("t-shirt",)) == 1.0
    assert exact_match("yes", "yes") == 1.0
    assert score_all(["exact_match", "gqa_accuracy"], "Red", ("red",)) == {"exact_match": 1.0, "gqa_accuracy": 0.0}


def _example(i, answer, balanced=True, structural="query", semantic="obj", ood=None):
    meta = {"is_balanced": balanced, "types": {"structural": structural, "semantic": semantic, "detailed": "d"}}
    if ood is not None:
        meta["ood"] = ood
    return Example(id=f"q{i}", image_id=f"i{i}", question="?", answers=(answer,), image=None, meta=meta)


def test_balanced_questions_per_convention():
    """eval.py (and LLaVA, which runs it) count the balanced questions only; lmms-eval counts
    every question it is given."""
    exs = [_example(0, "yes", structural="verify"), _example(1, "red"), _example(2, "left", balanced=False),
           _example(3, "man", structural="logical", semantic="rel")]
    preds = ["Yes", "red", "left", "woman"]
    names = ["gqa_accuracy", "gqa_accuracy_lmms", "gqa_accuracy_llava"]
    rows = {e.id: (p, score_all(names, p, e.answers)) for e, p in zip(exs, preds)}
    out = aggregate(names, exs, rows)
    assert out["metrics"] == {"gqa_accuracy": round(1 / 3, 6), "gqa_accuracy_lmms": 0.75,
                              "gqa_accuracy_llava": round(2 / 3, 6)}
    b = out["breakdown"]["gqa_accuracy"]
    assert b["structural_type"] == {"logical": 0.0, "query": 1.0, "verify": 0.0}
    assert b["semantic_type"] == {"obj": 0.5, "rel": 0.0}
    assert b["answer_kind"] == {"binary": 0.0, "open": 1.0}    # "query" is open, the rest binary
    assert out["breakdown"]["gqa_accuracy_lmms"]["answer_kind"] == {"binary": 0.5, "open": 1.0}


def test_gqa_ood_parts_as_evaluation_py():
    """evaluation.py --ood_test scores ood_*_tail.json, _head.json and _all.json each on its own,
    balanced questions only. Hand-built: all = q0..q5, head = q0, q1, tail = q2, q3, q5 (q5
    unbalanced); right: q0, q2 (exactly), q4 (exactly), q5; q1 answered "Yes." for "yes"."""
    parts = [("all", "head"), ("all", "head"), ("all", "tail"), ("all", "tail"), ("all",), ("all", "tail")]
    answers = ["red", "yes", "left", "no", "man", "two"]
    preds = ["red", "Yes.", "left", "yes", "man", "two"]
    exs = [_example(i, a, balanced=i != 5, ood=p) for i, (a, p) in enumerate(zip(answers, parts))]
    rows = {e.id: (p, score_all(["gqa_accuracy", "gqa_accuracy_lmms"], p, e.answers)) for e, p in zip(exs, preds)}
    b = aggregate(["gqa_accuracy", "gqa_accuracy_lmms"], exs, rows)["breakdown"]
    assert b["gqa_accuracy"]["ood"] == {"head": 0.5, "tail": 0.5, "all": 0.6, "n": {"head": 2, "tail": 2, "all": 5}}
    assert b["gqa_accuracy_lmms"]["ood"] == {"head": 1.0, "tail": round(2 / 3, 6), "all": round(5 / 6, 6),
                                             "n": {"head": 2, "tail": 3, "all": 6}}


def test_ascii_shortcut_equals_numpy():
    """On ASCII text the lmms-eval form is computed without numpy; it must be numpy's."""
    import random
    import string

    import numpy as np

    from robust_atp.metrics.gqa import PUNCT_TABLE, lmms_form

    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \t\n\x00"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert lmms_form(text) == str(np.char.translate(np.char.lower(np.asarray([text])), table=PUNCT_TABLE)[0])
