"""The difficulty filter `stats.subsets`: the subset is exactly the questions the discriminator got
wrong on the clean input (soft scores below 1 count, a group goes in whole), its rows and tests are the
whole set's code on those questions alone, an all-wrong discriminator gives the whole set, an empty
subset is a note, bad input is one line, the config hash is untouched, and a real run reports it."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from robust_atp.data.shapes import load_shapes
from robust_atp.report.analysis import analyze
from robust_atp.report.html import build_report
from robust_atp.report.rundata import load_run
from robust_atp.results import samples, summarize, write_results
from robust_atp.store import Prediction
from robust_atp.subsets import members, subset_sections
from robust_atp.summary import format_summary

ROOT = Path(__file__).resolve().parents[1]
CONDS = ["clean", "image:fog@3"]
LABELS = ["full", "atp@0.25", "pool@0.25"]
N = 40


def _scores(seed: int = 0) -> dict:
    """(condition, method) -> N scores: 0/1 everywhere except pool's clean ones, which mix soft VQA-style
    values (0.3, 0.6, 0.9: not fully right) with 1.0."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in CONDS:
        for m in LABELS:
            p = {"full": 0.85, "atp@0.25": 0.7, "pool@0.25": 0.75}[m] - (0.2 if c != "clean" else 0.0)
            out[c, m] = (rng.random(N) < p).astype(float)
    out["clean", "pool@0.25"] = rng.choice([1.0, 1.0, 1.0, 0.9, 0.6, 0.3, 0.0], size=N)
    return out


def write_store_run(run_dir: Path, scores: dict, subsets: dict | None = None, groups: int | None = None,
                    only=None) -> Path:
    """A run directory written as the engine writes one (summarize, samples, subset_sections,
    write_results) from predictions of the given scores; `groups`: questions per group_id; `only`:
    a mask of the questions that have predictions (all by default)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    examples = load_shapes("test", limit=N)
    by_key = {}
    for (c, m), sc in scores.items():
        for i, ex in enumerate(examples):
            if only is not None and not only[i]:
                continue
            extra = {"group_id": f"g{i // groups}"} if groups else {}
            by_key[ex.id, c, m] = Prediction(ex.id, c, m, ex.answers[0] if sc[i] == 1 else "no", float(sc[i]),
                                             {"exact_match": float(sc[i])}, 144 if m == "full" else 36, None, extra)
    manifest = {"suite": "fake", "seed": 0, "conditions": CONDS, "n_examples": N,
                "methods": [{"label": lb, "name": lb.split("@")[0], "settings": {}} for lb in LABELS],
                "config": {"name": "fake", "metrics": ["exact_match"],
                           "stats": {"confidence": 0.95, "bootstrap": 400, "cluster_by": "image_id",
                                     "correction": "maxt", "subsets": subsets or {}}}}
    rows = summarize(by_key, examples, CONDS, LABELS, ["exact_match"])
    sample_rows = list(samples(by_key, examples, CONDS, LABELS))
    sections = subset_sections(run_dir, manifest, sample_rows, lambda ids: summarize(
        by_key, [ex for ex in examples if ex.id in ids], CONDS, LABELS, ["exact_match"]))
    write_results(run_dir, manifest, rows, sample_rows, None, sections)
    return run_dir


DIFFICULT = {"difficult": {"discriminator": "pool@0.25"}}


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _ids() -> list[str]:
    return [ex.id for ex in load_shapes("test", limit=N)]


def test_the_subset_is_exactly_the_questions_the_discriminator_got_wrong_on_clean(tmp_path):
    scores = _scores()
    pool = scores["clean", "pool@0.25"]
    assert {0.3, 0.6, 0.9, 1.0} <= set(pool)  # soft scores below 1 are in the sample
    section = _results(write_store_run(tmp_path / "run", scores, DIFFICULT))["subsets"]["difficult"]
    wrong = [i for i, ex in enumerate(_ids()) if pool[i] < 1]
    assert 0 < len(wrong) < N
    assert section["definition"] == {"discriminator": "pool@0.25", "condition": "clean",
                                     "rule": "first-metric score < 1"}
    assert section["questions"] == len(wrong) and section["of"] == N and section["groups"] is None
    assert section["share"] == pytest.approx(len(wrong) / N)
    run = load_run(tmp_path / "run")
    assert members(run.samples, "pool@0.25") == ([_ids()[i] for i in wrong], None)
    # a method's wrong answers under a corruption do not count: only the clean input decides
    fog_only = [i for i in range(N) if scores["image:fog@3", "pool@0.25"][i] < 1 and pool[i] == 1]
    assert fog_only and not set(fog_only) & set(wrong)


def test_its_rows_and_tests_equal_the_hand_computed_figures_on_the_subset(tmp_path):
    scores = _scores()
    section = _results(write_store_run(tmp_path / "run", scores, DIFFICULT))["subsets"]["difficult"]
    wrong = np.array([s < 1 for s in scores["clean", "pool@0.25"]])
    rows = {(r["condition"], r["method"]): r for r in section["rows"]}
    assert len(rows) == len(CONDS) * len(LABELS)
    for (c, m), sc in scores.items():
        assert rows[c, m]["accuracy"] == pytest.approx(round(sc[wrong].mean(), 6)) and rows[c, m]["n"] == wrong.sum()
    comps = {(r["condition"], r["method"]): r for r in section["comparisons"]}
    assert set(comps) == {(c, m) for c in CONDS for m in LABELS[1:]}
    for (c, m), r in comps.items():
        d = scores[c, m][wrong] - scores[c, "full"][wrong]
        assert r["diff"] == pytest.approx(d.mean())
        assert (r["right_to_wrong"], r["wrong_to_right"]) == ((d < 0).sum(), (d > 0).sum())
    # 0/1 scores, one question per image: exact McNemar on the subset's discordant pairs
    fog = comps["image:fog@3", "atp@0.25"]
    d = scores["image:fog@3", "atp@0.25"][wrong] - scores["image:fog@3", "full"][wrong]
    assert fog["test"] == "mcnemar_exact"
    assert fog["p"] == pytest.approx(binomtest(int((d > 0).sum()), int((d != 0).sum()), 0.5).pvalue)
    # the same figures as the report's analysis of a run that holds only the subset's questions
    alone = write_store_run(tmp_path / "alone", scores, only=wrong)
    expected = analyze(load_run(alone)).comparisons
    assert [_strip(r) for r in section["comparisons"]] == [_strip(r) for r in expected]


def _strip(row: dict) -> dict:
    return {k: (round(v, 12) if isinstance(v, float) else v) for k, v in row.items()}


def test_a_discriminator_wrong_everywhere_gives_the_whole_set(tmp_path):
    scores = _scores()
    scores["clean", "pool@0.25"] = np.where(scores["clean", "pool@0.25"] == 1, 0.6, scores["clean", "pool@0.25"])
    data = _results(write_store_run(tmp_path / "run", scores, DIFFICULT))
    section = data["subsets"]["difficult"]
    assert section["questions"] == N and section["share"] == 1.0
    assert section["rows"] == data["rows"]
    whole = analyze(load_run(tmp_path / "run"))
    assert [_strip(r) for r in section["comparisons"]] == [_strip(r) for r in whole.comparisons]


def test_a_group_is_in_whole_when_any_member_is_wrong(tmp_path):
    scores = _scores()
    pool = scores["clean", "pool@0.25"]
    run = load_run(write_store_run(tmp_path / "run", scores, DIFFICULT, groups=2))
    ids, groups = members(run.samples, "pool@0.25")
    wrong_groups = {i // 2 for i in range(N) if pool[i] < 1}
    assert ids == [_ids()[i] for i in range(N) if i // 2 in wrong_groups] and groups == len(wrong_groups)
    assert any(pool[i] == 1 and i // 2 in wrong_groups for i in range(N))  # a right member goes in with its group
    assert _results(tmp_path / "run")["subsets"]["difficult"]["groups"] == len(wrong_groups)


def test_an_empty_subset_is_a_note_in_results_summary_and_report(tmp_path):
    scores = _scores()
    scores["clean", "pool@0.25"] = np.ones(N)
    run = write_store_run(tmp_path / "run", scores, DIFFICULT)
    data = _results(run)
    section = data["subsets"]["difficult"]
    assert section["questions"] == 0 and section["rows"] == [] and section["comparisons"] == []
    assert "empty: pool@0.25 answers every clean question fully right" in section["notes"][0]
    out = format_summary(data["rows"], LABELS, subsets=data["subsets"])
    block = next(b for b in out.split("\n\n") if b.startswith("subset difficult"))
    assert block.splitlines()[0].endswith("0 of 40 questions (0.0%)") and "empty:" in block.splitlines()[1]
    html = build_report(run, ("html",), n_boot=200)["html"].read_text()
    part = html[html.index('id="subset-difficult"'):html.index('id="plots"')]
    assert "0 of 40 questions" in part and "empty: pool@0.25" in part and "<table" not in part


@pytest.mark.slow
def test_the_summary_and_the_report_show_each_subset_after_the_main_table(tmp_path):
    from pypdf import PdfReader

    scores = _scores()
    run = write_store_run(tmp_path / "run", scores, DIFFICULT | {"hard_for_atp": {"discriminator": "atp@0.25"}})
    data = _results(run)
    out = format_summary(data["rows"], LABELS, subsets=data["subsets"]).split("\n\n")
    assert out[1].startswith("subset difficult: questions pool@0.25 answers wrong on the clean input")
    assert out[2].startswith("subset hard_for_atp: questions atp@0.25 answers wrong on the clean input")
    wrong = scores["clean", "pool@0.25"] < 1
    full_line = out[1].splitlines()[3].split()
    assert full_line[0] == "full" and full_line[3] == f"{100 * scores['clean', 'full'][wrong].mean():.1f}"
    paths = build_report(run, ("html", "pdf"), n_boot=200)
    html = paths["html"].read_text()
    assert html.index('id="accuracy-summary"') < html.index('id="subset-difficult"') < html.index(
        'id="subset-hard_for_atp"') < html.index('id="plots"')
    table = html[html.index('<table id="accuracy-summary-difficult">'):]
    table = table[:table.index("</table>")]
    cells = [c for c in table.split("<tr")[3:]]  # two header rows, then one row per method
    acc = analyze(load_run(run))  # the whole set's, for contrast
    sub = {r["method"]: r["accuracy"] for r in data["subsets"]["difficult"]["rows"] if r["condition"] == "clean"}
    for m, row in zip(LABELS, cells):
        assert f">{m}<" in row and f"<td>{100 * sub[m]:.1f} [" in row
    whole_full = next(r for r in acc.kind_accuracy if r["kind"] == "clean" and r["method"] == "full")
    assert whole_full["accuracy"] != pytest.approx(sub["full"])
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(paths["pdf"]).pages)
    assert "Subset difficult" in text and "Subset hard_for_atp" in text


SUITE = """
name: t
dataset: {loader: shapes, split: test, limit: 4}
model: {checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip}
methods: [{name: full}, {name: pool, keep: 0.25}]
"""


@pytest.mark.parametrize("extra, message", [
    ("stats: {subsets: {difficult: {discriminator: pool@0.5}}}",
     "stats.subsets.difficult.discriminator: 'pool@0.5' is not a method label of this suite; labels: full, pool@0.25"),
    ("stats: {subsets: {2hard: {discriminator: pool@0.25}}}",
     "stats.subsets: subset name '2hard': must be a simple identifier"),
    ("stats: {subsets: {hard subset: {discriminator: pool@0.25}}}",
     "stats.subsets: subset name 'hard subset': must be a simple identifier"),
    ("stats: {subsets: {difficult: {}}}", "stats.subsets.difficult.discriminator: required field is missing"),
    ("stats: {subsets: {difficult: {discriminator: pool@0.25, condition: clean}}}",
     "stats.subsets.difficult.condition: unknown key"),
    ("stats: {subsets: [difficult]}", "stats.subsets: Input should be a valid dictionary"),
    ("include_clean: false\nperturbations: {image: {corruptions: [fog], severities: [1]}}\n"
     "stats: {subsets: {difficult: {discriminator: pool@0.25}}}",
     "stats.subsets.difficult.discriminator: the subset is the questions it answers wrong on the clean input, "
     "and include_clean is false"),
])
def test_bad_subsets_are_one_line_naming_file_and_field(tmp_path, capsys, extra, message):
    from robust_atp.run import main

    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(SUITE) + extra + "\n")
    assert main([str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {path}: ") and message in err, err
    assert not (tmp_path / "run").exists()


def test_subsets_leave_the_config_hash_alone_and_the_ci_baseline_applies():
    from robust_atp.suite import load_suite

    ci = ROOT / "suites" / "demo_ci.yaml"
    baseline = json.loads((ROOT / "reports" / "baselines" / "demo_ci" / "results.json").read_text())
    with_subset = load_suite(ci, {"stats.subsets": {"difficult": {"discriminator": "random@0.25"}}})
    assert with_subset.stats.subsets["difficult"].discriminator == "random@0.25"
    assert with_subset.config_hash() == load_suite(ci).config_hash() == baseline["manifest"]["config_hash"]


TINY = """
name: tiny_subsets
seed: 0
dataset: {loader: shapes, split: test, limit: 10}
model:
  checkpoint: zoo:shapes_vlm/llava
  clip: zoo:shapes_vlm/clip
  prompt: "USER: <image>\\n{question} ASSISTANT:"
  generation: {max_new_tokens: 3}
methods:
  - {name: full}
  - {name: atp, keep: 0.25, alpha: 0.5}
  - {name: pool, keep: 0.25}
perturbations:
  image: {corruptions: [gaussian_noise], severities: [3]}
metrics: [exact_match]
batch_size: 10
stats: {bootstrap: 200, subsets: {difficult: {discriminator: pool@0.25}}}
"""


@pytest.mark.slow
def test_a_real_run_reports_the_subset_and_leaves_samples_unchanged(tmp_path, capsys):
    from robust_atp.run import main

    suite = tmp_path / "tiny.yaml"
    suite.write_text(textwrap.dedent(TINY))
    run = tmp_path / "run"
    assert main([str(suite), "--out", str(run), "--no-progress", "--no-report"]) == 0
    printed = capsys.readouterr().out
    data = _results(run)
    section = data["subsets"]["difficult"]
    lines = [json.loads(ln) for ln in (run / "samples.jsonl").read_text().splitlines()]
    wrong = [s["example_id"] for s in lines if s["method"] == "pool@0.25" and s["condition"] == "clean"
             and s["score"] < 1]
    assert section["questions"] == len(wrong) and section["of"] == 10 and 0 < len(wrong) < 10
    for r in section["rows"]:
        mine = [s["score"] for s in lines if s["example_id"] in wrong and s["condition"] == r["condition"]
                and s["method"] == r["method"]]
        assert r["n"] == len(wrong) and r["accuracy"] == pytest.approx(round(sum(mine) / len(mine), 6))
    assert len(section["comparisons"]) == 4 and all(c["n_pairs"] == len(wrong) for c in section["comparisons"])
    assert f"subset difficult: questions pool@0.25 answers wrong on the clean input (first-metric score < 1): " \
           f"{len(wrong)} of 10 questions" in printed
    # the same suite without the subset resumes the run (same config hash), computes nothing, and writes
    # the same samples and rows, and no subsets section
    other = tmp_path / "other"
    shutil.copytree(run, other)
    plain = tmp_path / "plain.yaml"
    plain.write_text(textwrap.dedent(TINY).replace(", subsets: {difficult: {discriminator: pool@0.25}}", ""))
    assert main([str(plain), "--out", str(other), "--no-progress", "--no-report"]) == 0
    assert (other / "samples.jsonl").read_bytes() == (run / "samples.jsonl").read_bytes()
    again = _results(other)
    assert again["rows"] == data["rows"] and "subsets" not in again
    assert again["manifest"]["engine"]["units_run"] == 0
