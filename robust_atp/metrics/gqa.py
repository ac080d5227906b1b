"""GQA accuracy in three conventions, and the balanced / GQA-OOD aggregation.

`answers` is the single answer string or a sequence whose first item is the answer.

- `gqa_accuracy` (official): the GQA release's `eval.py` (cs.stanford.edu/people/dorarad/gqa/
  evaluate.html, "Evaluation Script ver 1.1": `correct = (predicted == gold)`) and GQA-OOD's
  `code/gqa_eval.py: GQAEval` (gqa-ood/GQA-OOD @ 3853e118), which evaluation.py calls: the
  prediction string equals the answer exactly. No strip, no case folding: "Yes", "yes." and
  "yes " are wrong for "yes".
- `gqa_accuracy_lmms`: lmms-eval's GQA task (EvolvingLMMs-Lab/lmms-eval @ 75571cfe,
  `lmms_eval/tasks/gqa/gqa.yaml`: `exact_match` with `ignore_case` and `ignore_punctuation`;
  `lmms_eval/api/metrics.py: exact_match_hf_evaluate`; `lmms_eval/api/task.py` strips the
  generated text first). Both sides go through numpy's `char.lower` and a `char.translate`
  that deletes ASCII `string.punctuation`, as there, numpy quirks included (trailing NULs
  vanish; a lower-case form longer than the text, "İ" -> "i̇", is cut to the text's length).
  Inner and trailing spaces of the answer count.
- `gqa_accuracy_llava`: LLaVA-1.5's GQA pipeline (haotian-liu/LLaVA @ c121f043,
  `llava/eval/model_vqa_loader.py` strips the decoded text, `scripts/convert_gqa_for_eval.py`
  applies `rstrip('.').lower()`), then the official exact match.

Aggregation (`aggregate_gqa`): the official and LLaVA conventions average over the questions
the release marks `isBalanced` (eval.py and GQAEval skip the others); lmms-eval averages over
every question it is given. Per structural / semantic type, binary / open (structural type
"query" is open), and GQA-OOD's head / tail / all: as `code/evaluation.py --ood_test`, each of
ood_*_tail.json, ood_*_head.json and ood_*_all.json scored on its own.
"""
from __future__ import annotations

import string

from .registry import GQA_OOD, LLAVA, LMMS_EVAL, register_metric

PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def _gold(answers) -> str | None:
    if isinstance(answers, str):
        return answers
    return str(answers[0]) if len(answers) else None


@register_metric("gqa_accuracy", "gqa", "GQA eval.py v1.1 (cs.stanford.edu/people/dorarad/gqa/evaluate.html): "
                 f"exact match; {GQA_OOD} code/gqa_eval.py: GQAEval, code/evaluation.py")
def gqa_accuracy(prediction: str, answers) -> float:
    """1.0 if the prediction is exactly the answer."""
    gold = _gold(answers)
    return float(gold is not None and prediction == gold)


def lmms_form(text: str) -> str:
    """What exact_match_hf_evaluate compares: the item of numpy's fixed-width string array after
    `char.lower` and `char.translate`. numpy drops trailing NULs, and keeps a lower-case form no
    longer than the text; on ASCII text that is plain str arithmetic."""
    if text.isascii():
        return text.rstrip("\x00").lower().translate(PUNCT_TABLE).rstrip("\x00")
    import numpy as np

    return str(np.char.translate(np.char.lower(np.asarray([text])), table=PUNCT_TABLE)[0])


def lmms_exact_match(prediction: str, gold: str) -> bool:
    """lmms-eval `exact_match` with ignore_case and ignore_punctuation, on the stripped output."""
    return lmms_form(prediction.strip()) == lmms_form(gold)


@register_metric("gqa_accuracy_lmms", "gqa", f"{LMMS_EVAL} lmms_eval/tasks/gqa/gqa.yaml + lmms_eval/api/metrics.py: "
                 "exact_match_hf_evaluate (ignore_case, ignore_punctuation)")
def gqa_accuracy_lmms(prediction: str, answers) -> float:
    gold = _gold(answers)
    return float(gold is not None and lmms_exact_match(prediction, gold))


@register_metric("gqa_accuracy_llava", "gqa", f"{LLAVA} scripts/convert_gqa_for_eval.py (rstrip('.').lower()), "
                 "then GQA eval.py's exact match")
def gqa_accuracy_llava(prediction: str, answers) -> float:
    gold = _gold(answers)
    return float(gold is not None and prediction.strip().rstrip(".").lower() == gold)


BALANCED_ONLY = {"gqa_accuracy": True, "gqa_accuracy_llava": True, "gqa_accuracy_lmms": False}


def balanced(example) -> bool:
    return bool(example.meta.get("is_balanced", True))


def aggregate_gqa(name: str, examples, scores: dict) -> tuple[dict, dict]:
    """The convention's accuracy over the questions it counts, its per-type breakdown and
    GQA-OOD's head / tail / all.

    `scores`: example id -> that row's score under metric `name`. The loader lists the GQA-OOD
    files a question appears in as `meta["ood"]`, e.g. ("all", "tail"). A part without any
    scored question is None (evaluation.py, which needs every question, has no such case)."""
    rows = [(ex, scores[ex.id]) for ex in examples
            if ex.id in scores and (balanced(ex) or not BALANCED_ONLY.get(name, True))]
    out, breakdown = {}, {}
    if not rows:
        return out, breakdown
    out[name] = _mean([s for _, s in rows])
    for key in ("structural", "semantic"):
        groups: dict[str, list] = {}
        for ex, s in rows:
            t = (ex.meta.get("types") or {}).get(key)
            if t is not None:
                groups.setdefault(t, []).append(s)
        if groups:
            breakdown[f"{key}_type"] = {t: _mean(v) for t, v in sorted(groups.items())}
    kinds: dict[str, list] = {}
    for ex, s in rows:
        t = (ex.meta.get("types") or {}).get("structural")
        if t is not None:
            kinds.setdefault("open" if t == "query" else "binary", []).append(s)
    if kinds:
        breakdown["answer_kind"] = {k: _mean(v) for k, v in sorted(kinds.items())}
    if any("ood" in ex.meta for ex, _ in rows):
        ood, counts = {}, {}
        for part in ("head", "tail", "all"):
            vals = [s for ex, s in rows if part in ex.meta.get("ood", ())]
            ood[part], counts[part] = (_mean(vals) if vals else None), len(vals)
        ood["n"] = counts
        breakdown["ood"] = ood
    return out, breakdown


def _mean(xs):
    return round(sum(xs) / len(xs), 6) if xs else None
