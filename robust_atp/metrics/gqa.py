"""GQA accuracy: exact match after lower-casing and punctuation normalisation.

The official GQA evaluation compares the prediction string with the answer as is; models
answer in sentences and capitals, so (as LLaVA's and lmms-eval's GQA evaluations do) both
sides are lower-cased, stripped of punctuation and of surrounding space first. The
official score averages over questions the release marks `isBalanced` only; the loaders
keep that flag in `Example.meta["is_balanced"]` and `aggregate_gqa` honours it.
"""
from __future__ import annotations

from .match import normalize_answer


def gqa_accuracy(prediction: str, answers) -> float:
    """1.0 if the normalised prediction equals the (first) normalised reference answer."""
    if not answers:
        return 0.0
    return float(normalize_answer(prediction) == normalize_answer(answers[0]))


def balanced(example) -> bool:
    return bool(example.meta.get("is_balanced", True))


def aggregate_gqa(name: str, examples, scores: dict) -> tuple[dict, dict]:
    """Balanced-only accuracy, per structural / semantic type, and GQA-OOD's head / tail / all.

    `scores`: example id -> that row's score under metric `name`. GQA-OOD (as its official
    `evaluation.py`): accuracy over the balanced questions of ood_*_tail.json, of
    ood_*_head.json and of ood_*_all.json, each file on its own; the loader lists the files
    a question appears in as `meta["ood"]`, e.g. ("all", "tail")."""
    rows = [(ex, scores[ex.id]) for ex in examples if ex.id in scores and balanced(ex)]
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
