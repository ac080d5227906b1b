"""The summary a run prints, in the vocabulary of results.json (rows' `kind`) and the report:
an overview per method (budget, kept tokens, clean accuracy, the mean under image corruptions,
question perturbations and crossed conditions, the gaps to the first method, FLOPs ratio, object
recall and, when measured, latency), then one table per kind the run has (its severities), one
line per family, and the count of answers cut at the token limit."""
from __future__ import annotations

from collections import defaultdict

from .conditions import KIND_NAMES, KINDS, parse_condition
from .results import rounded_mean
from .subsets import describe

# the overview's short column names for each kind, and what the note says they are
COLUMNS = {"image": "image", "text": "text", "image+text": "crossed"}
MEANING = {"image": "mean over image corruptions (clean question)",
           "text": "mean over question perturbations (clean image)",
           "image+text": "mean over crossed conditions (corrupted image and perturbed question)"}


def format_summary(rows: list[dict], labels: list[str], keeps: dict[str, str] | None = None,
                   published: dict | None = None, subsets: dict | None = None) -> str:
    """The overview table, the same table on each subset of `stats.subsets`, a table per kind
    (image corruptions, question perturbations, crossed conditions) by severity, a table of every
    family (mean over its severities) and, when the adapter reported it, the answers cut at
    max_new_tokens. Gaps are to the first method (`full` in every shipped suite).

    `keeps`: label -> the budget as written in the suite (keep ratio, k=N, mass=x); `published`:
    results.json's section of the run beside the published figures (`beside_published`);
    `subsets`: results.json's `subsets` sections (`robust_atp.subsets`)."""
    rows = [r for r in rows if r["accuracy"] is not None]
    parsed = {r["condition"]: parse_condition(r["condition"]) for r in rows}
    kinds = [k for k in KINDS if any(p.kind == k for p in parsed.values())]
    sections = [_overview(rows, labels, keeps, parsed, kinds)]
    sections += [subset_table(name, section, labels, keeps) for name, section in (subsets or {}).items()]
    for kind in kinds:
        sections.append(_kind_table(rows, labels, parsed, kind))
    if kinds:
        sections.append(_family_table(rows, labels, parsed))
    cut = truncation_line(rows, labels)
    if cut:
        sections.append(cut)
    sections += published_table(published)
    return "\n\n".join(sections)


def subset_table(name: str, section: dict, labels: list[str], keeps: dict[str, str] | None = None) -> str:
    """The overview table on one subset, headed with its name, definition and size (columns as in
    the whole set's); a note instead of a table when the subset is empty."""
    title = f"subset {name}: {describe(section)}"
    rows = [r for r in section["rows"] if r["accuracy"] is not None]
    if not rows:
        return title + "\n" + "\n".join(section.get("notes") or ["no question in the subset"])
    parsed = {r["condition"]: parse_condition(r["condition"]) for r in rows}
    kinds = [k for k in KINDS if any(p.kind == k for p in parsed.values())]
    return title + "; columns as above\n" + _overview(rows, labels, keeps, parsed, kinds, note=False)


def _overview(rows, labels, keeps, parsed, kinds, note: bool = True) -> str:
    by = defaultdict(list)  # (method, kind) -> rows
    for r in rows:
        by[r["method"], parsed[r["condition"]].kind].append(r)
    ref = labels[0]
    head = ["method", "keep", "tokens", "clean"] + [COLUMNS[k] for k in kinds]
    head += ["d_clean"] + [f"d_{COLUMNS[k]}" for k in kinds] + ["flops", "recall"]
    timed = any(r.get("latency_ms") for r in rows)
    head += ["e2e_ms", "latency", "overhead"] if timed else []
    lines = []
    for label in labels:
        clean = by.get((label, "clean"), [])
        kept = rounded_mean([r["kept_tokens"] for r in clean]) if clean else None
        cells = [label, (keeps or {}).get(label, "-"), f"{kept:.1f}" if kept is not None else "-", _mean(clean)]
        cells += [_mean(by.get((label, k), [])) for k in kinds]
        cells += [_delta(by.get((label, k), []), by.get((ref, k), [])) for k in ("clean", *kinds)]
        ratio = rounded_mean([r["flops_ratio"] for r in clean if r.get("flops_ratio") is not None])
        recall = rounded_mean([r["object_recall"] for r in clean if r.get("object_recall") is not None])
        cells += ["-" if ratio is None else f"{ratio:.3f}", _pct(recall)]
        if timed:
            cells += _latency_cells(clean)
        lines.append(cells)
    if not note:
        return _table(head, lines)
    note = "accuracy in %; " + "; ".join([f"{COLUMNS[k]} = {MEANING[k]}" for k in kinds] +
                                         [f"d_* = method - {ref} in points"])
    note += ("\nflops = LLM prefill FLOPs / full's (clean); recall = % of the patches covering the objects a "
             "question names that the method kept (clean; selection methods only)")
    if any("qformer_tflops" in r for r in rows):
        note += ("\nthe LLM reads the Q-Former's query tokens whatever is pruned: its prefill is unchanged (flops "
                 "1.000); pruning saves only Q-Former cross-attention (qformer_tflops in results.json)")
    return _table(head, lines) + "\n" + note


def _kind_table(rows, labels, parsed, kind) -> str:
    """One kind by severity: per method the mean over the kind's conditions at each severity, the
    mean over all of them, and its gap to the first method."""
    by = defaultdict(list)  # (method, severity) -> rows
    families = set()
    for r in rows:
        p = parsed[r["condition"]]
        if p.kind == kind:
            by[r["method"], p.severity].append(r)
            families.add(p.family)
    severities = sorted({s for _, s in by})
    ref = labels[0]
    head = ["method"] + [f"sev{s}" for s in severities] + ["mean", f"d_{ref}"]
    lines = []
    for label in labels:
        every = [r for s in severities for r in by.get((label, s), [])]
        lines.append([label] + [_mean(by.get((label, s), [])) for s in severities] + [_mean(every),
                     _delta(every, [r for s in severities for r in by.get((ref, s), [])])])
    what = {"image": "corruptions", "text": "perturbations", "image+text": "image x text pairs"}[kind]
    axis = " (severity of the question perturbation)" if kind == "image+text" else ""
    title = f"{KIND_NAMES[kind]}: {len(families)} {what}, accuracy in %{axis}; sevN = mean at severity N"
    return title + "\n" + _table(head, lines)


def _family_table(rows, labels, parsed) -> str:
    """Every family (`image:fog`, `text:typo`, `image:fog@3+text:typo`): per method the mean over its severities."""
    by = defaultdict(list)  # (family, method) -> rows
    for r in rows:
        fam = parsed[r["condition"]].family
        if fam is not None:
            by[fam, r["method"]].append(r)
    families = sorted({f for f, _ in by}, key=lambda f: (KINDS.index(_kind_of(f)), f))
    lines = [[fam] + [_mean(by.get((fam, label), [])) for label in labels] for fam in families]
    return "by family (mean over its severities), accuracy in %\n" + _table(["family"] + list(labels), lines)


def published_table(section: dict | None) -> list[str]:
    """The run's clean figures beside the published ones (one line per published value), with the
    sources' papers and what was not compared; [] when the suite names no published figures."""
    if not section:
        return []
    units = "MME score points" if section["benchmark"] == "mme" else "percentage points"
    title = (f"beside published: {section['model']} {section['benchmark']}, clean condition; "
             f"diff = run - published in {units}")
    if not section["rows"]:
        return [title + "\nno method of this run has a published value at its budget"
                + "".join(f"\n  {x}" for x in section["not_compared"])]
    lines = [[r["method"], r["tokens"], r["metric"], _figure(r["run"]), _printed(r["published"]),
              "-" if r["difference"] is None else f"{r['difference']:+.1f}", f"arXiv {r['arxiv']} {_short(r['table'])}"]
             for r in section["rows"]]
    table = _table(["method", "tokens", "figure", "run", "published", "diff", "source"], lines)
    papers = dict.fromkeys(f"arXiv {r['arxiv']}: {r['paper']}" for r in section["rows"])
    tail = list(papers) + [f"note: {n}" for n in section["notes"]]
    if section["not_compared"]:
        tail.append("not compared: " + ", ".join(section["not_compared"]))
    return [title + "\n" + table + "\n" + "\n".join(tail)]


def _figure(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _printed(x: float) -> str:
    """A published value with one decimal, or two when the source printed two (59.97)."""
    return f"{x:.1f}" if round(x, 1) == x else f"{x:.2f}"


def _short(table: str) -> str:
    """'Table 1 (LLaVA-1.5-7B; ...)' -> 'Table 1'; 'docs/MODEL_ZOO.md, table ...' -> 'docs/MODEL_ZOO.md'."""
    return table.split(" (")[0].split(",")[0]


def truncation_line(rows: list[dict], labels: list[str]) -> str | None:
    """How many answers stopped at max_new_tokens without an EOS (rows' `truncated`), overall and
    per method; None when no row says."""
    counted = [r for r in rows if r.get("truncated") is not None]
    if not counted:
        return None
    total, n = sum(r["truncated"] for r in counted), sum(r["n"] for r in counted)
    per = {label: sum(r["truncated"] for r in counted if r["method"] == label) for label in labels}
    share = f" ({100 * total / n:.1f}%)" if n else ""
    return (f"answers cut at the token limit (max_new_tokens, no end of sequence): {total} of {n}{share}; "
            + ", ".join(f"{label} {c}" for label, c in per.items()))


def _kind_of(family: str) -> str:
    return "image+text" if "+" in family else family.split(":")[0]


def _table(head: list[str], lines: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])


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


def _mean(rows: list[dict]) -> str:
    return _pct(rounded_mean([r["accuracy"] for r in rows]))


def _delta(mine: list[dict], ref: list[dict]) -> str:
    a = rounded_mean([r["accuracy"] for r in mine])
    b = rounded_mean([r["accuracy"] for r in ref])
    if a is None or b is None:
        return "-"
    return f"{100 * (a - b):+.1f}"
