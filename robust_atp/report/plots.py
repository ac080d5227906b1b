"""The report's figures (seaborn on matplotlib's Agg backend). Each `plot_*` returns a Figure, or None
when the run lacks what the figure needs; `save_plots` writes PNGs into `<run_dir>/plots/`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: reports are built on servers and in CI
# method labels and condition names are suite text: a '$' must print, not start mathtext
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from ..conditions import CLEAN, parse_condition  # noqa: E402
from ..results import PLOTS_DIR  # noqa: E402
from .analysis import Analysis  # noqa: E402
from .rundata import RunData  # noqa: E402

DPI = 110


@dataclass
class Plot:
    name: str  # file stem in plots/
    title: str
    caption: str
    path: Path | None = None


def _palette(methods: list[str]) -> dict[str, tuple]:
    return dict(zip(methods, sns.color_palette("colorblind", len(methods))))


def _families(analysis: Analysis) -> list[str]:
    return list(dict.fromkeys(r["family"] for r in analysis.accuracy if r["family"] is not None))


def plot_accuracy_vs_severity(analysis: Analysis):
    """One panel per corruption family: accuracy (%) against severity, a line per method, 95% CI bands;
    severity 0 is the clean accuracy."""
    fams = _families(analysis)
    if not fams:
        return None
    colors = _palette(analysis.methods)
    clean = {r["method"]: r for r in analysis.accuracy if r["condition"] == CLEAN}
    ncols = min(5, len(fams))
    nrows = math.ceil(len(fams) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 2.6 * nrows + 0.6), sharey=True, squeeze=False)
    for ax, fam in zip(axes.flat, fams):
        for m in analysis.methods:
            pts = sorted(([clean[m]] if m in clean else []) +
                         [r for r in analysis.accuracy if r["family"] == fam and r["method"] == m],
                         key=lambda r: r["severity"])
            pts = [r for r in pts if r["accuracy"] is not None]
            if not pts:
                continue
            x = [r["severity"] for r in pts]
            ax.plot(x, [100 * r["accuracy"] for r in pts], marker="o", ms=3, lw=1.4, color=colors[m], label=m)
            ax.fill_between(x, [100 * r["lo"] for r in pts], [100 * r["hi"] for r in pts], color=colors[m], alpha=0.15)
        ax.set_title(fam, fontsize=9)
        ax.set_xlabel("severity (0 = clean)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in list(axes.flat)[len(fams):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.6 * nrows + 0.6)))
    return fig


def plot_difference_heatmap(analysis: Analysis):
    """Per pruned method, (method - full) in points by corruption family x severity; `*` marks a
    difference significant after the family-wise correction."""
    comps = [c for c in analysis.comparisons if c["family"] is not None]
    if not comps:
        return None
    methods = list(dict.fromkeys(c["method"] for c in comps))
    fams = list(dict.fromkeys(c["family"] for c in comps))
    sevs = sorted({c["severity"] for c in comps})
    fig, axes = plt.subplots(1, len(methods), figsize=(1.0 + 0.55 * len(sevs) * len(methods) + 1.2 * len(methods),
                                                       1.2 + 0.28 * len(fams)), squeeze=False, sharey=True)
    lim = max(1.0, max(abs(100 * c["diff"]) for c in comps if c["diff"] is not None))
    for ax, m in zip(axes[0], methods):
        grid = np.full((len(fams), len(sevs)), np.nan)
        marks = np.full(grid.shape, "", dtype=object)
        for c in comps:
            if c["method"] == m and c["diff"] is not None:
                i, j = fams.index(c["family"]), sevs.index(c["severity"])
                grid[i, j] = 100 * c["diff"]
                marks[i, j] = f"{grid[i, j]:+.0f}" + ("*" if c["significant"] else "")
        sns.heatmap(grid, ax=ax, cmap="RdBu", vmin=-lim, vmax=lim, center=0, annot=marks, fmt="",
                    annot_kws={"fontsize": 6}, cbar=ax is axes[0][-1], xticklabels=sevs, yticklabels=fams,
                    cbar_kws={"label": "points vs full"})
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("severity", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_did_forest(analysis: Analysis):
    """Difference-in-differences D(method) - D(full) per corruption family (mean over its severities)
    and over all corruptions, with 95% CIs; above 0 = the pruned model loses more under corruption
    than the full model (pruning makes it less robust)."""
    rows = [d for d in analysis.did if d["scope"] in ("family", "all") and d["did"] is not None]
    if not rows:
        return None
    methods = list(dict.fromkeys(d["method"] for d in rows))
    names = list(dict.fromkeys(d["name"] for d in rows))
    colors = _palette([analysis.reference] + methods if analysis.reference else methods)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.11 * len(names) * max(1, len(methods)) + 0.1 * len(names)))
    step = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        for d in rows:
            if d["method"] != m:
                continue
            y = names.index(d["name"]) + (k - (len(methods) - 1) / 2) * step
            ax.errorbar(100 * d["did"], y, xerr=[[100 * (d["did"] - d["lo"])], [100 * (d["hi"] - d["did"])]],
                        fmt="o", ms=3, lw=1, color=colors[m], label=m if d["name"] == names[0] else None)
    ax.axvline(0, color="0.4", lw=0.8, ls="--")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("pruning effect on robustness, D(method) - D(full), points (D = clean - corrupted accuracy)",
                  fontsize=8)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_accuracy_vs_cost(analysis: Analysis):
    """Accuracy against the compute ratio per method, clean and mean-corrupted; the Pareto front
    (no other method is both cheaper and more accurate) is drawn as a step line."""
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


def _accuracy_against(analysis: Analysis, pts: list[tuple[float, dict]], xlabel: str):
    colors = _palette(analysis.methods)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key, marker in (("clean", "o"), ("corrupted", "s")):
        xs = [(x, 100 * c[key], c["method"]) for x, c in pts if c[key] is not None]
        for x, y, m in xs:
            ax.scatter(x, y, marker=marker, color=colors[m], s=36, zorder=3)
            ax.annotate(m, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = _pareto([(x, y) for x, y, _ in xs])
        if front:
            ax.step(*zip(*front), where="post", color="0.5", lw=0.9, ls=":" if key == "corrupted" else "-",
                    label=f"Pareto front, {key}")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("accuracy (%)  (o clean, s mean over corruptions)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot_token_stability(analysis: Analysis):
    """Distribution of per-example Jaccard(kept clean, kept corrupted) per method and severity."""
    if not analysis.stability:
        return None
    import pandas as pd

    df = pd.DataFrame(analysis.stability)
    df["severity"] = [parse_condition(c).severity for c in df["condition"]]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    sns.boxplot(data=df, x="method", y="jaccard", hue="severity", ax=ax, fliersize=1, linewidth=0.8,
                palette="crest")
    ax.set_ylabel("Jaccard of kept token sets, clean vs corrupted", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.tick_params(labelsize=7)
    ax.legend(title="severity", fontsize=7, title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_kept_overlays(run: RunData, analysis: Analysis, n_examples: int = 3, n_conditions: int = 3):
    """Kept tokens drawn on the model's input images, clean beside corrupted, for the first pruned
    method that records `kept_indices`. Images are regenerated exactly as the engine made them.
    Returns (figure or None, note or None)."""
    from .overlays import overlay_panels

    return overlay_panels(run, analysis, n_examples, n_conditions)


PLOTS = (
    ("accuracy_vs_severity", "Accuracy against severity", plot_accuracy_vs_severity,
     "Accuracy (%) per corruption against severity (0 = clean), one line per method, shaded: 95% clustered-bootstrap CI."),
    ("difference_heatmap", "Pruned minus full, by corruption and severity", plot_difference_heatmap,
     "Accuracy of each pruned method minus the full model's at the same condition, in points; * = significant after the family-wise correction."),
    ("did_forest", "Pruning and robustness: difference-in-differences", plot_did_forest,
     "D(method) - D(full) with D = clean - corrupted accuracy, per corruption (mean over severities) and overall, "
     "95% CI. Above 0: the pruned model loses more under corruption than the full model does (less robust); "
     "below 0: it loses less."),
    ("accuracy_vs_cost", "Accuracy against compute", plot_accuracy_vs_cost,
     "Clean (o) and mean corrupted (s) accuracy against the compute ratio; the line is the Pareto front."),
    ("accuracy_vs_latency", "Accuracy against measured latency", plot_accuracy_vs_latency,
     "Clean (o) and mean corrupted (s) accuracy against the measured end-to-end latency ratio to the full model "
     "(vision pass + selection + generate on the sampled batches); the line is the Pareto front."),
    ("token_stability", "Token-set stability", plot_token_stability,
     "Per example: Jaccard similarity between the token sets kept on the clean and on the corrupted image."),
)


def save_plots(run: RunData, analysis: Analysis, out_dir: Path | None = None) -> tuple[list[Plot], list[str]]:
    """Write every available figure as PNG into `out_dir` (default `<run_dir>/plots/`).
    Returns the written plots and notes on the figures that were skipped."""
    out_dir = Path(out_dir or run.run_dir / PLOTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    plots, notes = [], []
    for name, title, fn, caption in PLOTS:
        fig = fn(analysis)
        if fig is None:
            notes.append(f"{title}: skipped (the run has no data for it).")
            continue
        plots.append(_save(fig, Plot(name, title, caption), out_dir))
    fig, note = plot_kept_overlays(run, analysis)
    if fig is not None:
        plots.append(_save(fig, Plot("kept_overlays", "Kept tokens, clean beside corrupted",
                                     note or "Bright patches: the visual tokens the method kept."), out_dir))
    elif note:
        notes.append(f"Kept-token overlays: skipped ({note}).")
    return plots, notes


def _save(fig, plot: Plot, out_dir: Path) -> Plot:
    plot.path = out_dir / f"{plot.name}.png"
    fig.savefig(plot.path, dpi=DPI)
    plt.close(fig)
    return plot
