"""The summary table a run prints: per method its budget, kept tokens, clean and corrupted
accuracy, the gaps to the first method, FLOPs ratio, object recall and (when measured) latency."""
from __future__ import annotations

from collections import defaultdict

from .results import rounded_mean


def format_summary(rows: list[dict], labels: list[str], keeps: dict[str, str] | None = None) -> str:
    """Per method: its budget, kept tokens, clean accuracy, the mean over corruptions at each
    severity and over all, the mean over question perturbations, the gaps to the first method
    (`full` in every shipped suite), the prefill FLOPs ratio and the object recall.

    `keeps`: label -> the budget as written in the suite (keep ratio, k=N, mass=x)."""
    by = defaultdict(list)  # (method, image severity or "text") -> rows
    for r in rows:
        if r["accuracy"] is None or (r.get("text") and r["severity"]):
            continue  # crossed image x text conditions are in results.json, not in this table
        by[(r["method"], "text" if r.get("text") else r["severity"])].append(r)
    severities = sorted({r["severity"] for r in rows if r["severity"] and not r.get("text")})
    has_text = any(key[1] == "text" for key in by)
    ref = labels[0]
    head = ["method", "keep", "tokens", "clean"] + [f"sev{s}" for s in severities]
    head += (["corrupted"] if severities else []) + (["text"] if has_text else []) + ["d_clean"]
    head += (["d_corrupt"] if severities else []) + (["d_text"] if has_text else []) + ["flops", "recall"]
    timed = any(r.get("latency_ms") for r in rows)
    head += ["e2e_ms", "latency", "overhead"] if timed else []
    lines = []
    for label in labels:
        clean = by.get((label, 0), [])
        kept = rounded_mean([r["kept_tokens"] for r in clean]) if clean else None
        cells = [label, (keeps or {}).get(label, "-"), f"{kept:.1f}" if kept is not None else "-",
                 _pct(rounded_mean([r["accuracy"] for r in clean]))]
        cells += [_pct(rounded_mean([r["accuracy"] for r in by.get((label, s), [])])) for s in severities]
        if severities:
            cells.append(_pct(rounded_mean([r["accuracy"] for s in severities for r in by.get((label, s), [])])))
        if has_text:
            cells.append(_pct(rounded_mean([r["accuracy"] for r in by.get((label, "text"), [])])))
        cells.append(_delta(by, label, ref, [0]))
        if severities:
            cells.append(_delta(by, label, ref, severities))
        if has_text:
            cells.append(_delta(by, label, ref, ["text"]))
        ratio = rounded_mean([r["flops_ratio"] for r in clean if r.get("flops_ratio") is not None])
        recall = rounded_mean([r["object_recall"] for r in clean if r.get("object_recall") is not None])
        cells += ["-" if ratio is None else f"{ratio:.3f}", _pct(recall)]
        if timed:
            cells += _latency_cells(clean)
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    note = "accuracy in %"
    if severities:
        note += "; sevN = mean over corruptions at severity N"
    if has_text:
        note += "; text = mean over question perturbations (clean image)"
    note += f"; d_* = method - {ref} in points"
    note += ("\nflops = LLM prefill FLOPs / full's (clean); recall = % of the patches covering the objects a "
             "question names that the method kept (clean; selection methods only)")
    if any("qformer_tflops" in r for r in rows):
        note += ("\nthe LLM reads the Q-Former's query tokens whatever is pruned: its prefill is unchanged (flops "
                 "1.000); pruning saves only Q-Former cross-attention (qformer_tflops in results.json)")
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines] + [note])


def _latency_cells(clean: list[dict]) -> list[str]:
    ms = rounded_mean([r["latency_ms"]["end_to_end"] for r in clean if r.get("latency_ms")])
    ratio = rounded_mean([r["latency_ratio"]["end_to_end"] for r in clean if (r.get("latency_ratio") or {}).get("end_to_end")])
    over = rounded_mean([r["select_overhead"] for r in clean if r.get("select_overhead") is not None])
    return ["-" if ms is None else f"{ms:.1f}", "-" if ratio is None else f"{ratio:.3f}",
            "-" if over is None else f"{100 * over:.1f}"]


def method_budgets(methods) -> dict[str, str]:
    """label -> the method's budget as the suite wrote it: a keep ratio, k=N or mass=x ("1" for full)."""
    out = {}
    for m in methods:
        st = m.settings
        out[m.label] = (f"{st['keep']:g}" if st.get("keep") is not None else f"k={st['k']}" if st.get("k") is not None
                        else f"mass={st['mass']:g}" if st.get("mass") is not None else "1")
    return out


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def _delta(by, label, ref, severities):
    a = rounded_mean([r["accuracy"] for s in severities for r in by.get((label, s), [])])
    b = rounded_mean([r["accuracy"] for s in severities for r in by.get((ref, s), [])])
    if a is None or b is None:
        return "-"
    return f"{100 * (a - b):+.1f}"
