"""The report: analysis tables, plots, a self-contained report.html (checked in headless Chromium),
report.pdf (pages counted), graceful degradation, the CLI, and a real run that builds both."""
import json
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape

from tests.helpers.fake_runs import SCRIPT_QUESTION, write_fake_run
from robust_atp.report.__main__ import main as report_main
from robust_atp.report.analysis import analyze
from robust_atp.report.html import build_report
from robust_atp.report.rundata import load_run

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = write_fake_run(tmp_path_factory.mktemp("report") / "run")
    paths = build_report(run, ("html", "pdf"), n_boot=400)
    return run, paths


def test_analysis_tables_cover_every_condition_and_method(tmp_path):
    run = load_run(write_fake_run(tmp_path / "run", n=20))
    a = analyze(run, n_boot=300)
    assert run.methods == ["full", "atp@0.25", "random@0.25"] and a.reference == "full"
    assert len(a.accuracy) == 5 * 3 and len(a.comparisons) == 5 * 2
    for r in a.accuracy:
        assert r["lo"] <= r["accuracy"] <= r["hi"] and r["n"] == 20
    assert {c["test"] for c in a.comparisons} == {"mcnemar_exact"}
    assert all(c["p"] <= c["p_adj"] <= 1 for c in a.comparisons)
    assert "mean" in {r["family"] for r in a.mce} and all(r["kind"] == "image" for r in a.mce)
    assert {(d["scope"], d["method"]) for d in a.did if d["scope"] == "all"} == {("all", "atp@0.25"),
                                                                                ("all", "random@0.25")}
    assert {r["family"] for r in a.mce} == {"image:gaussian_noise", "image:fog", "mean"}
    assert a.stability and all(0 <= s["jaccard"] <= 1 for s in a.stability)
    assert any("flops_ratio" in n for n in a.notes)  # the cost axis says it is a token ratio


def test_report_files_plots_and_pdf_pages(built):
    run, paths = built
    assert paths["html"] == run / "report.html" and paths["pdf"] == run / "report.pdf"
    names = {p.stem for p in (run / "plots").glob("*.png")}
    assert names == {"severity_headline", "accuracy_vs_severity", "difference_heatmap", "did_forest",
                     "accuracy_vs_cost", "token_stability", "kept_overlays"}
    from pypdf import PdfReader

    pdf = PdfReader(paths["pdf"])
    assert len(pdf.pages) >= 3
    text = "".join(page.extract_text() for page in pdf.pages[:2])
    assert "Robustness report" in text and "Summary" in text


def test_html_is_self_contained_and_escapes_dataset_text(built):
    _, paths = built
    html = paths["html"].read_text()
    assert "<script" not in html.replace("&lt;script", "")  # no script element at all, only escaped text
    assert "&lt;script&gt;alert(" in html
    for marker in ("http://", "https://", "//fonts.", "<link", "@import", "url("):
        assert marker not in html, marker
    assert html.count('src="data:image/png;base64,') == 7


def test_html_in_headless_chromium(built):
    """No console error, no request beyond the file itself, real content, the <script> question as text."""
    from playwright.sync_api import sync_playwright

    _, paths = built
    url = paths["html"].resolve().as_uri()
    console, requests, dialogs = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url, wait_until="load")
            body = page.inner_text("body")
            n_scripts = page.evaluate("document.querySelectorAll('script').length")
            widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
            headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        finally:
            browser.close()
    assert [c for c in console if c[0] in ("error", "pageerror")] == []
    assert [r for r in requests if r != url and not r.startswith("data:")] == []
    assert dialogs == [] and n_scripts == 0
    assert SCRIPT_QUESTION in body
    assert headings == ["Summary", "Plots", "Tables", "Run manifest"]
    assert len(widths) == 7 and all(w > 100 for w in widths)
    assert "atp@0.25" in body and "Significant regressions" in body


def test_report_degrades_without_kept_indices(tmp_path):
    run = write_fake_run(tmp_path / "run", n=12, kept_indices=False)
    paths = build_report(run, ("html",), n_boot=200)
    assert set(paths) == {"html"} and not (run / "report.pdf").exists()
    names = {p.stem for p in (run / "plots").glob("*.png")}
    assert "kept_overlays" not in names and "token_stability" not in names and "did_forest" in names
    html = paths["html"].read_text()
    assert "no kept_indices" in html and "Token-set stability: skipped" in html


def test_report_cli(tmp_path, capsys):
    run = write_fake_run(tmp_path / "run", n=12, kept_indices=False)
    assert report_main([str(run), "--formats", "html", "--bootstrap", "200"]) == 0
    assert (run / "report.html").is_file() and not (run / "report.pdf").exists()
    assert report_main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert report_main([str(run), "--formats", "docx"]) == 2
    (run / "samples.jsonl").write_text("{not json\n")
    assert report_main([str(run)]) == 2
    assert "samples.jsonl: line 1" in capsys.readouterr().err


SUITE = """
name: tiny_report
seed: 1
dataset: {loader: shapes, split: test, limit: 8}
model: {checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip, generation: {max_new_tokens: 3}}
methods:
  - {name: full}
  - {name: atp, keep: 0.25}
perturbations:
  image: {corruptions: [fog], severities: [3]}
stats: {bootstrap: 500}
batch_size: 8
"""


@pytest.mark.slow
def test_a_real_run_builds_both_reports_and_no_report_skips_them(tmp_path):
    from robust_atp.run import main

    suite = tmp_path / "tiny.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    run = tmp_path / "run"
    assert main([str(suite), "--out", str(run), "--no-progress"]) == 0
    assert (run / "report.html").stat().st_size > 10_000 and (run / "report.pdf").is_file()
    assert (run / "plots" / "accuracy_vs_severity.png").is_file()
    manifest = json.loads((run / "results.json").read_text())["manifest"]
    assert manifest["config"]["stats"]["bootstrap"] == 500 and manifest["config"]["report"]["formats"] == ["html", "pdf"]
    other = tmp_path / "other"
    shutil.copytree(run, other)
    for name in ("report.html", "report.pdf"):
        (other / name).unlink()
    assert main([str(suite), "--out", str(other), "--no-progress", "--no-report"]) == 0  # resumes: nothing to run
    assert not (other / "report.html").exists() and not (other / "report.pdf").exists()


SCHEMA_SUITE = """
name: t
dataset: {loader: shapes, split: test, limit: 4}
model: {checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip}
methods: [{name: full}]
"""


@pytest.mark.parametrize("extra, message", [
    ("stats: {confidence: 0.95, bootstrap: 10000, cluster_by: image_id, correction: holm, seed: 1}",
     "stats.seed: unknown key"),
    ("stats: {bootstrapp: 100}", "stats.bootstrapp: unknown key (did you mean 'bootstrap'?)"),
    ("stats: {confidence: 1.5}", "stats.confidence: Input should be less than 1"),
    ("stats: {correction: bonferroni}", "stats.correction: Input should be 'maxt' or 'holm'"),
    ("report: {formats: [html, docx]}", "report.formats[1]: Input should be 'html' or 'pdf'"),
])
def test_suite_stats_and_report_sections_are_validated(tmp_path, capsys, extra, message):
    from robust_atp.run import main

    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(SCHEMA_SUITE) + extra + "\n")
    assert main([str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {path}: ") and message in err, err


def test_suite_stats_and_report_defaults_leave_the_config_hash_alone(tmp_path):
    from robust_atp.suite import load_suite

    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(SCHEMA_SUITE))
    plain = load_suite(path)
    assert plain.stats.model_dump() == {"confidence": 0.95, "bootstrap": 10_000, "cluster_by": "image_id",
                                        "correction": "maxt", "subsets": {}}
    assert plain.report.formats == ["html", "pdf"]
    path.write_text(textwrap.dedent(SCHEMA_SUITE) + "stats: {bootstrap: 500}\nreport: {formats: [html]}\n")
    assert load_suite(path).config_hash() == plain.config_hash()


def test_text_and_crossed_conditions_and_measured_flops(tmp_path):
    """Runs from the text-perturbation and cost work: `text:` and crossed conditions, `flops_ratio` rows."""
    conds = ["clean", "image:fog@1", "text:keyboard@1", "text:keyboard@3", "image:fog@1+text:keyboard@1"]
    run = write_fake_run(tmp_path / "run", n=16, conditions=conds)
    res = json.loads((run / "results.json").read_text())
    for r in res["rows"]:
        r["flops_ratio"] = {"full": 1.0, "atp@0.25": 0.31, "random@0.25": 0.30}[r["method"]]
    (run / "results.json").write_text(json.dumps(res))
    a = analyze(load_run(run), n_boot=200)
    assert {c["family"] for c in a.comparisons} == {None, "image:fog", "text:keyboard", "image:fog@1+text:keyboard"}
    assert [c["cost_ratio"] for c in a.cost] == [1.0, 0.31, 0.30] and all(c["measured_flops"] for c in a.cost)
    assert not any("flops_ratio" in n for n in a.notes)
    paths = build_report(run, ("html",), n_boot=200)
    html = paths["html"].read_text()
    assert "text:keyboard@3" in html and "image:fog@1+text:keyboard@1" in html
    assert (run / "plots" / "accuracy_vs_cost.png").is_file() and (run / "plots" / "kept_overlays.png").is_file()


def test_the_report_names_its_per_example_score_and_a_caption_proxy():
    from robust_atp.report.html import score_notes

    notes = score_notes({"config": {"metrics": ["cider_d", "bleu4"]}})
    assert "first metric, cider_d" in notes[0] and "proxy" in notes[1] and "rows[].metrics.cider_d" in notes[1]
    gqa = score_notes({"config": {"metrics": ["gqa_accuracy"], "dataset": {"options": {"questions": "all"}}}})
    assert len(gqa) == 2 and "balanced" in gqa[1]
    assert score_notes({"config": {"metrics": ["vqa_accuracy"]}}) == [
        "Per-example scores are the suite's first metric, vqa_accuracy; \"accuracy\" below means its mean."]
    assert score_notes({}) == []


def test_comparisons_carry_agreement_and_flips(tmp_path):
    """Beside each difference: the share of answers identical to full's and the right -> wrong and
    wrong -> right counts, which for 0/1 scores make up the difference exactly."""
    run = load_run(write_fake_run(tmp_path / "run", n=40, kept_indices=False))
    a = analyze(run, n_boot=200)
    by = {(s["example_id"], s["condition"], s["method"]): s for s in run.samples}
    for c in a.comparisons:
        pairs = [(by[ex, c["condition"], c["method"]], s) for (ex, cond, m), s in by.items()
                 if cond == c["condition"] and m == "full"]
        assert c["n_pairs"] == len(pairs) == 40
        assert c["agreement"] == pytest.approx(np.mean([p["prediction"] == f["prediction"] for p, f in pairs]))
        assert c["right_to_wrong"] == sum(p["score"] < f["score"] for p, f in pairs)
        assert c["wrong_to_right"] == sum(p["score"] > f["score"] for p, f in pairs)
        assert c["diff"] == pytest.approx((c["wrong_to_right"] - c["right_to_wrong"]) / 40)
    html = build_report(run.run_dir, ("html",), n_boot=200)["html"].read_text()
    assert "agree %" in html and "right &rarr; wrong" in html and "max-T step-down" in html


def test_few_images_are_said_and_unreachable_significance_is_not_called_no(tmp_path):
    """12 questions: the report warns that intervals are approximate, and comparisons with too few
    differing answers to ever reach alpha read n/a, not "no"."""
    run = load_run(write_fake_run(tmp_path / "run", n=12, kept_indices=False))
    a = analyze(run, n_boot=200)
    assert any("fewer than 30" in n for n in a.notes)
    blind = [c for c in a.comparisons if not c["resolvable"]]
    assert blind and all(c["right_to_wrong"] + c["wrong_to_right"] <= 5 and not c["significant"] for c in blind)
    assert any("cannot reach alpha" in n for n in a.notes)
    html = build_report(run.run_dir, ("html",), n_boot=200)["html"].read_text()
    assert ">n/a</td>" in html


def test_one_image_gives_no_interval_and_a_note(tmp_path):
    path = write_fake_run(tmp_path / "run", n=20, kept_indices=False)
    lines = [json.loads(x) for x in (path / "samples.jsonl").read_text().splitlines()]
    (path / "samples.jsonl").write_text("".join(json.dumps({**s, "image_id": "one"}) + "\n" for s in lines))
    a = analyze(load_run(path), n_boot=200)
    assert all(r["lo"] is None and r["hi"] is None for r in a.accuracy)
    assert any("fewer than 2 images" in n for n in a.notes)
    assert all(c["p"] == 1.0 and not c["significant"] for c in a.comparisons)


def test_a_large_drop_is_a_regression_at_100_resamples(tmp_path):
    """Questions sharing images (sign-flip tests) and `--bootstrap 100`: Holm over the 10 comparisons
    could not get below alpha / 10 < 1 / 101; the max-T step-down reports the 50-point drop."""
    path = write_fake_run(tmp_path / "run", n=120, kept_indices=False, score_shift={("clean", "atp@0.25"): 0.5})
    lines = [json.loads(x) for x in (path / "samples.jsonl").read_text().splitlines()]
    (path / "samples.jsonl").write_text("".join(
        json.dumps({**s, "image_id": f"img{int(s['example_id'].rsplit('/', 1)[1]) // 4}"}) + "\n" for s in lines))
    a = analyze(load_run(path), n_boot=100)
    assert {c["test"] for c in a.comparisons} == {"sign_flip"}
    assert ("clean", "atp@0.25") in [(c["condition"], c["method"]) for c in a.regressions]
    assert all(c["resolvable"] for c in a.comparisons)


def test_the_published_section_in_html_and_pdf(tmp_path):
    """results.json's `published` section: the same rows as the summary's, the sources, the sentence on
    what differs, and the notes, in the HTML and (the same HTML) in the PDF; no section without one."""
    from tests.helpers.fake_published import add_published

    run = write_fake_run(tmp_path / "run", n=12, kept_indices=False)
    plain = build_report(run, ("html",), n_boot=200)["html"].read_text()
    assert 'id="published"' not in plain
    section = add_published(run)
    paths = build_report(run, ("html", "pdf"), n_boot=200)
    html = paths["html"].read_text()
    table = html[html.index('<table id="published-table">'):]
    table = table[:table.index("</table>")]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in table.split("<tr>")[2:]]
    assert [c[:2] + c[3:6] for c in cells] == [
        ["full", "576", "84.1", "85.9", "-1.8"], ["full", "576", "84.1", "85.9", "-1.8"],
        ["visionzip@k64", "64", "75.0", "77.0", "-2.0"], ["divprune@k128", "128", "-", "86.72", "-"],
        ["fastv@0.3333", "192", "50.0", "64.8", "-14.8"]]
    assert "f1 <small>(pope_f1)</small>" in cells[0][2] and "arXiv 2412.04467" in cells[2][6]
    assert str(escape(section["differs"])) in html and "llava-hf/llava-1.5-7b-hf in float16" in html
    assert "the mean F1 of random (the published mean is over all three)" in html
    assert "Not compared: atp@k64 (64 tokens: no published value)" in html
    assert "MMTok: Multimodal Coverage Maximization" in html
    from pypdf import PdfReader

    text = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(paths["pdf"]).pages)
    assert "Beside the published figures" in text and "86.72" in text
