"""POPE: yes / no object-existence questions scored as a binary classifier.

Two answer parsings, each a named convention:

- `pope_accuracy` (default) follows LLaVA's `llava/eval/eval_pope.py`, function `eval_pope`
  (haotian-liu/LLaVA @ c121f0432da27facab705978f83c4ada465e46fd), the script behind the
  LLaVA-1.5 paper's POPE figures and the token-pruning papers that evaluate with LLaVA's scripts:
  keep the text before the first '.', delete ',', split on single spaces; the answer is "no" when
  one of the words is exactly "No", "not" or "no", otherwise "yes" (an empty or off-topic answer
  counts as "yes"; "NO" or "no\\n" do too: the split is on ' ' only and the words are not
  lower-cased).
- `pope_accuracy_lmms_eval` follows lmms-eval's `lmms_eval/tasks/pope/utils.py`
  (`pope_process_results` and the `pope_aggregate_*` functions, EvolvingLMMs-Lab/lmms-eval @
  75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3): the prediction lower-cased and stripped must equal
  the label; precision and recall count only predictions that are exactly "yes" or "no", and its
  yes-ratio is the share of *labels* that are "yes" (the reference's quirk, kept: it is 0.5 on a
  balanced split whatever the model says).

The question-level score (what the paired tests see) is 1.0 when the parsed answer equals the
label. `aggregate_pope` gives, per negative-sampling split (`Example.meta["pope_split"]`:
random / popular / adversarial) and over all rows, accuracy, precision, recall, F1, yes-ratio
and the confusion counts, as the reference computes them for each category. `pope_f1`
(per-row score as `pope_accuracy`) has the F1 as its group-level value: the mean over the splits
present of each split's F1 (LLaVA's script reports every category on its own; papers quote their
mean), which is the split's F1 when the run holds one split. Undefined ratios (no "yes"
predicted) are None where the LLaVA script would divide by zero.
"""
from __future__ import annotations


def parse_yes_no_llava(text: str) -> str:
    """'yes' or 'no' as LLaVA's eval_pope reads a generated answer."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _label(answers) -> str:
    return str(answers[0]).lower().strip() if answers else ""


def pope_accuracy(prediction: str, answers) -> float:
    """1.0 when LLaVA's parsing of the prediction equals the label ('yes' / 'no')."""
    return float(parse_yes_no_llava(prediction) == _label(answers))


def pope_accuracy_lmms_eval(prediction: str, answers) -> float:
    """1.0 when the lower-cased, stripped prediction is exactly the label (lmms-eval)."""
    return float(prediction.lower().strip() == _label(answers))


def _ratio(num: int, den: int):
    return num / den if den else None


def confusion_llava(pairs) -> dict:
    """pairs: (prediction text, label). TP/FP/TN/FN and the five figures of eval_pope."""
    tp = fp = tn = fn = 0
    for text, label in pairs:
        pred_yes = parse_yes_no_llava(text) == "yes"
        label_yes = label != "no"  # eval_pope maps every label other than 'no' to positive
        tp += pred_yes and label_yes
        fp += pred_yes and not label_yes
        tn += (not pred_yes) and not label_yes
        fn += (not pred_yes) and label_yes
    n = tp + fp + tn + fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    return {"n": n, "TP": tp, "FP": fp, "TN": tn, "FN": fn, "accuracy": _ratio(tp + tn, n),
            "precision": precision, "recall": recall, "f1": f1, "yes_ratio": _ratio(tp + fp, n)}


def confusion_lmms_eval(pairs) -> dict:
    """lmms-eval's pope aggregations: exact-match predictions, yes-ratio over the labels."""
    pairs = [(text.lower().strip(), label) for text, label in pairs]
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g == "yes" for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp > 0 else 0
    recall = tp / (tp + fn) if tp + fn > 0 else 0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0
    yes = sum(g == "yes" for _, g in pairs)
    no = sum(g == "no" for _, g in pairs)
    return {"n": len(pairs), "accuracy": sum(p == g for p, g in pairs) / len(pairs) if pairs else None,
            "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": yes / (yes + no) if yes + no > 0 else 0}


POPE_SPLITS = ("random", "popular", "adversarial")


def aggregate_pope(name: str, examples, predictions: dict) -> tuple[dict, dict]:
    """(group-level metric values, breakdown) for one (condition, method).

    predictions: example id -> (prediction text, scores). The breakdown holds one entry per split
    present and `all` (every row pooled)."""
    confusion = confusion_lmms_eval if name == "pope_accuracy_lmms_eval" else confusion_llava
    by_split: dict[str, list] = {}
    pooled = []
    for ex in examples:
        if ex.id not in predictions:
            continue
        pair = (predictions[ex.id][0], _label(ex.answers))
        pooled.append(pair)
        by_split.setdefault(str(ex.meta.get("pope_split") or "all"), []).append(pair)
    if not pooled:
        return {}, {}
    order = [s for s in POPE_SPLITS if s in by_split] + sorted(set(by_split) - set(POPE_SPLITS))
    per_split = {s: confusion(by_split[s]) for s in order}
    breakdown = {s: _rounded(c) for s, c in per_split.items()}
    breakdown["all"] = _rounded(confusion(pooled))
    metrics = {}
    if name == "pope_f1":
        f1s = [c["f1"] for c in per_split.values()]
        metrics[name] = None if any(f is None for f in f1s) else round(sum(f1s) / len(f1s), 6)
    return metrics, breakdown


def _rounded(d: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in d.items()}

# the per-question score behind `pope_f1` (the summary replaces its mean by the mean per-split F1)
pope_f1 = pope_accuracy
