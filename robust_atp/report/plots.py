"""The report's figures (seaborn on matplotlib's Agg backend). Each `plot_*` returns a Figure, or None
when the run lacks what the figure needs; `save_plots` writes PNGs into `<run_dir>/plots/`."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: reports are built on servers and in CI
# method labels and condition names are suite text: a '$' must print, not start mathtext
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from ..conditions import CLEAN, REFERENCE, parse_condition  # noqa: E402
from ..results import PLOTS_DIR  # noqa: E402
from .analysis import Analysis  # noqa: E402
from .rundata import RunData  # noqa: E402

DPI = 110
# Okabe & Ito (2008) without black (the reference's) and yellow (unreadable on white), then Tol's
# "muted" scheme: both stay distinguishable under the common colour-vision deficiencies.
METHOD_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
                 "#882255", "#44AA99", "#999933", "#332288", "#AA4499", "#117733", "#88CCEE", "#DDCC77")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
REFERENCE_COLOR = "#000000"
NEUTRAL = "#9a9a9a"  # an interval that includes zero
KIND_MARKERS = {"clean": "o", "image": "s", "text": "^", "image+text": "D"}
PAGE_WIDTH_IN = 7.3  # A4 less the report's print margins: wider figures are scaled down in the PDF
MAX_PANEL_ROWS = 3  # small multiples beyond this many rows are split into further figures


@dataclass
class Plot:
    name: str  # file stem in plots/
    title: str
    caption: str
    path: Path | None = None


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    lw: float
    ms: float
    zorder: int


def method_styles(methods: list[str], reference: str | None = REFERENCE) -> dict[str, Style]:
    """One colour and marker per method, fixed by its place in the suite's method list, so a method
    looks the same in every figure; the reference is black, thicker and drawn on top."""
    out, k = {}, 0
    for m in methods:
        if m == reference:
            out[m] = Style(REFERENCE_COLOR, "o", 2.4, 5.0, 4)
        else:
            out[m] = Style(METHOD_COLORS[k % len(METHOD_COLORS)], MARKERS[k % len(MARKERS)], 1.3, 4.0, 3)
            k += 1
    return out


def _styles(analysis) -> dict[str, Style]:
    return method_styles(list(analysis.methods), getattr(analysis, "reference", REFERENCE))


def family_order(families) -> list[str]:
    """Families in suite order, image corruptions first, then question perturbations, then crossed."""
    rank = {"image": 0, "text": 1}
    return sorted(dict.fromkeys(families), key=lambda f: 2 if "+" in f else rank.get(f.split(":", 1)[0], 2))


def _families(analysis: Analysis) -> list[str]:
    return family_order(r["family"] for r in analysis.accuracy if r["family"] is not None)


def _dodge(k: int, n: int) -> float:
    """Horizontal offset of the k-th of n series around a categorical tick, so error bars do not overlap."""
    return 0.0 if n <= 1 else (k / (n - 1) - 0.5) * min(0.5, 0.1 * n)


def _series(ax, xs: list[int], pts: list[dict], style: Style, label: str, k: int, n: int) -> None:
    """One method's accuracies (%) at categorical positions, with its CIs as error bars."""
    x = np.array(xs, dtype=float) + _dodge(k, n)
    y = np.array([100 * r["accuracy"] for r in pts])
    lo = np.array([np.nan if r["lo"] is None else 100 * r["lo"] for r in pts])
    hi = np.array([np.nan if r["hi"] is None else 100 * r["hi"] for r in pts])
    ax.plot(x, y, color=style.color, lw=style.lw, marker=style.marker, ms=style.ms, zorder=style.zorder, label=label)
    ok = ~np.isnan(lo) & ~np.isnan(hi)
    if ok.any():
        ax.errorbar(x[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt="none", ecolor=style.color,
                    elinewidth=0.9 if style.color != REFERENCE_COLOR else 1.4, capsize=2, alpha=0.8,
                    zorder=style.zorder)


def _categorical_axis(ax, severities: list[int]) -> None:
    ax.set_xticks(range(len(severities) + 1), ["clean"] + [str(s) for s in severities])
    ax.set_xlim(-0.5, len(severities) + 0.5)
    ax.grid(axis="x", visible=False)


def _legend_on_top(fig, axes, n_methods: int) -> None:
    """The methods' legend above the panels, in as many columns as the figure's width holds."""
    handles, labels = axes[0].get_legend_handles_labels()
    longest = max((len(lb) for lb in labels), default=4)
    per_entry_in = 0.4 + 0.062 * longest  # marker, gap and label at fontsize 8
    ncol = max(1, min(n_methods, int(fig.get_figwidth() // per_entry_in)))
    fig.legend(handles, labels, loc="outside upper center", ncol=ncol, fontsize=8, frameon=False)


def plot_severity_headline(analysis: Analysis):
    """The headline figure: per kind of condition (image corruptions, question perturbations, crossed
    conditions), mean accuracy over its conditions against severity, one line per method, CIs as
    error bars; severity is categorical and starts at the clean accuracy."""
    curve = [r for r in analysis.severity_curve if r["accuracy"] is not None]
    if not curve:
        return None
    from .analysis import KIND_NAMES, KINDS

    styles = _styles(analysis)
    clean = {r["method"]: r for r in analysis.kind_accuracy if r["kind"] == "clean" and r["accuracy"] is not None}
    kinds = [k for k in KINDS if any(r["kind"] == k for r in curve)]
    width = min(PAGE_WIDTH_IN, max(4.2, 1.2 + 2.9 * len(kinds)))
    fig, axes = plt.subplots(1, len(kinds), figsize=(width, 3.1), sharey=True, squeeze=False, layout="constrained")
    for ax, kind in zip(axes[0], kinds):
        sevs = sorted({r["severity"] for r in curve if r["kind"] == kind})
        n_cond = max(r["n_conditions"] for r in curve if r["kind"] == kind)
        for k, m in enumerate(analysis.methods):
            pts = ([clean[m]] if m in clean else []) + sorted(
                (r for r in curve if r["kind"] == kind and r["method"] == m), key=lambda r: r["severity"])
            xs = ([0] if m in clean else []) + [1 + sevs.index(r["severity"]) for r in pts[1 if m in clean else 0:]]
            if pts:
                _series(ax, xs, pts, styles[m], m, k, len(analysis.methods))
        _categorical_axis(ax, sevs)
        what = "the crossed condition" if kind == "image+text" else KIND_NAMES[kind].rstrip("s")
        ax.set_title(f"{KIND_NAMES[kind]} (mean of {n_cond})" if n_cond > 1 else f"{KIND_NAMES[kind]}", fontsize=9)
        ax.set_xlabel("question perturbation severity" if kind == "image+text" else f"{what} severity", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("accuracy (%)", fontsize=8)
    _legend_on_top(fig, axes[0], len(analysis.methods))
    return fig


def plot_accuracy_vs_severity(analysis: Analysis):
    """One panel per family (an image corruption, a question perturbation, ...): accuracy (%) against
    severity on a categorical axis, a line per method, CIs as error bars. Returns a figure, or a list
    of figures of at most MAX_PANEL_ROWS rows each when the run has many families."""
    fams = _families(analysis)
    if not fams:
        return None
    styles = _styles(analysis)
    clean = {r["method"]: r for r in analysis.accuracy if r["condition"] == CLEAN and r["accuracy"] is not None}
    ncols = min(4, len(fams))
    per_fig = ncols * MAX_PANEL_ROWS
    figs = []
    for start in range(0, len(fams), per_fig):
        chunk = fams[start:start + per_fig]
        nrows = math.ceil(len(chunk) / ncols)
        size = (min(PAGE_WIDTH_IN, max(3.6, 0.6 + 1.9 * ncols)), 0.7 + 2.1 * nrows)
        fig, axes = plt.subplots(nrows, ncols, figsize=size,
                                 sharey=True, squeeze=False, layout="constrained")
        for ax, fam in zip(axes.flat, chunk):
            rows = [r for r in analysis.accuracy if r["family"] == fam and r["accuracy"] is not None]
            sevs = sorted({r["severity"] for r in rows})
            for k, m in enumerate(analysis.methods):
                pts = sorted((r for r in rows if r["method"] == m), key=lambda r: r["severity"])
                xs = [1 + sevs.index(r["severity"]) for r in pts]
                if m in clean:
                    pts, xs = [clean[m]] + pts, [0] + xs
                if pts:
                    _series(ax, xs, pts, styles[m], m, k, len(analysis.methods))
            _categorical_axis(ax, sevs)
            ax.set_title(textwrap.fill(fam, 28), fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes[:, 0]:
            ax.set_ylabel("accuracy (%)", fontsize=8)
        for ax in axes[-1]:
            ax.set_xlabel("severity", fontsize=8)
        for ax in list(axes.flat)[len(chunk):]:
            ax.axis("off")
        _legend_on_top(fig, axes.flat, len(analysis.methods))
        figs.append(fig)
    return figs[0] if len(figs) == 1 else figs


def plot_difference_heatmap(analysis: Analysis):
    """Per pruned method, (method - full) in points by family x severity; `*` marks a difference
    significant after the family-wise correction. One panel per method, titles wrapped to the panel."""
    comps = [c for c in analysis.comparisons if c["family"] is not None]
    if not comps:
        return None
    methods = list(dict.fromkeys(c["method"] for c in comps))
    fams = family_order(c["family"] for c in comps)
    sevs = sorted({c["severity"] for c in comps})
    ncols = min(len(methods), 5)
    nrows = math.ceil(len(methods) / ncols)
    label_in = 0.065 * max(len(f) for f in fams) + 0.3
    panel_w = max(1.25, 0.42 * len(sevs))
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharey=True, layout="constrained",
                             figsize=(min(PAGE_WIDTH_IN + 1.5, label_in + 0.9 + panel_w * ncols),
                                      0.8 + nrows * (0.55 + 0.24 * len(fams))))
    lim = max(1.0, max(abs(100 * c["diff"]) for c in comps if c["diff"] is not None))
    for ax, m in zip(axes.flat, methods):
        grid = np.full((len(fams), len(sevs)), np.nan)
        marks = np.full(grid.shape, "", dtype=object)
        for c in comps:
            if c["method"] == m and c["diff"] is not None:
                i, j = fams.index(c["family"]), sevs.index(c["severity"])
                grid[i, j] = 100 * c["diff"]
                marks[i, j] = f"{grid[i, j]:+.0f}" + ("*" if c["significant"] else "")
        sns.heatmap(grid, ax=ax, cmap="RdBu", vmin=-lim, vmax=lim, center=0, annot=marks, fmt="",
                    annot_kws={"fontsize": 6}, cbar=False, xticklabels=sevs, yticklabels=fams)
        ax.set_title(textwrap.fill(m, max(8, int(panel_w * 11))), fontsize=8)
        ax.set_xlabel("severity", fontsize=7)
        ax.tick_params(labelsize=6, rotation=0)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    mappable = axes.flat[0].collections[0]
    cbar = fig.colorbar(mappable, ax=axes, shrink=0.6, pad=0.02)
    cbar.set_label(f"points vs {analysis.reference or 'the reference'}", fontsize=7)
    cbar.ax.tick_params(labelsize=6)
    return fig


def plot_did_forest(analysis: Analysis):
    """Difference-in-differences D(method) - D(full) with 95% CIs, a panel per pruned method: first
    per kind (image corruptions, question perturbations, crossed conditions), then per family (mean
    over its severities). Above 0 the pruned model loses more than the full model does; CIs that
    include 0 are grey."""
    rows = [d for d in analysis.did if d["scope"] in ("kind", "family") and d["did"] is not None]
    if not rows:
        return None
    methods = list(dict.fromkeys(d["method"] for d in rows))
    kinds = list(dict.fromkeys(d["name"] for d in rows if d["scope"] == "kind"))
    fams = family_order(d["name"] for d in rows if d["scope"] == "family")
    if len(fams) == 1 and len(kinds) == 1:
        fams = []  # one family is its kind: the same numbers twice
    names = kinds + fams
    styles = _styles(analysis)
    ncols = min(len(methods), 5)
    nrows = math.ceil(len(methods) / ncols)
    label_in = 0.065 * max(len(n) for n in names) + 0.3
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharey=True, sharex=True, layout="constrained",
                             figsize=(min(PAGE_WIDTH_IN, label_in + 1.5 * ncols),
                                      0.9 + nrows * (0.4 + 0.2 * len(names))))
    ypos = {n: i + (0.6 if i >= len(kinds) and kinds and fams else 0) for i, n in enumerate(names)}
    for ax, m in zip(axes.flat, methods):
        for d in rows:
            if d["method"] != m or d["name"] not in ypos:
                continue
            zero_in = d["lo"] is None or d["hi"] is None or d["lo"] <= 0 <= d["hi"]
            color = NEUTRAL if zero_in else styles[m].color
            y, x = ypos[d["name"]], 100 * d["did"]
            if d["lo"] is not None and d["hi"] is not None:
                ax.errorbar(x, y, xerr=[[x - 100 * d["lo"]], [100 * d["hi"] - x]], fmt="none", ecolor=color,
                            elinewidth=1.2 if d["scope"] == "kind" else 0.9, capsize=2)
            ax.plot(x, y, marker=styles[m].marker, ms=5 if d["scope"] == "kind" else 3.5, color=color,
                    mfc=color if not zero_in else "white", mew=1.0)
        ax.axvline(0, color="0.35", lw=0.8, ls="--")
        if kinds and fams:
            ax.axhline(len(kinds) - 0.2, color="0.75", lw=0.6)
        ax.set_title(textwrap.fill(m, 24), fontsize=8, color=styles[m].color)
        ax.tick_params(labelsize=6)
        ax.grid(axis="y", visible=False)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    axes[0, 0].set_yticks([ypos[n] for n in names], names)
    for lab in axes[0, 0].get_yticklabels():
        if lab.get_text() in kinds:
            lab.set_fontweight("bold")
    axes[0, 0].invert_yaxis()
    fig.supxlabel("D(method) - D(full), points; D = clean accuracy - accuracy under the condition", fontsize=7)
    return fig


def plot_accuracy_vs_cost(analysis: Analysis):
    """Accuracy against the compute ratio per method, clean and per kind of condition; the Pareto
    front (no other method is both cheaper and more accurate) of the clean points is drawn as a step line."""
    pts = [c for c in analysis.cost if c["cost_ratio"] is not None]
    if not pts:
        return None
    measured = all(c["measured_flops"] for c in pts)
    return _accuracy_against(analysis, [(c["cost_ratio"], c) for c in pts],
                             "FLOPs ratio vs full" if measured else
                             "kept visual tokens / full's (no measured FLOPs in this run)")


def plot_accuracy_vs_latency(analysis: Analysis):
    """As `plot_accuracy_vs_cost`, against the measured end-to-end latency ratio (runs with
    `cost: {latency: true}`; the clean condition's measurement)."""
    pts = [(c["latency_ratio"], c) for c in analysis.cost if c.get("latency_ratio") is not None]
    if len(pts) < 2:
        return None
    return _accuracy_against(analysis, pts, "measured end-to-end latency ratio vs full (vision + selection + generate)")


def _accuracy_against(analysis, pts: list[tuple[float, dict]], xlabel: str):
    """Colour = method (legend at the right, no labels on the points, which collide when methods cost
    the same), marker = clean or a kind of condition (a second legend)."""
    from matplotlib.lines import Line2D

    from .analysis import KIND_NAMES

    styles = _styles(analysis)
    kind_keys = [(k, KIND_NAMES[k]) for k in ("image", "text", "image+text") if any(KIND_NAMES[k] in c for _, c in pts)]
    series = [("clean", "clean")] + (kind_keys or [("all", "corrupted")])
    fig, ax = plt.subplots(figsize=(6.8, 3.8), layout="constrained")
    shift = _same_cost_offsets(pts)
    for kind, key in series:
        xs = [(x, 100 * c[key], c["method"]) for x, c in pts if c.get(key) is not None]
        for x, y, m in xs:
            ax.scatter(x + shift[m], y, marker=KIND_MARKERS.get(kind, "s"), color=styles[m].color, s=40, zorder=3,
                       edgecolors="white", linewidths=0.6)
        if kind == "clean":
            front = _pareto([(x, y) for x, y, _ in xs])
            if front:
                ax.step(*zip(*front), where="post", color="0.55", lw=0.9, zorder=1)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("accuracy (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    by_method = [Line2D([], [], ls="", marker="o", color=styles[m].color, label=m)
                 for m in analysis.methods if any(c["method"] == m for _, c in pts)]
    by_kind = [Line2D([], [], ls="", marker=KIND_MARKERS.get(k, "s"), color="0.3",
                      label="mean over all non-clean conditions" if k == "all" else key) for k, key in series]
    by_kind.append(Line2D([], [], color="0.55", lw=0.9, label="Pareto front (clean)"))
    fig.legend(handles=by_method, title="method", loc="outside right upper", fontsize=7, title_fontsize=7,
                       frameon=False)
    fig.legend(handles=by_kind, title="accuracy on", loc="outside right lower", fontsize=7, title_fontsize=7,
               frameon=False)
    return fig


def _same_cost_offsets(pts: list[tuple[float, dict]]) -> dict[str, float]:
    """A small horizontal offset per method among methods of exactly the same cost, so that equal
    accuracies do not hide one another (1.2% of the axis span apart; 0 for a method alone at its cost)."""
    xs = [x for x, _ in pts]
    step = 0.012 * ((max(xs) - min(xs)) or 1.0)
    out = {}
    for x in dict.fromkeys(xs):
        same = [c["method"] for xx, c in pts if xx == x]
        for k, m in enumerate(same):
            out[m] = (k - (len(same) - 1) / 2) * step
    return out


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot_token_stability(analysis: Analysis):
    """Distribution of per-example Jaccard(kept clean, kept under the condition) per method and
    severity, a panel per kind of condition."""
    if not analysis.stability:
        return None
    import pandas as pd

    from .analysis import KIND_NAMES

    df = pd.DataFrame(analysis.stability)
    parsed = [parse_condition(c) for c in df["condition"]]
    df["severity"] = [p.severity for p in parsed]
    df["kind"] = [p.kind for p in parsed]
    kinds = [k for k in ("image", "text", "image+text") if k in set(df["kind"])]
    fig, axes = plt.subplots(1, len(kinds), figsize=(min(PAGE_WIDTH_IN, 1.5 + 3.2 * len(kinds)), 3.2),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, kind in zip(axes[0], kinds):
        sns.boxplot(data=df[df["kind"] == kind], x="method", y="jaccard", hue="severity", ax=ax, fliersize=1,
                    linewidth=0.8, palette="crest")
        ax.set_title(KIND_NAMES[kind], fontsize=8)
        ax.set_xlabel("")
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=6)
        for lab in ax.get_xticklabels():
            lab.set_rotation(30)
            lab.set_horizontalalignment("right")
        ax.legend(title="severity", fontsize=6, title_fontsize=6)
    axes[0, 0].set_ylabel("Jaccard of kept token sets, clean vs condition", fontsize=7)
    return fig


def plot_kept_overlays(run: RunData, analysis: Analysis, n_examples: int = 2):
    """Every method side by side on a few examples, clean and under an image corruption: the kept
    tokens drawn on the model's input images (regenerated exactly as the engine made them), the
    question, the reference answers and each method's answer under its panel.
    Returns (figure or None, caption or the reason there is none)."""
    from .overlays import overlay_panels

    return overlay_panels(run, analysis, n_examples)


HEADLINE = ("severity_headline", "Accuracy against severity, every method", plot_severity_headline,
            "Mean accuracy (%) over the conditions of each kind at each severity, clean first, one line per "
            "method ({reference} black); bars: {confidence} clustered-bootstrap CIs, not adjusted for multiplicity.")
PLOTS = (
    ("accuracy_vs_severity", "Accuracy against severity, per family", plot_accuracy_vs_severity,
     "Accuracy (%) per image corruption, question perturbation or crossed family against severity (clean first), "
     "one line per method; bars: {confidence} clustered-bootstrap CIs."),
    ("did_forest", "Pruning and robustness: difference-in-differences", plot_did_forest,
     "D(method) - D({reference}) with D = clean accuracy - accuracy under the condition: per kind of condition "
     "(bold) and per family (mean over its severities), {confidence} CIs; grey: the CI includes 0. Above 0 the "
     "pruned model loses more points than {reference} does; below 0 it loses fewer, which a model that starts "
     "lower often does: read it beside the relative robustness in the summary."),
    ("difference_heatmap", "Pruned minus full, by family and severity", plot_difference_heatmap,
     "Accuracy of each pruned method minus {reference}'s at the same condition, in points; * = significant after "
     "the {correction} correction."),
    ("accuracy_vs_cost", "Accuracy against compute", plot_accuracy_vs_cost,
     "Accuracy against the compute ratio: colour is the method, the marker says clean or which kind of condition "
     "(mean over its conditions); methods of the same cost are drawn slightly apart; the grey step line is the "
     "Pareto front of the clean points."),
    ("accuracy_vs_latency", "Accuracy against measured latency", plot_accuracy_vs_latency,
     "Accuracy against the measured end-to-end latency ratio to {reference} (vision pass + selection + generate "
     "on the sampled batches): colour is the method, the marker says clean or which kind of condition."),
    ("token_stability", "Token-set stability", plot_token_stability,
     "Per example: Jaccard similarity between the token sets kept on the clean input and under the condition."),
)


def save_plots(run: RunData, analysis: Analysis, out_dir: Path | None = None) -> tuple[list[Plot], list[str]]:
    """Write every available figure as PNG into `out_dir` (default `<run_dir>/plots/`), the headline
    first; PNGs left there by an earlier build that this one does not write are removed.
    Returns the written plots and notes on the figures that were skipped."""
    out_dir = Path(out_dir or run.run_dir / PLOTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    fill = {"reference": analysis.reference or "the reference", "correction": analysis.correction_name,
            "confidence": f"{100 * analysis.config['confidence']:g}%"}
    plots, notes = [], []
    for name, title, fn, caption in (HEADLINE,) + PLOTS:
        figs = fn(analysis)
        if figs is None:
            notes.append(f"{title}: skipped (the run has no data for it).")
            continue
        figs = figs if isinstance(figs, list) else [figs]
        for i, fig in enumerate(figs, 1):
            part = f" (part {i} of {len(figs)})" if len(figs) > 1 else ""
            plots.append(_save(fig, Plot(name if i == 1 else f"{name}_{i}", title + part, caption.format(**fill)),
                               out_dir))
    fig, note = plot_kept_overlays(run, analysis)
    if fig is not None:
        plots.append(_save(fig, Plot("kept_overlays", "Every method on the same examples", note), out_dir))
    elif note:
        notes.append(f"Kept-token overlays: skipped ({note}).")
    written = {p.path.name for p in plots}
    for old in out_dir.glob("*.png"):
        if old.name not in written:
            old.unlink()
    return plots, notes


def _save(fig, plot: Plot, out_dir: Path) -> Plot:
    plot.path = out_dir / f"{plot.name}.png"
    fig.savefig(plot.path, dpi=DPI)
    plt.close(fig)
    return plot
