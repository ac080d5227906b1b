"""Group-level robustness summaries: per answer / question type, and VQA-Rephrasings' CS(k)."""
from __future__ import annotations

from itertools import combinations


def by_field(examples, scores: dict, field: str) -> dict[str, float]:
    """Mean score per value of an `Example` field (answer_type, question_type); empty values skipped."""
    groups: dict[str, list[float]] = {}
    for ex in examples:
        key = getattr(ex, field)
        if ex.id in scores and key:
            groups.setdefault(key, []).append(scores[ex.id])
    return {k: round(sum(v) / len(v), 6) for k, v in sorted(groups.items())}


def consensus_scores(groups: list[list[float]], max_k: int = 4) -> dict[str, float | int | None]:
    """CS(k), k = 1..max_k (Shah et al., CVPR 2019, "Cycle-Consistency for Robust VQA").

    groups: per original question, the scores of it and its rephrasings. A question counts as
    answered correctly when its score is above 0 (VQA accuracy: at least one annotator agrees).
    For one group Q, S_k(Q) = the share of its k-subsets whose questions are all correct;
    CS(k) = the mean of S_k over the groups with at least max_k questions (groups cut short,
    e.g. by a limit, are left out, as in the reference implementation)."""
    full = [g for g in groups if len(g) >= max_k]
    out: dict[str, float | int | None] = {}
    for k in range(1, max_k + 1):
        per_group = []
        for g in full:
            subsets = list(combinations(g, k))
            per_group.append(sum(all(s > 0 for s in sub) for sub in subsets) / len(subsets))
        out[f"CS({k})"] = round(sum(per_group) / len(per_group), 6) if per_group else None
    out["groups"] = len(full)
    return out


def consensus_from_examples(examples, scores: dict, max_k: int = 4) -> dict:
    """CS(k) over the `meta["rephrasing_group"]` groups of the scored examples."""
    groups: dict[str, list[float]] = {}
    for ex in examples:
        g = ex.meta.get("rephrasing_group")
        if g is not None and ex.id in scores:
            groups.setdefault(str(g), []).append(scores[ex.id])
    return consensus_scores(list(groups.values()), max_k)
