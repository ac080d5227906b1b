"""Everything the report states about a run, computed once from its per-example scores.

All confidence intervals come from ONE clustered bootstrap (the same resamples for every column),
so intervals of related quantities are consistent with each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..conditions import CLEAN, KIND_NAMES, KINDS, parse_condition
from ..metrics.robustness import corruption_errors, jaccard
from ..stats import FEW_CLUSTERS, MIN_CLUSTERS, bootstrap_ci, paired_tests
from .rundata import RunData

CORRECTION_NAMES = {"maxt": "Westfall-Young max-T step-down", "holm": "Holm"}


@dataclass
class Analysis:
    """Tables as lists of dicts (accuracies and differences as fractions, not points)."""

    config: dict
    reference: str | None
    methods: list[str]
    conditions: list[str]
    accuracy: list[dict] = field(default_factory=list)  # per (condition, method): accuracy, lo, hi, n
    # per (condition, pruned method): diff vs reference, test, agreement and flips
    comparisons: list[dict] = field(default_factory=list)
    headline: list[dict] = field(default_factory=list)  # per pruned method x {clean, image, text, image+text}: diff, CI
    did: list[dict] = field(default_factory=list)  # difference-in-differences per condition, family, kind, overall
    # per (kind, method): mean accuracy over the kind's conditions (clean: the clean accuracy), CI
    kind_accuracy: list[dict] = field(default_factory=list)
    # per (kind, severity, method): mean accuracy over the kind's conditions at that severity, CI
    severity_curve: list[dict] = field(default_factory=list)
    # per (method, kind): answers cut at the token limit; None when samples carry no `truncated`
    truncation: list[dict] | None = None
    mce: list[dict] = field(default_factory=list)
    # per (example, condition, method): Jaccard(kept clean, kept under the condition)
    stability: list[dict] | None = None
    cost: list[dict] = field(default_factory=list)  # per method: tokens, flops ratio, clean and per-kind accuracy
    notes: list[str] = field(default_factory=list)

    @property
    def correction_name(self) -> str:
        return CORRECTION_NAMES.get(self.config.get("correction"), str(self.config.get("correction")))

    @property
    def kinds(self) -> list[str]:
        """The non-clean kinds this run has, in KINDS order."""
        present = {parse_condition(c).kind for c in self.conditions}
        return [k for k in KINDS if k in present]

    @property
    def regressions(self) -> list[dict]:
        """Comparisons where the pruned method is significantly worse than the reference after correction."""
        return [c for c in self.comparisons if c["significant"] and c["diff"] is not None and c["diff"] < 0]


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
    by_kind = {k: [c for c in noisy if parsed[c].kind == k] for k in KINDS}
    by_kind = {k: v for k, v in by_kind.items() if v}
    by_sev: dict[tuple[str, int], list[str]] = {}
    for c in noisy:
        by_sev.setdefault((parsed[c].kind, parsed[c].severity), []).append(c)

    # Every quantity with a CI is a column of one matrix; `specs` remembers what each column is.
    columns, specs, ranges = [], [], []

    def add(vec, spec, bound):  # bound: the largest |value| a column can take (scores are in [0, 1])
        columns.append(vec)
        specs.append(spec)
        ranges.append((0.0, 1.0) if bound is None else (-bound, bound))

    for c in run.conditions:
        for m in run.methods:
            add(X[:, col[c, m]], ("accuracy", c, m), None)
    for m in run.methods:
        if has_clean:
            add(X[:, col[CLEAN, m]], ("kind_accuracy", "clean", m), None)
        for kind, conds in by_kind.items():
            add(_rowmean([X[:, col[c, m]] for c in conds]), ("kind_accuracy", kind, m), None)
        for (kind, sev), conds in sorted(by_sev.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
            add(_rowmean([X[:, col[c, m]] for c in conds]), ("severity", kind, sev, m, len(conds)), None)
    if ref is not None:
        for c in run.conditions:
            for m in pruned:
                add(X[:, col[c, m]] - X[:, col[c, ref]], ("diff", c, m), 1.0)
        for m in pruned:
            if has_clean:
                add(X[:, col[CLEAN, m]] - X[:, col[CLEAN, ref]], ("headline", "clean", m), 1.0)
            for kind, conds in by_kind.items():
                add(_rowmean([X[:, col[c, m]] - X[:, col[c, ref]] for c in conds]), ("headline", kind, m), 1.0)
        if has_clean:
            fams: dict[str, list[str]] = {}
            for c in noisy:
                fams.setdefault(parsed[c].family, []).append(c)
            for m in pruned:
                did = {c: (X[:, col[CLEAN, m]] - X[:, col[c, m]]) - (X[:, col[CLEAN, ref]] - X[:, col[c, ref]])
                       for c in noisy}
                for c in noisy:
                    add(did[c], ("did", "condition", c, m), 2.0)
                for fam, conds in fams.items():
                    add(_rowmean([did[c] for c in conds]), ("did", "family", fam, m), 2.0)
                for kind, conds in by_kind.items():
                    add(_rowmean([did[c] for c in conds]), ("did", "kind", KIND_NAMES[kind], m), 2.0)
                if noisy:  # a mix of kinds when the run has several: kept for results, not shown as a headline
                    add(_rowmean([did[c] for c in noisy]), ("did", "all", "all conditions", m), 2.0)
    M = np.column_stack(columns)
    low_b, high_b = np.array(ranges).T
    est, lo, hi = bootstrap_ci(M, clusters, cfg["bootstrap"], cfg["confidence"], seed, bounds=(low_b, high_b))
    _cluster_notes(M, clusters, specs, cfg["cluster_by"], out.notes)

    alpha = 1 - cfg["confidence"]
    tested = None
    if ref is not None and pruned:
        A = np.column_stack([X[:, col[c, m]] for c in run.conditions for m in pruned])
        B = np.column_stack([X[:, col[c, ref]] for c in run.conditions for m in pruned])
        tested = paired_tests(A, B, clusters, cfg["bootstrap"], seed, cfg["correction"])
        reject, resolvable = tested.reject(alpha), tested.resolvable(alpha)
        _resolution_notes(tested, alpha, out.notes)
        agreement = _agreement(run, [(c, m) for c in run.conditions for m in pruned], ref)
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
                                    "method": m, "diff": e, "lo": l, "hi": h, "test": tested.tests[diff_i],
                                    "p": _f(tested.p[diff_i]), "p_adj": _f(tested.p_adj[diff_i]),
                                    "min_p_adj": float(tested.min_p_adj[diff_i]),
                                    "significant": bool(reject[diff_i]), "resolvable": bool(resolvable[diff_i]),
                                    **agreement[c, m]})
            diff_i += 1
        elif kind == "headline":
            out.headline.append({"scope": spec[1], "method": spec[2], "diff": e, "lo": l, "hi": h})
        elif kind == "kind_accuracy":
            out.kind_accuracy.append({"kind": spec[1], "method": spec[2], "accuracy": e, "lo": l, "hi": h})
        elif kind == "severity":
            out.severity_curve.append({"kind": spec[1], "severity": spec[2], "method": spec[3],
                                       "n_conditions": spec[4], "accuracy": e, "lo": l, "hi": h})
        else:
            out.did.append({"scope": spec[1], "name": spec[2], "method": spec[3], "did": e, "lo": l, "hi": h})

    acc = {(r["condition"], r["method"]): r["accuracy"] for r in out.accuracy if r["accuracy"] is not None}
    if ref is not None:
        out.mce = corruption_errors(acc, pruned, ref)
    out.cost = _cost(run, acc, noisy, out.notes)
    kind_acc = {(r["kind"], r["method"]): r["accuracy"] for r in out.kind_accuracy}
    for r in out.cost:
        r.update({KIND_NAMES[k]: kind_acc.get((k, r["method"])) for k in by_kind})
    out.truncation = _truncation(run, parsed)
    out.stability = _stability(run, ref)
    if out.stability is None:
        out.notes.append("samples.jsonl has no kept_indices: token-set stability and kept-token overlays are skipped.")
    if ref is None:
        out.notes.append("no method named 'full': differences against the full model are not computed.")
    return out


def _cluster_notes(M: np.ndarray, clusters: np.ndarray, specs: list, cluster_by: str, notes: list[str]) -> None:
    """Where intervals are missing (under MIN_CLUSTERS clusters) or only approximate (under FEW_CLUSTERS)."""
    series = [k for k, spec in enumerate(specs) if spec[0] == "accuracy"]
    counts = np.array([len(np.unique(clusters[~np.isnan(M[:, k])])) for k in series], dtype=int)
    unit = "images" if cluster_by == "image_id" else "examples"
    none, few = counts < MIN_CLUSTERS, (counts >= MIN_CLUSTERS) & (counts < FEW_CLUSTERS)
    if none.any():
        notes.append(f"{int(none.sum())} (condition, method) series have fewer than {MIN_CLUSTERS} {unit}: "
                     "no confidence interval (shown as -) and no test that could be significant.")
    if few.any():
        notes.append(f"Only {int(counts[few].min())} {unit} in some series (fewer than {FEW_CLUSTERS}): intervals "
                     "and tests rest on few independent units and are approximate.")


def _resolution_notes(tested, alpha: float, notes: list[str]) -> None:
    """Say when the permutation count, rather than the data, limits what can be significant."""
    floor = 1 / (tested.n_perm + 1)
    if floor > alpha:
        notes.append(f"With {tested.n_perm} sign flips (stats.bootstrap) no p-value can fall below {floor:.3g}: "
                     f"nothing can be significant at alpha {alpha:g}; raise stats.bootstrap to at least "
                     f"{int(np.ceil(1 / alpha)) - 1}.")
    unresolvable = int((~tested.resolvable(alpha) & ~np.isnan(tested.p)).sum())
    if unresolvable and floor <= alpha:
        notes.append(f"{unresolvable} comparison(s) cannot reach alpha {alpha:g} at this size and resolution "
                     "(too few differing images, or too few sign flips for the correction): marked n/a, "
                     "not \"not significant\".")


def _agreement(run: RunData, pairs: list[tuple[str, str]], ref: str) -> dict:
    """Per (condition, method): the share of examples answered identically to `ref` ("loyalty") and
    the flips, right -> wrong (a lower score than `ref`'s) and wrong -> right (a higher one)."""
    ref_answers = {(s["example_id"], s["condition"]): (s.get("prediction"), float(s["score"]))
                   for s in run.samples if s["method"] == ref}
    tally = {cm: [0, 0, 0, 0, True] for cm in pairs}  # pairs, identical, lost, gained, all have text
    for s in run.samples:
        t = tally.get((s["condition"], s["method"]))
        theirs = ref_answers.get((s["example_id"], s["condition"]))
        if t is None or theirs is None:
            continue
        pred, score = s.get("prediction"), float(s["score"])
        t[0] += 1
        t[4] &= pred is not None and theirs[0] is not None
        t[1] += t[4] and str(pred).strip() == str(theirs[0]).strip()
        t[2] += score < theirs[1]
        t[3] += score > theirs[1]
    return {cm: {"n_pairs": n, "agreement": same / n if n and text else None, "right_to_wrong": lost,
                 "wrong_to_right": gained} for cm, (n, same, lost, gained, text) in tally.items()}


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
    (`cost: {latency: true}`), the clean accuracy and under "corrupted" the mean over every
    non-clean condition (a mix of kinds when the run has several; `analyze` adds one key per kind)."""
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


def _truncation(run: RunData, parsed: dict) -> list[dict] | None:
    """Per (method, kind): how many answers stopped at max_new_tokens without an end of sequence
    (samples' boolean `truncated`). None when no sample says either way."""
    if not any("truncated" in s for s in run.samples):
        return None
    tally: dict[tuple[str, str], list[int]] = {}
    for s in run.samples:
        p = parsed.get(s["condition"])
        if p is None or "truncated" not in s:
            continue
        t = tally.setdefault((s["method"], p.kind), [0, 0])
        t[0] += bool(s["truncated"])
        t[1] += 1
    order = ("clean",) + KINDS
    return [{"method": m, "kind": k, "truncated": tally[m, k][0], "n": tally[m, k][1]}
            for m in run.methods for k in order if (m, k) in tally]


def relative_robustness(kind_accuracy: list[dict]) -> dict[tuple[str, str], float | None]:
    """Per (kind, method): accuracy under the kind / clean accuracy (1 = nothing lost)."""
    acc = {(r["kind"], r["method"]): r["accuracy"] for r in kind_accuracy}
    out = {}
    for (kind, m), a in acc.items():
        clean = acc.get(("clean", m))
        if kind != "clean":
            out[kind, m] = a / clean if a is not None and clean else None
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
