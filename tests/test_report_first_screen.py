"""The report's first screen and its figures: every method's absolute accuracy per kind of condition,
relative robustness beside the DiD, the sentence on unadjusted CIs and corrected tests, answers cut
at the token limit, a colour-blind-safe palette, categorical severity axes, labels that do not
collide, overlays of every method, and no rebuild when nothing changed."""
import json
import re

import numpy as np
import pytest

from tests.helpers.fake_report_runs import CUT_ANSWER, table_rows, write_kinds_run
from tests.helpers.fake_runs import write_fake_run
from tests.helpers.figure_text import collisions, outside
from robust_atp.report.analysis import analyze
from robust_atp.report.html import build_report
from robust_atp.report.rundata import load_run
from robust_atp.conditions import parse_condition

N_BOOT = 300
KINDS = {"image": "image corruptions", "text": "question perturbations", "image+text": "crossed conditions"}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    run_dir = write_kinds_run(tmp_path_factory.mktemp("first") / "run", n=30)
    html = build_report(run_dir, ("html",), n_boot=N_BOOT)["html"].read_text()
    run = load_run(run_dir)
    return run, analyze(run, n_boot=N_BOOT), html


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Holm instead of max-T, no `truncated` field, no kept indices."""
    run_dir = write_kinds_run(tmp_path_factory.mktemp("plain") / "run", n=12, truncated=False, correction="holm",
                              kept_indices=False)
    return run_dir, build_report(run_dir, ("html",), n_boot=200)["html"].read_text()


def _kind_means(run) -> dict:
    """(kind, method) -> mean score over the kind's conditions, from samples.jsonl directly."""
    scores: dict = {}
    for s in run.samples:
        scores.setdefault((parse_condition(s["condition"]).kind, s["method"]), []).append(s["score"])
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _est(cell: str) -> float:
    return float(cell.split()[0])


def test_first_table_has_every_methods_absolute_accuracy_per_kind(kinds):
    run, _, html = kinds
    rows = table_rows(html, "accuracy-summary")
    assert rows[1] == ["clean"] + list(KINDS.values())
    body = rows[2:]
    assert [r[0] for r in body] == ["full", "atp@0.25", "random@0.25"]
    means = _kind_means(run)
    for r in body:
        for cell, kind in zip(r[2:], ["clean"] + list(KINDS)):
            est, lo, hi = (float(x) for x in re.fullmatch(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", cell).groups())
            assert est == pytest.approx(100 * means[kind, r[0]], abs=0.051), (r[0], kind)
            assert lo <= est <= hi
    assert '<tr class="ref"><td class="l">full</td>' in html  # the reference row is set apart


def test_one_sentence_says_cis_are_unadjusted_and_names_the_correction_used(kinds, plain):
    _, analysis, html = kinds
    sentence = re.search(r'<p class="lead" id="ci-sentence">(.*?)</p>', html, re.S).group(1)
    n = len(analysis.comparisons)
    assert "not adjusted for multiplicity" in sentence
    assert f"corrected for the {n} comparisons with the Westfall-Young max-T step-down" in sentence
    sentence = re.search(r'<p class="lead" id="ci-sentence">(.*?)</p>', plain[1], re.S).group(1)
    assert "with the Holm" in sentence and "max-T" not in sentence


def test_relative_robustness_sits_beside_the_did_with_the_misleading_sign_marked(kinds):
    run, _, html = kinds
    rows = table_rows(html, "robustness-table")
    assert rows[0][2:] == list(KINDS.values())
    assert rows[1] == ["Δ vs full", "DiD", "relative robustness"] * 3
    means = _kind_means(run)
    for r in rows[3:]:
        m = r[0]
        for j, kind in enumerate(KINDS):
            diff, did, rel = r[2 + 3 * j: 5 + 3 * j]
            expect_did = (means["clean", m] - means[kind, m]) - (means["clean", "full"] - means[kind, "full"])
            assert _est(did) == pytest.approx(100 * expect_did, abs=0.051)
            assert _est(diff) == pytest.approx(100 * (means[kind, m] - means[kind, "full"]), abs=0.051)
            mine, theirs = means[kind, m] / means["clean", m], means[kind, "full"] / means["clean", "full"]
            assert rel == f"{mine:.2f} vs {theirs:.2f}"
            assert ("†" in did) == (expect_did < 0 and mine < theirs)
    full = rows[2]
    assert full[0] == "full" and full[2:4] == ["0", "0"]  # full against itself
    assert full[4] == f"{means['image', 'full'] / means['clean', 'full']:.2f}"


def test_answers_cut_at_the_token_limit_are_counted_and_flagged(kinds):
    run, analysis, html = kinds
    rows = table_rows(html, "truncation-table")
    assert rows[0] == ["method", "clean"] + list(KINDS.values())
    expect: dict = {}
    for s in run.samples:
        t = expect.setdefault((s["method"], parse_condition(s["condition"]).kind), [0, 0])
        t[0] += s["truncated"]
        t[1] += 1
    for r in rows[1:]:
        for cell, kind in zip(r[1:], ["clean"] + list(KINDS)):
            assert cell == f"{expect[r[0], kind][0]} of {expect[r[0], kind][1]}"
    total = sum(v[0] for v in expect.values())
    assert total > 0 and f"{total} of {len(run.samples)} answers" in html and "max_new_tokens = 3" in html
    lost = table_rows(html, "lost-examples")[1:]
    cut = [r for r in lost if r[5].startswith(CUT_ANSWER)]
    assert cut and all(r[5] == f"{CUT_ANSWER} cut at the token limit" for r in cut)
    assert all("cut at the token limit" not in r[5] for r in lost if r not in cut)


def test_no_truncated_field_no_word_about_it(plain):
    run_dir, html = plain
    assert analyze(load_run(run_dir), n_boot=200).truncation is None
    assert "token limit" not in html and 'id="truncation' not in html


def test_one_vocabulary_for_the_three_kinds(kinds):
    _, _, html = kinds
    body = re.sub(r"<pre>.*?</pre>", "", html, flags=re.S)
    for name in KINDS.values():
        assert name in body
    assert not re.search(r"\bcorrupted\b", body, re.I)


# ----------------------------------------------------------------------------- figures

def _lin(hex_color: str) -> np.ndarray:
    from matplotlib.colors import to_rgb

    c = np.array(to_rgb(hex_color))
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# Machado, Oliveira & Fernandes (2009), severity 1, on linear RGB
CVD = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


def test_the_palette_keeps_seven_methods_apart_under_colour_vision_deficiencies():
    from robust_atp.report.plots import method_styles

    styles = method_styles(["full"] + [f"m{i}" for i in range(6)])
    assert styles["full"].color == "#000000" and all(styles["full"].lw > s.lw for m, s in styles.items() if m != "full")
    assert method_styles(["m0", "full", "m1"])["m1"] == styles["m1"]  # the reference takes no slot
    colors = [s.color for s in styles.values()]
    for name, matrix in CVD.items():
        seen = [np.clip(np.array(matrix) @ _lin(c), 0, 1) ** (1 / 2.2) for c in colors]
        closest = min(np.linalg.norm(a - b) for i, a in enumerate(seen) for b in seen[i + 1:])
        assert closest > 0.1, name


def _lines(fig) -> dict:
    return {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def test_methods_look_the_same_in_every_figure_and_severity_is_categorical(kinds):
    from robust_atp.report.plots import plot_accuracy_vs_severity, plot_severity_headline

    _, analysis, _ = kinds
    head, fams = plot_severity_headline(analysis), plot_accuracy_vs_severity(analysis)
    a, b = _lines(head), _lines(fams)
    assert set(a) == set(b) == set(analysis.methods)
    assert all(a[m].get_color() == b[m].get_color() and a[m].get_marker() == b[m].get_marker() for m in a)
    assert [ax.get_title() for ax in head.axes] == ["image corruptions (mean of 2)",
                                                    "question perturbations", "crossed conditions"]
    ticks = [[t.get_text() for t in ax.get_xticklabels()] for ax in head.axes]
    assert ticks == [["clean", "1", "3"], ["clean", "1", "3"], ["clean", "1"]]
    for ax in head.axes + fams.axes:
        for ln in ax.get_lines():
            x = np.asarray(ln.get_xdata(), dtype=float)
            assert np.all(np.abs(x - np.round(x)) <= 0.25)  # on a category, dodged at most a quarter step
    assert collisions(head) == [] and collisions(fams) == []


def test_a_single_severity_is_one_category_not_a_continuous_axis(tmp_path):
    from robust_atp.report.plots import plot_severity_headline

    run = load_run(write_fake_run(tmp_path / "run", n=12, conditions=["clean", "image:fog@3"], kept_indices=False))
    fig = plot_severity_headline(analyze(run, n_boot=200))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["clean", "3"] and list(ax.get_xticks()) == [0, 1]


def test_no_figure_has_colliding_labels_and_the_cost_plot_uses_legends(kinds):
    from robust_atp.report import plots as P

    _, analysis, _ = kinds
    for name, _, fn, _ in (P.HEADLINE,) + P.PLOTS:
        figs = fn(analysis)
        for fig in figs if isinstance(figs, list) else [figs] if figs is not None else []:
            assert collisions(fig) == [] and outside(fig) == [], name
            P.plt.close(fig)
    fig = P.plot_accuracy_vs_cost(analysis)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "accuracy (%)" and len(ax.texts) == 0
    points = [(*np.round(xy, 6), len(coll.get_paths()[0].vertices)) for coll in ax.collections
              for xy in coll.get_offsets()]  # (x, y, which marker)
    assert len(points) == 3 * 4 and len(set(points)) == len(points)  # equal costs and accuracies stay visible
    legend_text = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    assert set(analysis.methods) | {"clean"} | set(KINDS.values()) <= legend_text


def test_overlays_show_every_method_with_question_answers_and_predictions(kinds):
    from robust_atp.report.plots import plot_kept_overlays

    run, analysis, _ = kinds
    fig, caption = plot_kept_overlays(run, analysis)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2 * 2 * len(run.methods)  # 2 examples x (clean, one image corruption) x methods
    titles = [ax.get_title() for ax in image_axes if ax.get_title()]
    assert titles == run.methods * 2
    by = {(s["example_id"], s["condition"], s["method"]): s for s in run.samples}
    questions = {s["question"]: s for s in run.samples}
    heads = [sf._suptitle.get_text() for sf in fig.subfigs]
    for head in heads:
        q_line, answers_line = head.split("\nanswers: ")
        question = " ".join(q_line.removeprefix("Q: ").split())
        assert question in questions and answers_line == ", ".join(dict.fromkeys(questions[question]["answers"]))
        assert all(len(line) <= int(fig.get_figwidth() * 15) for line in head.splitlines())
    assert all(sf._suptitle.get_rotation() == 0 for sf in fig.subfigs)
    labels = [ax.get_xlabel() for ax in image_axes]
    assert all(lb[0] in "✓✗" for lb in labels)
    predictions = {str(s["prediction"]) for s in by.values()}
    assert all(" ".join(lb[2:].split("\n(")[0].split()) in predictions for lb in labels)
    assert "image:gaussian_noise@3" in caption and collisions(fig) == [] and outside(fig) == []


# ----------------------------------------------------------------------------- no rebuild

@pytest.mark.slow
def test_an_unchanged_run_is_not_rebuilt_and_a_changed_one_is(tmp_path):
    run = write_fake_run(tmp_path / "run", n=12, kept_indices=False)
    logs = []
    first = build_report(run, ("html",), n_boot=200, log=logs.append)
    stamp = {p: p.stat().st_mtime_ns for p in [first["html"], *(run / "plots").glob("*.png")]}
    res = json.loads((run / "results.json").read_text())  # a resumed run rewrites bookkeeping only
    res["manifest"].update(created="2030-01-01T00:00:00+00:00", engine={"units_run": 0})
    (run / "results.json").write_text(json.dumps(res))
    again = build_report(run, ("html",), n_boot=200, log=logs.append)
    assert again == first and logs[-1].startswith("report unchanged")
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    build_report(run, ("html",), n_boot=300, log=logs.append)  # another report setting
    assert logs[-1].startswith("report: ") and first["html"].stat().st_mtime_ns != stamp[first["html"]]
    build_report(run, ("html",), n_boot=300, log=logs.append)
    assert logs[-1].startswith("report unchanged")
    lines = (run / "samples.jsonl").read_text().splitlines()
    s = json.loads(lines[0])
    s["score"] = 1.0 - s["score"]
    (run / "samples.jsonl").write_text("\n".join([json.dumps(s)] + lines[1:]) + "\n")
    build_report(run, ("html",), n_boot=300, log=logs.append)
    assert logs[-1].startswith("report: ")
    first["html"].unlink()  # a missing output is rebuilt
    build_report(run, ("html",), n_boot=300, log=logs.append)
    assert logs[-1].startswith("report: ") and first["html"].is_file()


def test_a_results_json_that_is_no_run_is_one_line_not_a_traceback(tmp_path, capsys):
    from robust_atp.report.__main__ import main

    (tmp_path / "results.json").write_text("[1, 2]")
    (tmp_path / "samples.jsonl").write_text("{}\n")
    assert main([str(tmp_path), "--formats", "html"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'results.json'}: rows: missing (not a run's results.json)"
