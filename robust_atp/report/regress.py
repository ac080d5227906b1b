"""The CI regression gate: a current run against a baseline, paired per (example, condition, method).

A (condition, method) fails when its accuracy drops by more than `max_drop` points AND the drop is
significant after Holm across every compared (condition, method): exact McNemar for 0/1 scores,
the sign-flip permutation test over images for soft scores or questions sharing an image.
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
from ..stats import cluster_index, holm, paired_pvalues
from .rundata import RunData, load_run

MAX_SHOWN = 15  # rows of the markdown table besides the failures


def compare(baseline: RunData, current: RunData, max_drop: float = 1.0, alpha: float = 0.05,
            n_perm: int = 10_000, seed: int = 0, allow_missing: bool = False) -> list[dict]:
    """One row per (condition, method) of the baseline, in its order: n paired examples (of
    n_baseline), both accuracies on those pairs, drop in points, test, p, Holm p, missing (baseline
    predictions the current run lacks) and failed (a gated drop, or anything missing). With
    `allow_missing` (the current run is a deliberate slice of the baseline's suite) only the
    shared predictions are compared and nothing fails for being absent."""
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
    clusters = [None] * len(examples)
    for ex, c, m in shared:
        i, k = examples[ex], col[c, m]
        B[i, k] = float(base[ex, c, m]["score"])
        C[i, k] = cur[ex, c, m]
        clusters[i] = base[ex, c, m].get("image_id", ex)
    p, tests = paired_pvalues(C, B, cluster_index(clusters), n_perm, seed)
    _, p_adj = holm(p, alpha)
    rows = []
    for (c, m), k in col.items():
        present = ~np.isnan(B[:, k])
        b, cu = float(B[present, k].mean()), float(C[present, k].mean())
        drop = 100 * (b - cu)
        missing = n_base[c, m] - int(present.sum())
        rows.append({"condition": c, "method": m, "n": int(present.sum()), "n_baseline": n_base[c, m],
                     "baseline": b, "current": cu, "drop": drop, "test": tests[k], "p": float(p[k]),
                     "p_holm": float(p_adj[k]), "missing": 0 if allow_missing else missing,
                     "failed": bool((drop > max_drop and p_adj[k] < alpha) or (missing and not allow_missing))})
    if allow_missing:
        return rows
    for c, m in sorted(set(n_base) - set(col), key=lambda cm: order.get(cm, len(order))):
        rows.append({"condition": c, "method": m, "n": 0, "n_baseline": n_base[c, m], "baseline": float("nan"),
                     "current": float("nan"), "drop": float("nan"), "test": "-", "p": float("nan"),
                     "p_holm": float("nan"), "missing": n_base[c, m], "failed": True})
    return rows


def _status(r: dict) -> str:
    if r["missing"]:
        return f"**FAIL** ({r['missing']} of {r['n_baseline']} predictions missing)"
    return "**FAIL**" if r["failed"] else "ok"


def markdown(rows: list[dict], baseline: str, current: str, max_drop: float, alpha: float,
             notes: list[str] = ()) -> str:
    """A PR-comment summary: verdict, the gated drops, then the largest other drops."""
    failed = [r for r in rows if r["failed"]]
    n_missing = sum(1 for r in failed if r["missing"])
    verdict = (f"FAIL: {len(failed) - n_missing} significant drop(s), {n_missing} pair(s) with missing predictions"
               if failed else "PASS")
    lines = [f"## Regression gate: {verdict}", "",
             f"Baseline `{baseline}` vs current `{current}`: {len(rows)} (condition, method) pairs, "
             f"{sum(r['n'] for r in rows)} paired predictions. A pair fails when accuracy drops by more than "
             f"{max_drop:g} points and the drop is significant at alpha {alpha:g} after Holm "
             f"(exact McNemar for 0/1 scores, image-level sign-flip permutation for soft scores or shared "
             f"images).", ""]
    lines += [f"> note: {n}" for n in notes] + ([""] if notes else [])
    rest = sorted((r for r in rows if not r["failed"]), key=lambda r: -r["drop"])[:MAX_SHOWN]
    pct = lambda x: "-" if x != x else f"{100 * x:.1f}"  # NaN: nothing to compare
    shown = failed + rest
    lines += ["| condition | method | n | baseline % | current % | drop (points) | test | p (Holm) | status |",
              "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in shown:
        drop = "-" if r["drop"] != r["drop"] else f"{r['drop']:+.1f}"
        lines.append(f"| {r['condition']} | {r['method']} | {r['n']} | {pct(r['baseline'])} | "
                     f"{pct(r['current'])} | {drop} | {r['test']} | {r['p_holm']:.3g} | {_status(r)} |")
    if len(rows) > len(shown):
        lines.append(f"\n{len(rows) - len(shown)} more pairs, none gated (smaller drops).")
    return "\n".join(lines) + "\n"


def junit(rows: list[dict], max_drop: float, alpha: float) -> str:
    """JUnit XML: one test case per (condition, method), a failure for each gated drop."""
    failed = sum(r["failed"] for r in rows)
    suites = ET.Element("testsuites", name="robust_atp.regress", tests=str(len(rows)), failures=str(failed))
    suite = ET.SubElement(suites, "testsuite", name="robust_atp.regress", tests=str(len(rows)),
                          failures=str(failed), errors="0", skipped="0")
    for r in rows:
        case = ET.SubElement(suite, "testcase", classname=r["condition"], name=r["method"], time="0")
        detail = (f"accuracy {100 * r['baseline']:.1f}% -> {100 * r['current']:.1f}% ({r['drop']:+.1f} points "
                  f"drop, n={r['n']}); {r['test']} p={r['p']:.3g}, Holm p={r['p_holm']:.3g}")
        if r["missing"]:
            ET.SubElement(case, "failure", message=f"{r['missing']} of {r['n_baseline']} baseline predictions "
                                                   "missing from the current run", type="MissingPredictions").text = detail
        elif r["failed"]:
            ET.SubElement(case, "failure", message=f"drop over {max_drop:g} points, significant at {alpha:g} "
                                                   f"after Holm", type="AccuracyRegression").text = detail
        else:
            ET.SubElement(case, "system-out").text = detail
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _notes(baseline: RunData, current: RunData) -> list[str]:
    hb, hc = baseline.manifest.get("config_hash"), current.manifest.get("config_hash")
    if hb and hc and hb != hc:
        return [f"the runs' config hashes differ ({hb} vs {hc}): model, data or method settings changed."]
    return []


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m robust_atp.regress",
                                 description="Fail (exit 1) on a significant accuracy drop against a baseline run.")
    ap.add_argument("baseline", help="baseline run directory, or its results.json (samples.jsonl beside it)")
    ap.add_argument("current", help="current run directory, or its results.json")
    ap.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                    help="tolerated accuracy drop in points before a significant drop fails (default 1.0)")
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
    print(markdown(rows, args.baseline, args.current, args.max_drop, args.alpha, _notes(baseline, current)))
    return 1 if any(r["failed"] for r in rows) else 0
