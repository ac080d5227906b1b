"""The self-contained report.html: inline CSS, plots as base64 data URIs, no external request.
Dataset text is untrusted: the template is rendered with autoescape on."""
from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from ..conditions import CLEAN, parse_condition
from ..results import REPORT_HTML, REPORT_PDF
from ..subsets import describe, subset_run
from .analysis import KIND_NAMES, Analysis, analyze, relative_robustness
from .plots import DPI, family_order, save_plots
from .rundata import RunData, load_run

TEMPLATE = "report.html.j2"
N_EXAMPLES_PER_METHOD = 5


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, pval=_pval, ci=_ci, ci_lines=_ci_lines, acc_ci=_acc_ci,
                       sign_class=_sign_class, ratio=_ratio)
    return env


def render_html(run: RunData, analysis: Analysis, plots, subsets: list[dict] | None = None) -> str:
    return environment().get_template(TEMPLATE).render(**context(run, analysis, plots, subsets))


MCE_NAMES = {"mean": "mean over image corruptions (mCE)", "mean (text)": "mean over question perturbations",
             "mean (image+text)": "mean over crossed conditions"}


def summary_rows(analysis: Analysis) -> list[dict]:
    """The first table: per method its cost ratio and accuracy (with CI) clean and per kind."""
    kind_acc = {(r["kind"], r["method"]): r for r in analysis.kind_accuracy}
    cost = {c["method"]: c for c in analysis.cost}
    return [{"method": meth, "reference": meth == analysis.reference,
             "cost_ratio": cost.get(meth, {}).get("cost_ratio"), "latency_ratio": cost.get(meth, {}).get("latency_ratio"),
             "clean": kind_acc.get(("clean", meth)), "kinds": [kind_acc.get((k, meth)) for k in analysis.kinds]}
            for meth in analysis.methods]


def robustness_rows(analysis: Analysis) -> list[dict]:
    """The robustness table: per method its difference to the reference, DiD and relative
    robustness per kind; [] without a reference."""
    ref = analysis.reference
    if ref is None:
        return []
    rel = relative_robustness(analysis.kind_accuracy)
    did_kind = {(d["name"], d["method"]): d for d in analysis.did if d["scope"] == "kind"}
    diffs = {(h["scope"], h["method"]): h for h in analysis.headline}
    robustness = []
    for meth in analysis.methods:
        cells = []
        for k in analysis.kinds:
            d, mine, theirs = did_kind.get((KIND_NAMES[k], meth)), rel.get((k, meth)), rel.get((k, ref))
            cells.append({"diff": diffs.get((k, meth)), "did": d, "rel": mine, "rel_ref": theirs,
                          # fewer points lost, yet a smaller share of its own clean accuracy kept: the DiD's
                          # sign would mislead
                          "only_lower_start": bool(d and d["did"] is not None and d["did"] < 0 and mine is not None
                                                   and theirs is not None and mine < theirs)})
        robustness.append({"method": meth, "reference": meth == ref, "clean": diffs.get(("clean", meth)),
                           "cells": cells})
    return robustness


def subset_context(name: str, section: dict, analysis: Analysis | None) -> dict:
    """One subset's section of the report: its name, definition and size, then the whole set's
    first tables and regressions computed on it (None tables and a note when it is empty)."""
    out = {"name": name, "title": describe(section), "notes": list(section.get("notes") or []), "summary": None,
           "robustness": [], "regressions": [], "comparisons": [], "n_significant": 0,
           "measured_latency": False, "any_only_lower_start": False}
    if analysis is None:
        return out
    robustness = robustness_rows(analysis)
    summary = summary_rows(analysis)
    return out | {"notes": analysis.notes, "summary": summary, "robustness": robustness,
                  "regressions": analysis.regressions, "comparisons": analysis.comparisons,
                  "n_significant": sum(c["significant"] for c in analysis.comparisons),
                  "measured_latency": any(r["latency_ratio"] is not None for r in summary),
                  "any_only_lower_start": any(c["only_lower_start"] for r in robustness for c in r["cells"])}


def context(run: RunData, analysis: Analysis, plots, subsets: list[dict] | None = None) -> dict:
    ref = analysis.reference
    m = run.manifest
    kinds = analysis.kinds
    summary = summary_rows(analysis)
    robustness = robustness_rows(analysis)
    did = {(d["name"], d["method"]): d for d in analysis.did if d["scope"] in ("kind", "family")}
    mce = {(r["family"], r["method"]): r for r in analysis.mce}
    embedded = [_embed(p) for p in plots]
    headline_plot = next((p for p in embedded if p["name"] == "severity_headline"), None)
    n_kind = {k: sum(parse_condition(c).kind == k for c in analysis.conditions) for k in kinds}
    return {
        "suite": m.get("suite", run.run_dir.name), "created": m.get("created"), "config_hash": m.get("config_hash"),
        "n_examples": len({s["example_id"] for s in run.samples}), "reference": ref,
        "methods": analysis.methods, "conditions": analysis.conditions, "stats": analysis.config,
        "confidence_pct": f"{100 * analysis.config['confidence']:g}",
        "correction_name": analysis.correction_name, "correction": analysis.config.get("correction"),
        "kinds": kinds, "kind_names": [KIND_NAMES[k] for k in kinds], "n_kind": n_kind, "KIND_NAMES": KIND_NAMES,
        "measured_latency": any(r["latency_ratio"] is not None for r in summary),
        "summary": summary, "robustness": robustness, "any_only_lower_start": any(
            c["only_lower_start"] for r in robustness for c in r["cells"]),
        "regressions": analysis.regressions, "comparisons": analysis.comparisons,
        "n_significant": sum(c["significant"] for c in analysis.comparisons),
        "notes": analysis.notes, "headline_plot": headline_plot,
        "plots": [p for p in embedded if p is not headline_plot],
        "accuracy": {(a["condition"], a["method"]): a for a in analysis.accuracy},
        "did": did, "did_names": [k for k in dict.fromkeys(n for (n, _), d in did.items() if d["scope"] == "kind")]
        + family_order(n for (n, _), d in did.items() if d["scope"] == "family"),
        "did_methods": list(dict.fromkeys(k[1] for k in did)),
        "mce": mce, "mce_families": list(dict.fromkeys(k[0] for k in mce)),
        "mce_methods": list(dict.fromkeys(k[1] for k in mce)), "mce_names": MCE_NAMES,
        "truncation": _truncation_table(analysis, run),
        "published": _published_table(run),
        "examples": _lost_answers(run, ref),
        "subsets": subsets or [],
        "manifest_json": json.dumps(m, indent=2, default=str), "plot_dpi": DPI,
    }


def _truncation_table(analysis: Analysis, run: RunData) -> dict | None:
    """Answers cut at the token limit, per method and kind of condition; None when samples do not say."""
    if analysis.truncation is None:
        return None
    cells = {(r["method"], r["kind"]): r for r in analysis.truncation}
    kinds = [k for k in ("clean",) + tuple(analysis.kinds) if any(kk == k for _, kk in cells)]
    total = sum(r["truncated"] for r in analysis.truncation)
    n = sum(r["n"] for r in analysis.truncation)
    gen = (((run.manifest.get("config") or {}).get("model") or {}).get("generation") or {})
    return {"kinds": kinds, "names": [KIND_NAMES[k] for k in kinds], "cells": cells, "total": total, "n": n,
            "methods": [m for m in analysis.methods if any(mm == m for mm, _ in cells)],
            "max_new_tokens": gen.get("max_new_tokens")}


def _published_table(run: RunData) -> dict | None:
    """results.json's `published` section as the report shows it: the rows, the papers they come
    from and what was not compared; None when the suite names no published figures."""
    section = run.published
    if not section or not isinstance(section.get("rows"), list):
        return None
    papers = dict.fromkeys((r["arxiv"], r["paper"]) for r in section["rows"])
    return {**section, "papers": [{"arxiv": a, "paper": p} for a, p in papers]}


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
            theirs = clean[(s["example_id"], ref)]
            out.append({"example_id": s["example_id"], "question": s.get("question", ""),
                        "answers": [str(a) for a in s.get("answers") or []], "method": meth,
                        "prediction": s.get("prediction", ""), "truncated": bool(s.get("truncated")),
                        "reference_prediction": theirs.get("prediction", ""),
                        "reference_truncated": bool(theirs.get("truncated"))})
    return out


def build_report(run_dir: str | Path, formats=("html", "pdf"), n_boot: int | None = None,
                 log=None) -> dict[str, Path]:
    """Analyse a finished run directory and write plots/, report.html and/or report.pdf.
    Returns {format: path}. `n_boot` overrides the suite's bootstrap count (tests use fewer).
    Returns early, writing nothing ("report unchanged"), when neither the samples, the results,
    the report settings nor the report code changed since the last build and its files exist."""
    from . import fingerprint as fp

    t0 = time.perf_counter()
    base = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent  # a run dir or its results.json
    out = {f: base / f"report.{f}" for f in ("html", "pdf") if f in formats}
    try:
        key = fp.fingerprint(base, formats, n_boot) if out else None
    except (OSError, ValueError):
        key = None  # unreadable inputs: load_run below says which file and why
    if key is not None and fp.unchanged(base, key, out):
        _say(log, f"report unchanged: {', '.join(str(p) for p in out.values())} (samples, results, report "
                  f"settings and report code as at the last build; {time.perf_counter() - t0:.1f}s)")
        return out
    run = load_run(run_dir)
    (run.run_dir / fp.FINGERPRINT).unlink(missing_ok=True)
    analysis = analyze(run, n_boot=n_boot)
    analysis.notes[:0] = score_notes(run.manifest)
    plots, plot_notes = save_plots(run, analysis)
    analysis.notes.extend(plot_notes)
    subsets = [subset_context(name, section, None if (sub := subset_run(run, name)) is None
                              else analyze(sub, n_boot=n_boot)) for name, section in run.subsets.items()]
    html = render_html(run, analysis, plots, subsets)
    out = {}
    if "html" in formats:
        out["html"] = run.run_dir / REPORT_HTML
        out["html"].write_text(html, encoding="utf-8")
    if "pdf" in formats:
        from .pdf import write_pdf

        out["pdf"] = write_pdf(html, run.run_dir / REPORT_PDF)
    if key is not None and out:
        fp.record(run.run_dir, key, list(out.values()) + [p.path for p in plots])
    _say(log, f"report: {', '.join(str(p) for p in out.values())} ({time.perf_counter() - t0:.1f}s)")
    return out


def _say(log, message: str) -> None:
    if log is not None:
        log(message)
    else:
        logging.getLogger(__name__).info(message)


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


def _ci_lines(d) -> Markup:
    """As `_ci`, the interval on a line of its own under the estimate (narrow columns wrap the same way)."""
    body = _ci(d)
    est, sep, interval = body.partition(" ")
    return Markup(escape(est) + (Markup("<br><small>") + escape(interval) + Markup("</small>") if sep else ""))


def _acc_ci(a) -> str:
    """An accuracy dict ({accuracy, lo, hi}) as '78.9 [73.7, 82.6]' percent."""
    if not a or a.get("accuracy") is None:
        return "-"
    body = f"{100 * a['accuracy']:.1f}"
    return body if a.get("lo") is None or a.get("hi") is None else f"{body} [{100 * a['lo']:.1f}, {100 * a['hi']:.1f}]"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _sign_class(d) -> str:
    """How a difference is coloured: significant after the correction (it has been tested) in colour,
    by direction; an interval that includes 0 grey; anything else plain. Not red for every negative."""
    if not isinstance(d, dict):
        return ""
    est = d.get("diff", d.get("did"))
    if est is None:
        return ""
    if d.get("significant"):
        return "sig-worse" if est < 0 else "sig-better"
    lo, hi = d.get("lo"), d.get("hi")
    if lo is None or hi is None or lo <= 0 <= hi:
        return "ns"
    return ""
