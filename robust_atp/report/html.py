"""The self-contained report.html: inline CSS, plots as base64 data URIs, no external request.
Dataset text is untrusted: the template is rendered with autoescape on."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jinja2

from ..conditions import CLEAN
from ..results import REPORT_HTML, REPORT_PDF
from .analysis import Analysis, analyze
from .plots import save_plots
from .rundata import RunData, load_run

TEMPLATE = "report.html.j2"
N_EXAMPLES_PER_METHOD = 5


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, pval=_pval, ci=_ci, sign_class=_sign_class)
    return env


def render_html(run: RunData, analysis: Analysis, plots) -> str:
    return environment().get_template(TEMPLATE).render(**context(run, analysis, plots))


def context(run: RunData, analysis: Analysis, plots) -> dict:
    ref = analysis.reference
    m = run.manifest
    did_all = {d["method"]: d for d in analysis.did if d["scope"] == "all"}
    mce_mean = {r["method"]: r for r in analysis.mce if r["family"] == "mean"}
    cost = {c["method"]: c for c in analysis.cost}
    heads = {(h["scope"], h["method"]): h for h in analysis.headline}
    headline = []
    for meth in analysis.methods:
        if meth == ref:
            continue
        headline.append({"method": meth, "cost_ratio": cost.get(meth, {}).get("cost_ratio"),
                         "latency_ratio": cost.get(meth, {}).get("latency_ratio"),
                         "clean": cost.get(meth, {}).get("clean"), "corrupted": cost.get(meth, {}).get("corrupted"),
                         "d_clean": heads.get(("clean", meth)), "d_corrupted": heads.get(("corrupted", meth)),
                         "did": did_all.get(meth), "mce": mce_mean.get(meth, {}).get("ce"),
                         "rel_mce": mce_mean.get(meth, {}).get("relative_ce")})
    did = {(d["name"], d["method"]): d for d in analysis.did if d["scope"] in ("family", "all")}
    mce = {(r["family"], r["method"]): r for r in analysis.mce}
    return {
        "suite": m.get("suite", run.run_dir.name), "created": m.get("created"), "config_hash": m.get("config_hash"),
        "n_examples": len({s["example_id"] for s in run.samples}), "reference": ref,
        "methods": analysis.methods, "conditions": analysis.conditions, "stats": analysis.config,
        "correction_name": analysis.correction_name,
        "measured_latency": any(h["latency_ratio"] is not None for h in headline),
        "headline": headline if ref else [], "regressions": analysis.regressions, "comparisons": analysis.comparisons,
        "notes": analysis.notes, "plots": [_embed(p) for p in plots],
        "accuracy": {(a["condition"], a["method"]): a for a in analysis.accuracy},
        "did": did, "did_names": list(dict.fromkeys(k[0] for k in did)),
        "did_methods": list(dict.fromkeys(k[1] for k in did)),
        "mce": mce, "mce_families": list(dict.fromkeys(k[0] for k in mce)),
        "mce_methods": list(dict.fromkeys(k[1] for k in mce)),
        "examples": _lost_answers(run, ref),
        "manifest_json": json.dumps(m, indent=2, default=str),
    }


def _embed(plot) -> dict:
    data = base64.b64encode(Path(plot.path).read_bytes()).decode("ascii")
    return {"name": plot.name, "title": plot.title, "caption": plot.caption, "uri": f"data:image/png;base64,{data}"}


def _lost_answers(run: RunData, ref: str | None) -> list[dict]:
    """Clean examples the reference answered right and a pruned method wrong (a few per method)."""
    if ref is None:
        return []
    clean = {(s["example_id"], s["method"]): s for s in run.samples if s["condition"] == CLEAN}
    out = []
    for meth in run.methods:
        if meth == ref:
            continue
        lost = [s for (ex, mm), s in clean.items() if mm == meth and s["score"] < 1
                and clean.get((ex, ref), {}).get("score", 0) >= 1]
        for s in lost[:N_EXAMPLES_PER_METHOD]:
            out.append({"example_id": s["example_id"], "question": s.get("question", ""),
                        "answers": [str(a) for a in s.get("answers") or []], "method": meth,
                        "prediction": s.get("prediction", ""),
                        "reference_prediction": clean[(s["example_id"], ref)].get("prediction", "")})
    return out


def build_report(run_dir: str | Path, formats=("html", "pdf"), n_boot: int | None = None,
                 log=None) -> dict[str, Path]:
    """Analyse a finished run directory and write plots/, report.html and/or report.pdf.
    Returns {format: path}. `n_boot` overrides the suite's bootstrap count (tests use fewer)."""
    t0 = time.perf_counter()
    run = load_run(run_dir)
    analysis = analyze(run, n_boot=n_boot)
    analysis.notes[:0] = score_notes(run.manifest)
    plots, plot_notes = save_plots(run, analysis)
    analysis.notes.extend(plot_notes)
    html = render_html(run, analysis, plots)
    out = {}
    if "html" in formats:
        out["html"] = run.run_dir / REPORT_HTML
        out["html"].write_text(html, encoding="utf-8")
    if "pdf" in formats:
        from .pdf import write_pdf

        out["pdf"] = write_pdf(html, run.run_dir / REPORT_PDF)
    if log is not None:
        log(f"report: {', '.join(str(p) for p in out.values())} ({time.perf_counter() - t0:.1f}s)")
    return out


def score_notes(manifest: dict) -> list[str]:
    """What the per-example score behind every table, CI and test is, where the name
    "accuracy" would mislead: the suite's first metric, and when that is a proxy, what the
    run's results.json reports instead."""
    metrics = (manifest.get("config") or {}).get("metrics") or []
    if not metrics:
        return []
    first = metrics[0]
    notes = [f"Per-example scores are the suite's first metric, {first}; \"accuracy\" below means its mean."]
    if first == "cider_d":
        notes.append("For captions that per-example score is a proxy (the best unigram F1 against one reference): "
                     "every CI and test here is on the proxy. The corpus CIDEr-D of each condition and method is "
                     "in results.json (rows[].metrics.cider_d).")
    if first == "gqa_accuracy" and ((manifest.get("config") or {}).get("dataset") or {}).get("options", {}).get(
            "questions") == "all":
        notes.append("These scores include questions the release does not mark balanced; results.json's "
                     "gqa_accuracy counts the balanced ones only.")
    return notes


# ----------------------------------------------------------------------------- filters

def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x, digits: int = 2) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _pval(p) -> str:
    if p is None:
        return "-"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _ci(d) -> str:
    """A difference dict ({diff|did, lo, hi}) as '+1.2 [-0.3, +2.7]' points."""
    if not d:
        return "-"
    est = d.get("diff", d.get("did"))
    if est is None:
        return "-"
    lo, hi = d.get("lo"), d.get("hi")
    body = f"{100 * est:+.1f}"
    return body if lo is None or hi is None else f"{body} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _sign_class(x) -> str:
    if isinstance(x, dict):
        x = x.get("diff", x.get("did"))
    if x is None:
        return ""
    return "neg" if x < 0 else ("pos" if x > 0 else "")
