"""Everything the report states about a run, computed once from its per-example scores.

All confidence intervals come from ONE clustered bootstrap (the same resamples for every column),
so intervals of related quantities are consistent with each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..stats import CLEAN, bootstrap_ci, corruption_errors, holm, jaccard, paired_pvalues, parse_condition
from .rundata import RunData


@dataclass
class Analysis:
    """Tables as lists of dicts (accuracies and differences as fractions, not points)."""

    config: dict
    reference: str | None
    methods: list[str]
    conditions: list[str]
    accuracy: list[dict] = field(default_factory=list)  # per (condition, method): accuracy, lo, hi, n
    comparisons: list[dict] = field(default_factory=list)  # per (condition, pruned method): diff vs reference, test
    headline: list[dict] = field(default_factory=list)  # per pruned method x {clean, corrupted}: diff, CI
    did: list[dict] = field(default_factory=list)  # difference-in-differences per condition, family, overall
    mce: list[dict] = field(default_factory=list)
    stability: list[dict] | None = None  # per (example, condition, method): Jaccard(kept clean, kept corrupted)
    cost: list[dict] = field(default_factory=list)  # per method: tokens, flops ratio, clean / corrupted accuracy
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[dict]:
        """Comparisons where the pruned method is significantly worse than the reference after correction."""
        return [c for c in self.comparisons if c["significant"] and c["diff"] < 0]


def analyze(run: RunData, n_boot: int | None = None, seed: int | None = None) -> Analysis:
    cfg = run.stats_config()
    if n_boot is not None:
        cfg["bootstrap"] = n_boot
    seed = int(run.manifest.get("seed", 0) if seed is None else seed)
    X, col, _, clusters = run.score_matrix(cfg["cluster_by"])
    ref = run.reference
    out = Analysis(cfg, ref, run.methods, run.conditions)
    pruned = [m for m in run.methods if m != ref]
    noisy = [c for c in run.conditions if c != CLEAN]
    parsed = {c: parse_condition(c) for c in run.conditions}
    has_clean = CLEAN in run.conditions

    # Every quantity with a CI is a column of one matrix; `specs` remembers what each column is.
    columns, specs = [], []

    def add(vec, spec):
        columns.append(vec)
        specs.append(spec)

    for c in run.conditions:
        for m in run.methods:
            add(X[:, col[c, m]], ("accuracy", c, m))
    if ref is not None:
        for c in run.conditions:
            for m in pruned:
                add(X[:, col[c, m]] - X[:, col[c, ref]], ("diff", c, m))
        for m in pruned:
            if has_clean:
                add(X[:, col[CLEAN, m]] - X[:, col[CLEAN, ref]], ("headline", "clean", m))
            if noisy:
                add(_rowmean([X[:, col[c, m]] - X[:, col[c, ref]] for c in noisy]), ("headline", "corrupted", m))
        if has_clean:
            fams: dict[str, list[str]] = {}
            for c in noisy:
                fams.setdefault(parsed[c].family, []).append(c)
            for m in pruned:
                did = {c: (X[:, col[CLEAN, m]] - X[:, col[c, m]]) - (X[:, col[CLEAN, ref]] - X[:, col[c, ref]])
                       for c in noisy}
                for c in noisy:
                    add(did[c], ("did", "condition", c, m))
                for fam, conds in fams.items():
                    add(_rowmean([did[c] for c in conds]), ("did", "family", fam, m))
                if noisy:
                    add(_rowmean([did[c] for c in noisy]), ("did", "all", "all corruptions", m))
    est, lo, hi = bootstrap_ci(np.column_stack(columns), clusters, cfg["bootstrap"], cfg["confidence"], seed)

    pvals = None
    if ref is not None and pruned:
        A = np.column_stack([X[:, col[c, m]] for c in run.conditions for m in pruned])
        B = np.column_stack([X[:, col[c, ref]] for c in run.conditions for m in pruned])
        pvals, tests = paired_pvalues(A, B, clusters, cfg["bootstrap"], seed)
        reject, padj = holm(pvals, alpha=1 - cfg["confidence"])
    diff_i = 0
    for k, spec in enumerate(specs):
        kind = spec[0]
        e, l, h = _f(est[k]), _f(lo[k]), _f(hi[k])
        if kind == "accuracy":
            c, m = spec[1:]
            n = int(np.sum(~np.isnan(X[:, col[c, m]])))
            out.accuracy.append({"condition": c, "family": parsed[c].family, "severity": parsed[c].severity,
                                 "method": m, "accuracy": e, "lo": l, "hi": h, "n": n})
        elif kind == "diff":
            c, m = spec[1:]
            out.comparisons.append({"condition": c, "family": parsed[c].family, "severity": parsed[c].severity,
                                    "method": m, "diff": e, "lo": l, "hi": h, "test": tests[diff_i],
                                    "p": float(pvals[diff_i]), "p_adj": float(padj[diff_i]),
                                    "significant": bool(reject[diff_i])})
            diff_i += 1
        elif kind == "headline":
            out.headline.append({"scope": spec[1], "method": spec[2], "diff": e, "lo": l, "hi": h})
        else:
            out.did.append({"scope": spec[1], "name": spec[2], "method": spec[3], "did": e, "lo": l, "hi": h})

    acc = {(r["condition"], r["method"]): r["accuracy"] for r in out.accuracy if r["accuracy"] is not None}
    if ref is not None:
        out.mce = corruption_errors(acc, pruned, ref)
    out.cost = _cost(run, acc, noisy, out.notes)
    out.stability = _stability(run, ref)
    if out.stability is None:
        out.notes.append("samples.jsonl has no kept_indices: token-set stability and kept-token overlays are skipped.")
    if ref is None:
        out.notes.append("no method named 'full': differences against the full model are not computed.")
    return out


def _rowmean(vectors: list[np.ndarray]) -> np.ndarray:
    """Per-example mean over several columns (NaN only when every column is NaN)."""
    M = np.column_stack(vectors)
    present = ~np.isnan(M)
    with np.errstate(invalid="ignore"):
        return np.where(present, M, 0.0).sum(1) / np.where(present.any(1), present.sum(1), np.nan)


def _f(x) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def _cost(run: RunData, acc: dict, noisy: list[str], notes: list[str]) -> list[dict]:
    """Per method: kept tokens, FLOPs ratio vs the reference (measured, or the kept-token ratio when
    the run has no `flops_ratio`), the measured end-to-end latency ratio when the run measured it
    (`cost: {latency: true}`), clean and mean-corrupted accuracy."""
    rows = {(r.get("condition"), r.get("method")): r for r in run.rows}
    first = run.conditions[0] if run.conditions else CLEAN
    ref_tokens = (rows.get((first, run.reference)) or {}).get("kept_tokens")
    measured = all(rows.get((first, m), {}).get("flops_ratio") is not None for m in run.methods)
    if not measured:
        notes.append("results.json has no flops_ratio: the cost axis is kept tokens / the full model's kept tokens.")
    out = []
    for m in run.methods:
        r = rows.get((first, m), {})
        tokens = r.get("kept_tokens")
        if measured:
            ratio = r["flops_ratio"]
        else:
            ratio = tokens / ref_tokens if tokens is not None and ref_tokens else None
        corrupted = [acc[c, m] for c in noisy if (c, m) in acc]
        latency = r.get("latency_ratio") or {}
        out.append({"method": m, "kept_tokens": tokens, "cost_ratio": ratio, "measured_flops": measured,
                    "latency_ratio": latency.get("end_to_end"),
                    "latency_ms": (r.get("latency_ms") or {}).get("end_to_end"),
                    "prefill_tflops": r.get("prefill_tflops"), "clean": acc.get((CLEAN, m)),
                    "corrupted": float(np.mean(corrupted)) if corrupted else None})
    return out


def _stability(run: RunData, ref: str | None) -> list[dict] | None:
    kept = {(s["example_id"], s["condition"], s["method"]): s["kept_indices"]
            for s in run.samples if s.get("kept_indices") is not None}
    if not kept:
        return None
    out = []
    for (ex, cond, m), idx in kept.items():
        if cond == CLEAN or m == ref:
            continue
        clean = kept.get((ex, CLEAN, m))
        if clean is not None:
            out.append({"example_id": ex, "condition": cond, "family": parse_condition(cond).family,
                        "method": m, "jaccard": jaccard(clean, idx)})
    return out
