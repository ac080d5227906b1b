"""Robustness summaries: mCE normalised by the full model, token-set stability, per answer /
question type, and VQA-Rephrasings' CS(k)."""
from __future__ import annotations

from itertools import combinations

import numpy as np

from ..conditions import CLEAN, REFERENCE, parse_condition

MEAN_FAMILY = {"image": "mean", "text": "mean (text)", "image+text": "mean (image+text)"}


def corruption_errors(acc: dict[tuple[str, str], float], methods: list[str], reference: str = REFERENCE) -> list[dict]:
    """mCE-style summaries normalised by `reference`, per method and family.

    `acc[(condition, method)]` is an accuracy. Per family f (a corruption), with err = 1 - acc:
      CE(m, f)     = sum_s err(m, f@s) / sum_s err(ref, f@s)
      rel CE(m, f) = sum_s (err(m, f@s) - err(m, clean)) / sum_s (err(ref, f@s) - err(ref, clean))
    Then per method one summary row per kind of family: "mean" (mCE and relative mCE) over the
    image corruptions only, as Hendrycks & Dietterich (ICLR 2019) average them, and "mean (text)"
    and "mean (image+text)" over the text perturbations and the crossed families, apart.
    NaN where the reference's denominator is 0."""
    fams: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for cond, _ in acc:
        c = parse_condition(cond)
        if c.family is not None:
            kinds[c.family] = c.kind
            fams.setdefault(c.family, [])
            if cond not in fams[c.family]:
                fams[c.family].append(cond)
    out = []
    for m in methods:
        per_kind: dict[str, tuple[list, list]] = {}
        for fam, conds in fams.items():
            if any((c, m) not in acc or (c, reference) not in acc for c in conds):
                continue
            err = lambda meth: np.array([1 - acc[(c, meth)] for c in conds])  # noqa: E731
            den = err(reference).sum()
            ce = err(m).sum() / den if den > 0 else np.nan
            rel = np.nan
            if (CLEAN, m) in acc and (CLEAN, reference) in acc:
                rden = (err(reference) - (1 - acc[(CLEAN, reference)])).sum()
                rnum = (err(m) - (1 - acc[(CLEAN, m)])).sum()
                rel = rnum / rden if rden > 0 else np.nan
            ces, rels = per_kind.setdefault(kinds[fam], ([], []))
            ces.append(ce)
            rels.append(rel)
            out.append({"method": m, "family": fam, "kind": kinds[fam], "ce": float(ce), "relative_ce": float(rel)})
        for kind in ("image", "text", "image+text"):
            if kind in per_kind:
                ces, rels = per_kind[kind]
                out.append({"method": m, "family": MEAN_FAMILY[kind], "kind": kind, "ce": _nanmean(ces),
                            "relative_ce": _nanmean(rels)})
    return out


def _nanmean(values: list[float]) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float("nan") if np.isnan(values).all() else float(np.nanmean(values))


def jaccard(a, b) -> float:
    """|a & b| / |a | b| of two kept-index sets (1.0 when both are empty)."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


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
