"""The CI gate: exit 0 on a run against itself and on a fresh run of the baseline's suite, 1 on a
deliberately broken method, 2 on unreadable input; gating needs both a large and a significant drop."""
import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from fake_runs import write_fake_run
from robust_atp.report.regress import compare, main
from robust_atp.report.rundata import load_run

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "reports" / "baselines" / "demo_ci"


def test_committed_baseline_against_itself_passes(tmp_path, capsys):
    junit = tmp_path / "gate.xml"
    assert main([str(BASELINE), str(BASELINE / "results.json"), "--junit", str(junit)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Regression gate: PASS") and "| clean | atp@0.25 |" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    manifest = json.loads((BASELINE / "results.json").read_text())["manifest"]
    assert int(suite.get("tests")) == len(manifest["conditions"]) * len(manifest["methods"]) == 21
    assert int(suite.get("failures")) == 0 and suite.find("testcase/failure") is None


def test_gate_needs_a_drop_over_max_drop_and_significance(tmp_path):
    base = load_run(write_fake_run(tmp_path / "base", n=200, seed=1, kept_indices=False))
    # the same examples, atp much worse on clean; random slightly worse everywhere
    worse = load_run(write_fake_run(tmp_path / "cur", n=200, seed=2, kept_indices=False,
                                    score_shift={("clean", "atp@0.25"): 0.5}))
    rows = {(r["condition"], r["method"]): r for r in compare(base, worse, max_drop=1.0)}
    assert rows["clean", "atp@0.25"]["failed"] and rows["clean", "atp@0.25"]["drop"] > 30
    assert sum(r["failed"] for r in rows.values()) == 1  # independent redraws elsewhere are not significant
    assert not any(r["failed"] for r in compare(base, worse, max_drop=60.0))  # significant but under the tolerance
    same = compare(base, base, max_drop=0.0)
    assert not any(r["failed"] for r in same) and all(r["p_holm"] == 1.0 for r in same)


def test_soft_scores_use_the_sign_flip_test(tmp_path):
    run = write_fake_run(tmp_path / "base", n=40, kept_indices=False)
    lines = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(0)
    for s in lines:
        s["score"] = float(rng.choice([0, 1 / 3, 2 / 3, 1]))
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
    rows = compare(load_run(run), load_run(run))
    assert {r["test"] for r in rows} == {"sign_flip"} and not any(r["failed"] for r in rows)


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
  image: {{corruptions: [gaussian_noise], severities: [1]}}
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
