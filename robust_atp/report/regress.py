"""The CI regression gate: a current run against a baseline, paired per (example, condition, method).

Each (condition, method) is a one-sided test of H0 "its accuracy drops by at most max_drop points"
(the tolerance is inside the hypothesis, not a cut on the point estimate): the studentised
sign-flip test over clusters (the baseline suite's `stats.cluster_by`, images by default) with the
observed drop centred at max_drop, and the Westfall-Young max-T step-down across every compared
(condition, method) at alpha. A pair fails when H0 is rejected. Each pair also gets its minimum
detectable drop (80% power at alpha after the correction, see robust_atp.stats.power), and the
gate says in one line when it cannot detect a drop of twice max_drop at its size.
It also fails when the current run lacks predictions the baseline has (a method, a condition or
examples gone missing would otherwise pass unseen).

    python -m robust_atp.regress BASELINE CURRENT [--max-drop POINTS] [--alpha A] [--junit FILE] [--allow-missing]

Exit 0: no gated drop; 1: at least one; 2: unreadable input (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..stats import cluster_index, cluster_sums, minimum_detectable_drop, paired_tests
from .rundata import RunData, load_run

MAX_SHOWN = 15  # rows of the markdown table besides the failures
POWER = 0.8


def compare(baseline: RunData, current: RunData, max_drop: float = 1.0, alpha: float = 0.05,
            n_perm: int = 10_000, seed: int = 0, allow_missing: bool = False,
            cluster_by: str | None = None) -> list[dict]:
    """One row per (condition, method) of the baseline, in its order: n paired examples (of
    n_baseline), both accuracies on those pairs, drop in points, test, one-sided p, max-T adjusted
    p, minimum detectable drop `mdd` (points; NaN when no drop up to the baseline accuracy is
    detectable), missing (baseline predictions the current run lacks) and failed (a significant
    drop beyond max_drop, or anything missing). With `allow_missing` (the current run is a
    deliberate slice of the baseline's suite) only the shared predictions are compared and
    nothing fails for being absent. `cluster_by` defaults to the baseline suite's."""
    cluster_by = cluster_by or baseline.stats_config().get("cluster_by", "image_id")
    base = {(s["example_id"], s["condition"], s["method"]): s for s in baseline.samples}
    cur = {(s["example_id"], s["condition"], s["method"]): float(s["score"]) for s in current.samples}
    shared = [k for k in base if k in cur]
    n_base: dict[tuple[str, str], int] = {}
    for _, c, m in base:
        n_base[c, m] = n_base.get((c, m), 0) + 1
    if not shared:
        raise UserError(f"{current.run_dir}: no (example, condition, method) pairs in common with {baseline.run_dir}")
    cols = list(dict.fromkeys((c, m) for _, c, m in shared))
    order = {cm: i for i, cm in enumerate((c, m) for c in baseline.conditions for m in baseline.methods)}
    cols.sort(key=lambda cm: order.get(cm, len(order)))
    col = {cm: k for k, cm in enumerate(cols)}
    examples = {ex: i for i, ex in enumerate(dict.fromkeys(k[0] for k in shared))}
    B = np.full((len(examples), len(cols)), np.nan)
    C = np.full_like(B, np.nan)
    cluster_of = [None] * len(examples)
    for ex, c, m in shared:
        i, k = examples[ex], col[c, m]
        B[i, k] = float(base[ex, c, m]["score"])
        C[i, k] = cur[ex, c, m]
        cluster_of[i] = base[ex, c, m].get(cluster_by, ex)
    clusters = cluster_index(cluster_of)
    margin = max_drop / 100
    tested = paired_tests(B, C, clusters, n_perm, seed, "maxt", alternative="greater", margin=margin)
    failed = tested.reject(alpha)
    churn = _churn_variance(B - C, clusters)
    rows = []
    for (c, m), k in col.items():
        present = ~np.isnan(B[:, k])
        b, cu = float(B[present, k].mean()), float(C[present, k].mean())
        mdd = minimum_detectable_drop(B[present, k], churn[k], margin, alpha, len(cols), POWER)
        missing = n_base[c, m] - int(present.sum())
        rows.append({"condition": c, "method": m, "n": int(present.sum()), "n_baseline": n_base[c, m],
                     "baseline": b, "current": cu, "drop": 100 * (b - cu), "mdd": 100 * mdd,
                     "test": tested.tests[k], "p": float(tested.p[k]), "p_adj": float(tested.p_adj[k]),
                     "missing": 0 if allow_missing else missing,
                     "failed": bool(failed[k] or (missing and not allow_missing))})
    if allow_missing:
        return rows
    for c, m in sorted(set(n_base) - set(col), key=lambda cm: order.get(cm, len(order))):
        rows.append({"condition": c, "method": m, "n": 0, "n_baseline": n_base[c, m], "baseline": float("nan"),
                     "current": float("nan"), "drop": float("nan"), "mdd": float("nan"), "test": "-",
                     "p": float("nan"), "p_adj": float("nan"), "missing": n_base[c, m], "failed": True})
    return rows


def _churn_variance(D: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """`D: [E, K]` paired differences -> `[K]` cluster-robust variance of each column's mean."""
    S, n = cluster_sums(D, clusters)
    N = n.sum(0)
    G = (n > 0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = S - n * (S.sum(0) / N)
        return np.where(G > 1, G / np.maximum(G - 1, 1) * (resid ** 2).sum(0) / N ** 2, 0.0)


def sensitivity(rows: list[dict], max_drop: float) -> str | None:
    """One line when some compared pair cannot detect a drop of twice max_drop at its size."""
    compared = [r for r in rows if r["n"]]
    blind = [r for r in compared if not r["mdd"] <= 2 * max_drop]  # NaN counts as blind
    if not blind:
        return None
    finite = sorted(r["mdd"] for r in blind if r["mdd"] == r["mdd"])
    span = (f"{finite[0]:.1f}" if finite[0] == finite[-1] else f"{finite[0]:.1f}-{finite[-1]:.1f}") if finite else ""
    detail = (f"their minimum detectable drops are {span} points" if finite else "no drop is detectable")
    if finite and len(finite) < len(blind):
        detail += f" ({len(blind) - len(finite)} detect none)"
    return (f"at this size the gate cannot detect a drop of {2 * max_drop:g} points (twice --max-drop) on "
            f"{len(blind)} of {len(compared)} pairs: {detail} (80% power).")


def _status(r: dict) -> str:
    if r["missing"]:
        return f"**FAIL** ({r['missing']} of {r['n_baseline']} predictions missing)"
    return "**FAIL**" if r["failed"] else "ok"


def _points(x: float, signed: bool = False) -> str:
    return "-" if x != x else (f"{x:+.1f}" if signed else f"{x:.1f}")


def markdown(rows: list[dict], baseline: str, current: str, max_drop: float, alpha: float,
             notes: list[str] = ()) -> str:
    """A PR-comment summary: verdict, the gated drops, then the largest other drops."""
    failed = [r for r in rows if r["failed"]]
    n_missing = sum(1 for r in failed if r["missing"])
    verdict = (f"FAIL: {len(failed) - n_missing} significant drop(s), {n_missing} pair(s) with missing predictions"
               if failed else "PASS")
    lines = [f"## Regression gate: {verdict}", "",
             f"Baseline `{baseline}` vs current `{current}`: {len(rows)} (condition, method) pairs, "
             f"{sum(r['n'] for r in rows)} paired predictions. A pair fails when its accuracy drop is significantly "
             f"above {max_drop:g} points: a one-sided test of H0 drop <= {max_drop:g} (studentised sign flip over "
             f"clusters) with the Westfall-Young max-T step-down across all pairs at alpha {alpha:g}. MDD: the drop "
             f"the gate finds with {100 * POWER:.0f}% power (as lost answers).", ""]
    line = sensitivity(rows, max_drop)
    notes = list(notes) + ([line] if line else [])
    lines += [f"> note: {n}" for n in notes] + ([""] if notes else [])
    rest = sorted((r for r in rows if not r["failed"]), key=lambda r: -r["drop"])[:MAX_SHOWN]
    pct = lambda x: "-" if x != x else f"{100 * x:.1f}"  # noqa: E731  NaN: nothing to compare
    shown = failed + rest
    lines += ["| condition | method | n | baseline % | current % | drop (points) | MDD (points) | p (one-sided) "
              "| p (max-T) | status |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in shown:
        lines.append(f"| {r['condition']} | {r['method']} | {r['n']} | {pct(r['baseline'])} | {pct(r['current'])} | "
                     f"{_points(r['drop'], True)} | {_points(r['mdd'])} | {r['p']:.3g} | {r['p_adj']:.3g} | "
                     f"{_status(r)} |")
    if len(rows) > len(shown):
        lines.append(f"\n{len(rows) - len(shown)} more pairs, none gated (smaller drops).")
    return "\n".join(lines) + "\n"


def junit(rows: list[dict], max_drop: float, alpha: float) -> str:
    """JUnit XML: one test case per (condition, method), a failure for each gated drop; each case
    carries its minimum detectable drop as a property, the suite the one-line sensitivity note."""
    failed = sum(r["failed"] for r in rows)
    suites = ET.Element("testsuites", name="robust_atp.regress", tests=str(len(rows)), failures=str(failed))
    suite = ET.SubElement(suites, "testsuite", name="robust_atp.regress", tests=str(len(rows)),
                          failures=str(failed), errors="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="max_drop", value=f"{max_drop:g}")
    ET.SubElement(props, "property", name="alpha", value=f"{alpha:g}")
    line = sensitivity(rows, max_drop)
    if line:
        ET.SubElement(props, "property", name="sensitivity", value=line)
    for r in rows:
        case = ET.SubElement(suite, "testcase", classname=r["condition"], name=r["method"], time="0")
        ET.SubElement(ET.SubElement(case, "properties"), "property", name="minimum_detectable_drop",
                      value=_points(r["mdd"]))
        detail = (f"accuracy {100 * r['baseline']:.1f}% -> {100 * r['current']:.1f}% ({_points(r['drop'], True)} "
                  f"points drop, n={r['n']}); minimum detectable drop {_points(r['mdd'])} points "
                  f"({100 * POWER:.0f}% power); one-sided p={r['p']:.3g}, max-T p={r['p_adj']:.3g}")
        if r["missing"]:
            ET.SubElement(case, "failure", message=f"{r['missing']} of {r['n_baseline']} baseline predictions "
                                                   "missing from the current run", type="MissingPredictions").text = detail
        elif r["failed"]:
            ET.SubElement(case, "failure", message=f"drop significantly over {max_drop:g} points at {alpha:g} "
                                                   "after the max-T correction", type="AccuracyRegression").text = detail
        else:
            ET.SubElement(case, "system-out").text = detail
    if line:
        ET.SubElement(suite, "system-out").text = line
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _notes(baseline: RunData, current: RunData, n_perm: int, alpha: float) -> list[str]:
    notes = []
    hb, hc = baseline.manifest.get("config_hash"), current.manifest.get("config_hash")
    if hb and hc and hb != hc:
        notes.append(f"the runs' config hashes differ ({hb} vs {hc}): model, data or method settings changed.")
    if 1 / (n_perm + 1) > alpha:
        notes.append(f"with {n_perm} permutations no p-value can fall below {1 / (n_perm + 1):.3g}: nothing can fail "
                     f"at alpha {alpha:g} (use at least {int(np.ceil(1 / alpha)) - 1}).")
    return notes


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m robust_atp.regress",
                                 description="Fail (exit 1) on a significant accuracy drop against a baseline run.")
    ap.add_argument("baseline", help="baseline run directory, or its results.json (samples.jsonl beside it)")
    ap.add_argument("current", help="current run directory, or its results.json")
    ap.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                    help="tolerated accuracy drop in points: a pair fails when its drop is significantly larger "
                         "(default 1.0)")
    ap.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (default 0.05)")
    ap.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report")
    ap.add_argument("--permutations", type=int, default=10_000, help="sign-flip permutations (default 10000)")
    ap.add_argument("--allow-missing", action="store_true",
                    help="compare only the predictions both runs have (CURRENT is a slice of the baseline's suite); "
                         "by default a baseline prediction missing from CURRENT fails the gate")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not 0 < args.alpha < 1:
            raise UserError(f"--alpha: must be in (0, 1), got {args.alpha}")
        if args.max_drop < 0:
            raise UserError(f"--max-drop: must be >= 0 points, got {args.max_drop}")
        if args.permutations < 100:
            raise UserError(f"--permutations: must be at least 100, got {args.permutations}")
        baseline, current = load_run(args.baseline), load_run(args.current)
        rows = compare(baseline, current, args.max_drop, args.alpha, args.permutations,
                       allow_missing=args.allow_missing)
        if args.junit:
            try:
                args.junit.write_text(junit(rows, args.max_drop, args.alpha), encoding="utf-8")
            except OSError as e:
                raise UserError(f"{args.junit}: cannot write ({e.strerror})") from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(rows, args.baseline, args.current, args.max_drop, args.alpha, _notes(baseline, current, args.permutations, args.alpha)))
    return 1 if any(r["failed"] for r in rows) else 0
