"""The CI gate: exit 0 on a run against itself and on a fresh run of the baseline's suite, 1 on a
deliberately broken method, 2 on unreadable input; a pair fails on a drop significantly above
--max-drop (one-sided, the margin inside the hypothesis, max-T across pairs, the suite's clusters);
every pair prints its minimum detectable drop, and the committed slice can see a 5-point drop."""
import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.fake_runs import write_fake_run
from robust_atp.report.regress import compare, junit, main, markdown
from robust_atp.report.rundata import RunData, load_run

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "reports" / "baselines" / "demo_ci"


def test_committed_baseline_against_itself_passes(tmp_path, capsys):
    junit = tmp_path / "gate.xml"
    assert main([str(BASELINE), str(BASELINE / "results.json"), "--junit", str(junit)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Regression gate: PASS") and "| clean | atp@0.25 | 350 |" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    manifest = json.loads((BASELINE / "results.json").read_text())["manifest"]
    assert int(suite.get("tests")) == len(manifest["conditions"]) * len(manifest["methods"]) == 6
    assert int(suite.get("failures")) == 0 and suite.find("testcase/failure") is None
    mdd = [float(p.get("value")) for p in suite.findall("testcase/properties/property[@name='minimum_detectable_drop']")]
    assert len(mdd) == 6 and all(0 < x <= 5.0 for x in mdd)


def test_gate_needs_a_drop_over_max_drop_and_significance(tmp_path):
    base = load_run(write_fake_run(tmp_path / "base", n=200, seed=1, kept_indices=False))
    # the same examples, atp much worse on clean; random slightly worse everywhere
    worse = load_run(write_fake_run(tmp_path / "cur", n=200, seed=2, kept_indices=False,
                                    score_shift={("clean", "atp@0.25"): 0.5}))
    rows = {(r["condition"], r["method"]): r for r in compare(base, worse, max_drop=1.0)}
    assert rows["clean", "atp@0.25"]["failed"] and rows["clean", "atp@0.25"]["drop"] > 30
    assert sum(r["failed"] for r in rows.values()) == 1  # independent redraws elsewhere are not significant
    assert not any(r["failed"] for r in compare(base, worse, max_drop=60.0))  # not significantly over the tolerance
    same = compare(base, base, max_drop=0.0)
    assert not any(r["failed"] for r in same) and all(r["p_adj"] == 1.0 for r in same)


def test_soft_scores_use_the_sign_flip_test(tmp_path):
    run = write_fake_run(tmp_path / "base", n=40, kept_indices=False)
    lines = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(0)
    for s in lines:
        s["score"] = float(rng.choice([0, 1 / 3, 2 / 3, 1]))
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
    rows = compare(load_run(run), load_run(run))
    assert {r["test"] for r in rows} == {"sign_flip"} and not any(r["failed"] for r in rows)
    assert all(r["mdd"] > 0 for r in rows)


def test_unreadable_input_exits_2(tmp_path, capsys):
    good = write_fake_run(tmp_path / "good", n=5, kept_indices=False)
    cases = {}
    cases["missing"] = tmp_path / "missing"
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "results.json").write_text("{oops")
    cases["bad_json"] = bad_json
    no_samples = tmp_path / "no_samples"
    no_samples.mkdir()
    (no_samples / "results.json").write_text((good / "results.json").read_text())
    cases["no_samples"] = no_samples
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.json").write_text((good / "results.json").read_text())
    (empty / "samples.jsonl").write_text("")
    cases["empty"] = empty
    disjoint = tmp_path / "disjoint"
    disjoint.mkdir()
    (disjoint / "results.json").write_text((good / "results.json").read_text())
    (disjoint / "samples.jsonl").write_text("".join(
        line.replace('"shapes/test/', '"other/') + "\n" for line in (good / "samples.jsonl").read_text().splitlines()))
    cases["disjoint"] = disjoint
    expected = {"missing": "no such run directory", "bad_json": "not valid JSON", "no_samples": "samples.jsonl: no such file",
                "empty": "no samples", "disjoint": "no (example, condition, method) pairs in common"}
    for name, path in cases.items():
        assert main([str(good), str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected[name] in err and str(path) in err, (name, err)
    assert main([str(good), str(good), "--alpha", "2"]) == 2
    assert "--alpha" in capsys.readouterr().err
    nan = tmp_path / "nan"
    nan.mkdir()
    (nan / "results.json").write_text((good / "results.json").read_text())
    (nan / "samples.jsonl").write_text((good / "samples.jsonl").read_text().replace('"score": 1.0', '"score": NaN', 1))
    assert main([str(good), str(nan)]) == 2
    assert "score: must be a finite number, got nan" in capsys.readouterr().err


def test_predictions_missing_from_the_current_run_fail_the_gate(tmp_path, capsys):
    """A method, a condition or examples the baseline has and the current run lacks fail the gate
    (exit 1), whatever the accuracy of what remains."""
    base = write_fake_run(tmp_path / "base", n=30, kept_indices=False)
    lines = [json.loads(x) for x in (base / "samples.jsonl").read_text().splitlines()]
    conditions = list(dict.fromkeys(s["condition"] for s in lines))
    some_example = lines[0]["example_id"]
    cur = tmp_path / "cur"
    cur.mkdir()
    (cur / "results.json").write_text((base / "results.json").read_text())
    kept = [s for s in lines if s["method"] != "random@0.25" and s["condition"] != conditions[-1]
            and not (s["example_id"] == some_example and s["condition"] == "clean")]
    (cur / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in kept))
    rows = {(r["condition"], r["method"]): r for r in compare(load_run(base), load_run(cur))}
    assert rows["clean", "random@0.25"]["missing"] == 30 and rows["clean", "random@0.25"]["failed"]
    assert rows[conditions[-1], "full"]["missing"] == 30
    assert rows["clean", "full"]["missing"] == 1 and rows["clean", "full"]["failed"]
    assert not rows[conditions[1], "full"]["failed"]  # complete and unchanged
    junit = tmp_path / "gate.xml"
    assert main([str(base), str(cur), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("## Regression gate: FAIL") and "30 of 30 predictions missing" in out
    assert ET.parse(junit).getroot().find("testsuite/testcase/failure").get("type") == "MissingPredictions"
    assert main([str(base), str(cur), "--allow-missing"]) == 0  # a deliberate slice: only shared pairs
    assert not any(r["failed"] for r in compare(load_run(base), load_run(cur), allow_missing=True))


def _run(suite_text: str, tmp_path: Path, name: str) -> Path:
    suite = tmp_path / f"{name}.yaml"
    suite.write_text(textwrap.dedent(suite_text))
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "robust_atp.run", str(suite), "--out", str(out), "--no-progress",
                        "--no-report"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


SLICE = """
name: demo_ci
seed: 0
dataset: {{loader: shapes, split: test, limit: 60}}
model: {{checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip, generation: {{max_new_tokens: 3}}}}
methods:
  - {method}
perturbations:
  image: {{corruptions: [gaussian_noise], severities: [3]}}
batch_size: 30
"""


@pytest.mark.slow
def test_real_runs_pass_when_reproduced_and_fail_when_a_method_breaks(tmp_path):
    """A fresh run of part of the baseline's suite reproduces it (exit 0); random pruning at 5% under
    the label of the baseline's atp@0.25 is caught (exit 1, JUnit failures)."""
    same = _run(SLICE.format(method="{name: atp, keep: 0.25, alpha: 0.5}"), tmp_path, "same")
    cmd = [sys.executable, "-m", "robust_atp.regress", str(BASELINE)]
    r = subprocess.run(cmd + [str(same)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "predictions missing" in r.stdout  # a slice lacks the baseline's other rows
    cmd.append("--allow-missing")  # ... and is compared on what it has when asked
    r = subprocess.run(cmd + [str(same)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout and "| +0.0 |" in r.stdout  # identical predictions on the shared pairs

    broken = _run(SLICE.format(method='{name: random, keep: 0.05, label: "atp@0.25"}'), tmp_path, "broken")
    junit = tmp_path / "gate.xml"
    r = subprocess.run(cmd + [str(broken), "--junit", str(junit)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("## Regression gate: FAIL") and "**FAIL**" in r.stdout
    failures = ET.parse(junit).getroot().findall(".//testcase/failure")
    assert len(failures) >= 1
    assert all(f.get("type") == "AccuracyRegression" for f in failures)


# ----------------------------------------------------------------------------- the one-sided gate

def synthetic_run(path: Path, scores: dict, image_ids=None, cluster_by: str = "image_id") -> RunData:
    """An in-memory run: `scores[(condition, method)]` is `[N]` per-example scores."""
    n = len(next(iter(scores.values())))
    image_ids = [f"img{i}" for i in range(n)] if image_ids is None else image_ids
    samples = [{"example_id": f"q{i}", "image_id": image_ids[i], "condition": c, "method": m, "score": float(x)}
               for (c, m), xs in scores.items() for i, x in enumerate(xs)]
    manifest = {"config": {"stats": {"cluster_by": cluster_by}}}
    return RunData(path, manifest, [], samples, list(dict.fromkeys(c for c, _ in scores)),
                   list(dict.fromkeys(m for _, m in scores)))


def _flipped(base: np.ndarray, losses: int, gains: int, rng) -> np.ndarray:
    cur = base.copy()
    cur[rng.choice(np.flatnonzero(base == 1), losses, replace=False)] = 0
    cur[rng.choice(np.flatnonzero(base == 0), gains, replace=False)] = 1
    return cur


def test_a_drop_at_the_tolerance_passes_at_large_n(tmp_path):
    """4000 questions, 400 answers changed, 1.2 points lost net: a two-sided test with a cut at the
    point estimate fails it (p about 0.02, 1.2 > 1); H0 "drop <= 1 point" is not rejected. A 3-point
    drop with the same churn is."""
    rng = np.random.default_rng(0)
    base = (rng.random(4000) < 0.8).astype(float)
    near = _flipped(base, 224, 176, rng)
    far = _flipped(base, 260, 140, rng)
    b = synthetic_run(tmp_path / "b", {("clean", "m"): base})
    near_row, = compare(b, synthetic_run(tmp_path / "c", {("clean", "m"): near}), max_drop=1.0)
    assert near_row["drop"] == pytest.approx(1.2) and not near_row["failed"] and near_row["p"] > 0.2
    far_row, = compare(b, synthetic_run(tmp_path / "d", {("clean", "m"): far}), max_drop=1.0)
    assert far_row["drop"] == pytest.approx(3.0) and far_row["failed"] and far_row["test"] == "sign_flip"


def test_the_gate_is_calibrated_at_its_margin_and_one_sided():
    """300 simulated pairs, n = 1000, 10% of answers changing: at a true drop equal to the margin the
    one-sided test rejects about alpha (the old cut-plus-two-sided gate: about half); at a true 2-point
    drop (margin 0) it rejects more often than the two-sided test does."""
    from robust_atp.stats import paired_tests

    rng = np.random.default_rng(1)
    base = (rng.random((1000, 300)) < 0.8).astype(float)

    def churned(drop, churn=0.1):
        lose, gain = (churn + drop) / 1.6, (churn - drop) / 0.4
        u = rng.random(base.shape)
        return np.where(base == 1, (u >= lose).astype(float), (u < gain).astype(float))

    at_margin = paired_tests(base, churned(0.01), np.arange(1000), 2000, 0, "maxt", "greater", 0.01).p
    assert np.mean(at_margin <= 0.05) <= 0.075
    cur = churned(0.02)
    one = np.mean(paired_tests(base, cur, np.arange(1000), 2000, 0, "maxt", "greater", 0.0).p <= 0.05)
    two_p = paired_tests(base, cur, np.arange(1000), 2000, 0).p
    two = np.mean((two_p <= 0.05) & (base.mean(0) > cur.mean(0)))
    print(f"power at a 2-point drop: one-sided {one:.3f}, two-sided {two:.3f}")
    assert one >= 0.55 and one >= two + 0.07


def test_the_gate_clusters_as_the_suite_says(tmp_path):
    """200 questions about 2 images: clustered by image nothing can be significant (2 clusters); a
    suite with `cluster_by: example_id` treats the questions as independent and the drop fails."""
    rng = np.random.default_rng(2)
    base = (rng.random(200) < 0.8).astype(float)
    cur = _flipped(base, 60, 0, rng)
    images = ["a"] * 100 + ["b"] * 100
    for cluster_by, fails in (("image_id", False), ("example_id", True)):
        b = synthetic_run(tmp_path / cluster_by, {("clean", "m"): base}, images, cluster_by)
        c = synthetic_run(tmp_path / f"{cluster_by}_c", {("clean", "m"): cur}, images, cluster_by)
        row, = compare(b, c)
        assert row["failed"] == fails, cluster_by
    b = synthetic_run(tmp_path / "x", {("clean", "m"): base}, images, "example_id")
    row, = compare(b, synthetic_run(tmp_path / "y", {("clean", "m"): cur}, images), cluster_by="image_id")
    assert not row["failed"]  # an explicit choice wins


def test_every_pair_prints_its_minimum_detectable_drop(tmp_path, capsys):
    small = load_run(write_fake_run(tmp_path / "small", n=60, kept_indices=False))
    rows = compare(small, small)
    assert all(10 < r["mdd"] < 40 for r in rows)
    text = markdown(rows, "b", "c", 1.0, 0.05)
    notes = [line for line in text.splitlines() if "cannot detect" in line]
    assert len(notes) == 1 and "of 15 pairs" in notes[0] and "| MDD (points) |" in text
    root = ET.fromstring(junit(rows, 1.0, 0.05).split("\n", 1)[1])
    assert "cannot detect" in root.find("testsuite/properties/property[@name='sensitivity']").get("value")
    assert len(root.findall(".//testcase/properties/property[@name='minimum_detectable_drop']")) == 15
    run = str(tmp_path / "small")
    assert main([run, run, "--alpha", "0.001", "--permutations", "100"]) == 0
    assert "no p-value can fall below 0.0099: nothing can fail" in capsys.readouterr().out
    rng = np.random.default_rng(3)
    big = synthetic_run(tmp_path / "big", {("clean", "m"): (rng.random(3000) < 0.8).astype(float)})
    row, = compare(big, big)
    assert row["mdd"] < 2.0 and "cannot detect" not in markdown([row], "b", "c", 1.0, 0.05)


def test_the_committed_slice_finds_a_five_point_drop():
    """A 5-point drop (answers lost) injected into any one pair of the committed baseline fails the
    gate in at least 80% of draws; nothing else fails."""
    base = load_run(BASELINE)
    rng = np.random.default_rng(4)
    pairs = list(dict.fromkeys((s["condition"], s["method"]) for s in base.samples))
    for pair in pairs:
        accuracy = np.mean([s["score"] for s in base.samples if (s["condition"], s["method"]) == pair])
        found = 0
        for draw in range(10):
            cur = RunData(base.run_dir, base.manifest, base.rows, [
                {**s, "score": 0.0} if (s["condition"], s["method"]) == pair and s["score"] == 1
                and rng.random() < 0.05 / accuracy else s for s in base.samples], base.conditions, base.methods)
            rows = compare(base, cur, n_perm=500, seed=draw)
            assert not any(r["failed"] for r in rows if (r["condition"], r["method"]) != pair)
            found += any(r["failed"] for r in rows)
        assert found >= 8, (pair, found)
