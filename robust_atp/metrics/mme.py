"""MME: two yes / no questions per image, per-subtask accuracy and accuracy+, and the sums.

Follows lmms-eval's `lmms_eval/tasks/mme/utils.py` (`parse_pred_ans`, `mme_process_results`,
`mme_aggregate_results`; EvolvingLMMs-Lab/lmms-eval @ 75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3),
which computes what the official MME `eval_tool/calculation.py` computes:

- answer parsing (`parse_pred_ans`): lower-case, strip, delete every '.'; "yes" / "no" as is; a
  single character "y" / "n" is yes / no (any other single character: "other"); otherwise
  "yes" if "yes" occurs in the first four characters, else "no" if "no" does, else "other"
  (so "not sure" reads as "no" and "nope" as "no"). The official calculation.py lower-cases
  only (no strip, no '.' removal, no single-letter rule); the two differ on answers such as
  "Y" or " yes" and agree on "Yes" / "No" / "Yes, there is".
- per subtask: accuracy over its questions and accuracy+ over its images (both questions
  right), score = 100 * accuracy + 100 * accuracy+ (lmms-eval averages acc + acc+ per image,
  the same number when every image has its two questions);
- perception = the sum of the 10 perception subtask scores (at most 2000), cognition = the sum
  of the 4 cognition ones (at most 800).

`mme_accuracy` is the per-question score (what the paired tests see); `mme_accuracy_plus` has
the same per-row score and, as its group-level value, the share of images with both questions
right. The group is `Example.meta["group_id"]` (the image), the subtask `meta["category"]`;
an image whose pair is incomplete in a run (a limit cut it) is left out of accuracy+.
"""
from __future__ import annotations

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_yes_no_mme(text: str) -> str:
    """'yes', 'no' or 'other' as lmms-eval's MME parse_pred_ans reads a generated answer."""
    ans = text.lower().strip().replace(".", "")
    if ans in ("yes", "no"):
        return ans
    if len(ans) == 1:
        return {"y": "yes", "n": "no"}.get(ans, "other")
    head = ans[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_accuracy(prediction: str, answers) -> float:
    """1.0 when the parsed prediction equals the label (labels are 'Yes' / 'No')."""
    if not answers:
        return 0.0
    return float(parse_yes_no_mme(prediction) == str(answers[0]).lower().strip().replace(".", ""))


def aggregate_mme(name: str, examples, scores: dict) -> tuple[dict, dict]:
    """(group-level metric values, breakdown): per subtask accuracy / accuracy+ / score / images,
    perception and cognition totals. `scores`: example id -> this metric's per-row score."""
    groups: dict[tuple[str, str], list[float]] = {}
    for ex in examples:
        if ex.id in scores:
            key = (str(ex.meta.get("category", "")), str(ex.meta.get("group_id", ex.image_id)))
            groups.setdefault(key, []).append(float(scores[ex.id]))
    if not groups:
        return {}, {}
    per_cat: dict[str, dict] = {}
    for (cat, _), s in groups.items():
        c = per_cat.setdefault(cat, {"questions": 0, "correct": 0.0, "images": 0, "both": 0})
        c["questions"] += len(s)
        c["correct"] += sum(s)
        if len(s) == 2:  # accuracy+ needs the image's pair
            c["images"] += 1
            c["both"] += sum(s) == 2
    subtasks = {}
    for cat in sorted(per_cat, key=_task_order):
        c = per_cat[cat]
        acc = c["correct"] / c["questions"]
        acc_plus = c["both"] / c["images"] if c["images"] else None
        subtasks[cat] = {"accuracy": round(100 * acc, 4),
                         "accuracy_plus": None if acc_plus is None else round(100 * acc_plus, 4),
                         "score": None if acc_plus is None else round(100 * acc + 100 * acc_plus, 4),
                         "questions": c["questions"], "images": c["images"]}
    breakdown = {"subtasks": subtasks}
    for part, names in (("perception", PERCEPTION), ("cognition", COGNITION)):
        present = [subtasks[n]["score"] for n in names if n in subtasks and subtasks[n]["score"] is not None]
        breakdown[part] = round(sum(present), 4) if present else None
        breakdown[f"{part}_subtasks"] = sum(n in subtasks for n in names)
    totals = [breakdown[p] for p in ("perception", "cognition") if breakdown[p] is not None]
    breakdown["total"] = round(sum(totals), 4) if totals else None
    metrics = {}
    if name == "mme_accuracy_plus":
        images = sum(c["images"] for c in per_cat.values())
        metrics[name] = round(sum(c["both"] for c in per_cat.values()) / images, 6) if images else None
    return metrics, breakdown


def _task_order(cat: str):
    order = PERCEPTION + COGNITION
    return (order.index(cat), "") if cat in order else (len(order), cat)

# the per-question score behind `mme_accuracy_plus` (the summary replaces its mean by accuracy+ over images)
mme_accuracy_plus = mme_accuracy
