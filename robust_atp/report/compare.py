"""Every method of a finished run beside one reference method at the same budget, with paired tests:
`python -m robust_atp.report.compare RUN_DIR [--against atp] [--markdown]`.

A method's partner is the reference method with the same budget as the suite wrote it (`keep`,
`k` or `mass`): the one labelled `<against>@<budget>` when there is one (the reference's default
settings), else the first of that name and budget in suite order. A method without a budget (`full`,
PruMerge+'s IQR count) or without a partner gets its accuracies and no test.

Per comparison: clean = the clean condition; image = the mean over the run's image corruptions per
question (what the terminal summary calls "image corruptions"). The test is the report's
(`stats.paired_tests` with the suite's `cluster_by`): exact McNemar on 0/1 scores with one question per
cluster, the studentised sign flip over clusters otherwise. p is each comparison's own, two-sided; the
adjusted p is Holm over every comparison in the same column (one family per column).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from ..conditions import CLEAN, parse_condition
from ..errors import UserError
from ..stats import paired_tests
from .rundata import RunData, load_run


@dataclass
class Comparison:
    method: str
    partner: str | None
    tokens: float | None  # mean visual tokens the LLM read (clean)
    flops_ratio: float | None  # prefill FLOPs / full's (clean)
    acc: dict  # column -> method's accuracy (fraction) or None
    ref: dict  # column -> partner's accuracy
    p: dict  # column -> own p
    p_adj: dict  # column -> Holm-adjusted p over the column


COLUMNS = ("clean", "image")


def budget(settings: dict) -> str | None:
    """The budget as the suite wrote it, or None (no budget: full, an adaptive count)."""
    for key in ("keep", "k", "mass"):
        if settings.get(key) is not None:
            return f"{key}={settings[key]:g}"
    return None


def partners(run: RunData, against: str) -> dict[str, str | None]:
    """method label -> the reference method at its budget (None: no budget or no such method)."""
    methods = {m["label"]: m for m in run.manifest.get("methods") or [] if isinstance(m, dict)}
    if not any(m.get("name") == against for m in methods.values()):
        names = sorted({m.get("name") for m in methods.values()})
        raise UserError(f"--against: no method named {against!r} in this run (it has: {', '.join(names)})")
    by_budget: dict[str, str] = {}
    for label, m in methods.items():
        b = budget(m.get("settings") or {})
        if m.get("name") == against and b is not None:
            default = label == f"{against}@{b.split('=', 1)[1]}"  # the reference's default settings
            if default or b not in by_budget:
                by_budget[b] = label
    out = {}
    for label in run.methods:
        m = methods.get(label, {})
        b = budget(m.get("settings") or {})
        partner = by_budget.get(b) if b is not None else None
        out[label] = None if partner == label else partner
    return out


def compare(run: RunData, against: str = "atp", n_perm: int | None = None, seed: int = 0) -> list[Comparison]:
    cfg = run.stats_config()
    n_perm = int(n_perm or cfg["bootstrap"])
    X, col, _, clusters = run.score_matrix(cfg["cluster_by"])
    image_conds = [c for c in run.conditions if parse_condition(c).kind == "image"]
    pair_of = partners(run, against)

    def vector(column: str, method: str) -> np.ndarray | None:
        conds = [CLEAN] if column == "clean" else image_conds
        cols = [col[c, method] for c in conds if (c, method) in col]
        if not cols or len(cols) < len(conds):
            return None
        with np.errstate(invalid="ignore"):
            return X[:, cols].mean(axis=1)

    rows = {(r["condition"], r["method"]): r for r in run.rows}
    out = []
    for label in run.methods:
        clean_row = rows.get((CLEAN, label), {})
        out.append(Comparison(label, pair_of.get(label), clean_row.get("kept_tokens"), clean_row.get("flops_ratio"),
                              {}, {}, {}, {}))
    for column in COLUMNS:
        tested = [c for c in out if c.partner is not None
                  and vector(column, c.method) is not None and vector(column, c.partner) is not None]
        for c in out:
            v = vector(column, c.method)
            c.acc[column] = None if v is None else float(np.nanmean(v))
            r = vector(column, c.partner) if c.partner is not None else None
            c.ref[column] = None if r is None else float(np.nanmean(r))
        if not tested:
            continue
        A = np.column_stack([vector(column, c.method) for c in tested])
        B = np.column_stack([vector(column, c.partner) for c in tested])
        res = paired_tests(A, B, clusters, n_perm=n_perm, seed=seed, correction="holm")
        for k, c in enumerate(tested):
            c.p[column], c.p_adj[column] = float(res.p[k]), float(res.p_adj[k])
    return out


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _p(c: Comparison, column: str) -> str:
    if column not in c.p:
        return ""
    p, adj = c.p[column], c.p_adj[column]
    return f"{_g(p)} ({_g(adj)})"


def _g(p: float) -> str:
    return "nan" if p != p else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def format_table(comparisons: list[Comparison], against: str, markdown: bool = False) -> str:
    head = ["method", "tokens", "flops", "clean", f"{against} clean", "p (Holm)",
            "image", f"{against} image", "p (Holm)"]
    body = []
    for c in comparisons:
        body.append([c.method, "" if c.tokens is None else f"{c.tokens:.1f}",
                     "" if c.flops_ratio is None else f"{c.flops_ratio:.2f}",
                     _pct(c.acc.get("clean")), _pct(c.ref.get("clean")), _p(c, "clean"),
                     _pct(c.acc.get("image")), _pct(c.ref.get("image")), _p(c, "image")])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join([f"`{r[0]}`"] + r[1:]) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m robust_atp.report.compare",
                                 description="Every method of a run beside one method at the same budget, "
                                             "with paired tests (Holm per column).")
    ap.add_argument("run_dir", help="a run directory holding results.json and samples.jsonl")
    ap.add_argument("--against", default="atp", help="the method name to compare with (default atp)")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    ap.add_argument("--permutations", type=int, default=None,
                    help="sign-flip permutations (default: the suite's stats.bootstrap)")
    args = ap.parse_args(argv)
    try:
        if args.permutations is not None and args.permutations < 100:
            raise UserError(f"--permutations: must be at least 100, got {args.permutations}")
        run = load_run(args.run_dir)
        table = format_table(compare(run, args.against, args.permutations), args.against, args.markdown)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"accuracy in %; image = mean over the image corruptions per question; p two-sided, its own, "
          f"and in brackets Holm-adjusted over the column; a method is compared with the {args.against} "
          f"method at its budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
