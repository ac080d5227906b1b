"""End to end through the CLI on the demo model: outputs, shared vision pass, resume, refusal, kill."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from robust_atp.run import main

SUITE = """
name: {name}
seed: 3
dataset: {{loader: shapes, split: test, limit: {limit}}}
model: {{checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip, generation: {{max_new_tokens: 3}}}}
methods:
  - {{name: full}}
  - {{name: atp, keep: 0.25}}
  - {{name: random, keep: 0.25}}
perturbations:
  image: {{corruptions: [gaussian_noise, fog], severities: [{sev}]}}
batch_size: {batch}
"""


def suite_file(tmp_path, name="e2e", limit=6, sev=5, batch=4):
    p = tmp_path / f"{name}-{limit}-{sev}-{batch}.yaml"
    p.write_text(textwrap.dedent(SUITE.format(name=name, limit=limit, sev=sev, batch=batch)))
    return p


def read_samples(run):
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def store_bytes(run):
    return (run / "predictions.sqlite").read_bytes()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    run = tmp / "run"
    assert main([str(suite_file(tmp)), "--out", str(run), "--no-progress"]) == 0
    return tmp, run


def test_outputs(first_run):
    _, run = first_run
    res = json.loads((run / "results.json").read_text())
    m = res["manifest"]
    assert m["suite"] == "e2e" and m["seed"] == 3 and len(m["config_hash"]) == 16
    assert m["versions"]["torch"] and m["versions"]["transformers"]
    assert m["conditions"] == ["clean", "image:gaussian_noise@5", "image:fog@5"]
    rows = res["rows"]
    assert [(r["condition"], r["method"]) for r in rows][:3] == [("clean", "full"), ("clean", "atp@0.25"),
                                                               ("clean", "random@0.25")]
    assert len(rows) == 9
    for r in rows:
        assert r["n"] == 6 and 0 <= r["accuracy"] <= 1
        assert r["kept_tokens"] == (144 if r["method"] == "full" else 36)
    samples = read_samples(run)
    assert len(samples) == 6 * 3 * 3
    assert len({(s["example_id"], s["condition"], s["method"]) for s in samples}) == 54
    clean_full = [s for s in samples if s["condition"] == "clean" and s["method"] == "full"]
    acc = sum(s["score"] for s in clean_full) / 6
    assert rows[0]["accuracy"] == round(acc, 6)  # results.json stores 6 decimals


def test_vision_pass_runs_once_per_batch_and_condition(first_run):
    _, run = first_run
    eng = json.loads((run / "results.json").read_text())["manifest"]["engine"]
    assert eng["units_run"] == eng["units_total"] == 2 * 3  # ceil(6 / 4) batches x 3 conditions
    assert eng["vision_passes"] == 6
    assert eng["generations"] == 6 * 3 * 3
    # full (144 tokens) alone, atp@0.25 and random@0.25 (36 each) in one fused call; no text conditions to reuse a prefix for
    assert eng["generate_calls"] == 6 * 2
    assert eng["prefixes"] == {"computed": 0, "reused": 0}


def test_second_run_resumes_without_recomputing(first_run, capsys):
    tmp, run = first_run
    before = read_samples(run)
    db = store_bytes(run)
    assert main([str(suite_file(tmp)), "--out", str(run), "--no-progress"]) == 0
    assert read_samples(run) == before
    eng = json.loads((run / "results.json").read_text())["manifest"]["engine"]
    assert eng["units_run"] == 0 and eng["vision_passes"] == 0
    assert store_bytes(run) == db


def test_other_suite_refused_unless_fresh(first_run, capsys, tmp_path):
    tmp, run = first_run
    other = suite_file(tmp_path, sev=3)
    db = store_bytes(run)
    assert main([str(other), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds a run of suite 'e2e'" in err and "--fresh" in err and err.count("\n") == 1
    assert store_bytes(run) == db
    fresh = tmp_path / "copy"
    fresh.mkdir()
    (fresh / "predictions.sqlite").write_bytes(db)
    assert main([str(other), "--out", str(fresh), "--no-progress", "--fresh"]) == 0
    assert {s["condition"] for s in read_samples(fresh)} == {"clean", "image:gaussian_noise@3", "image:fog@3"}


def test_bad_suite_leaves_an_existing_store_untouched(first_run, tmp_path):
    tmp, run = first_run
    bad = tmp_path / "bad.yaml"
    bad.write_text(suite_file(tmp).read_text().replace("keep: 0.25}", "keep: 2}", 1))
    db = store_bytes(run)
    assert main([str(bad), "--out", str(run)]) == 2
    assert store_bytes(run) == db


def test_batch_size_and_limit_do_not_change_predictions(first_run, tmp_path):
    tmp, run = first_run
    other = tmp_path / "b1"
    assert main([str(suite_file(tmp, batch=1, limit=3)), "--out", str(other), "--no-progress"]) == 0
    # the larger limit extends the same run: only the new examples are computed
    assert main([str(suite_file(tmp, batch=5)), "--out", str(other), "--no-progress"]) == 0
    assert read_samples(other) == read_samples(run)


def test_a_smaller_limit_into_a_larger_run_says_which_slice(first_run, tmp_path, capsys):
    tmp, run = first_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "predictions.sqlite").write_bytes(store_bytes(run))
    assert main([str(suite_file(tmp)), "--out", str(copy), "--no-progress", "--no-report", "--limit", "2"]) == 0
    note = ("these outputs cover the first 2 examples (dataset.limit 2); the store holds predictions for 6 "
            "examples (kept; a run with a larger --limit reports them)")
    assert f"{copy}: {note}\n" in capsys.readouterr().err
    res = json.loads((copy / "results.json").read_text())
    m = res["manifest"]
    assert m["n_examples"] == 2 and m["limit"] == 2
    assert m["slice"] == {"examples": 2, "stored_examples": 6, "limit": 2, "note": note}
    assert {r["n"] for r in res["rows"]} == {2}
    assert read_samples(copy) == [s for s in read_samples(run) if s["example_id"] in {s["example_id"] for s in
                                                                                      read_samples(copy)}]
    # nothing was dropped: the suite's own limit reports every example again, with no slice
    assert main([str(suite_file(tmp)), "--out", str(copy), "--no-progress", "--no-report"]) == 0
    assert read_samples(copy) == read_samples(run)
    m = json.loads((copy / "results.json").read_text())["manifest"]
    assert "slice" not in m and m["limit"] == 6 and m["engine"]["units_run"] == 0
    assert "these outputs cover" not in capsys.readouterr().err


def test_missing_rows_are_recomputed_identically(first_run, tmp_path):
    tmp, run = first_run
    copy = tmp_path / "partial"
    copy.mkdir()
    (copy / "predictions.sqlite").write_bytes(store_bytes(run))
    con = sqlite3.connect(copy / "predictions.sqlite")
    with con:
        con.execute("DELETE FROM predictions WHERE condition = 'image:fog@5' AND method = 'atp@0.25'")
        con.execute("DELETE FROM predictions WHERE example_id = 'shapes/test/5'")
    con.close()
    assert main([str(suite_file(tmp)), "--out", str(copy), "--no-progress"]) == 0
    assert read_samples(copy) == read_samples(run)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    suite = suite_file(tmp_path, name="kill", limit=24, batch=2)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cmd = [sys.executable, "-m", "robust_atp.run", str(suite), "--no-progress", "--out"]
    subprocess.run(cmd + [str(whole)], check=True, capture_output=True)
    total = 24 * 3 * 3
    proc = subprocess.Popen(cmd + [str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = killed / "predictions.sqlite"
    deadline = time.time() + 120
    count = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            con = sqlite3.connect(db, timeout=1)
            count = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
            con.close()
        except sqlite3.Error:
            count = 0
        if count >= total // 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    partial = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    con.close()
    assert 0 < partial < total
    subprocess.run(cmd + [str(killed)], check=True, capture_output=True)
    a, b = read_samples(whole), read_samples(killed)
    assert len(a) == len(b) == total
    assert a == b


def test_a_layer_the_model_does_not_have_is_one_user_error():
    from types import SimpleNamespace

    from robust_atp.preflight import check_method_layers
    from robust_atp.errors import UserError
    from robust_atp.prune.methods import validate_method
    from robust_atp.suite import MethodCfg

    adapter = SimpleNamespace(cost_configs=lambda: {"vision": SimpleNamespace(num_hidden_layers=4),
                                                    "llm": SimpleNamespace(num_hidden_layers=4)})
    ok = [validate_method(MethodCfg(name=n, keep=0.25, layer=l))
          for n, l in (("atp", -4), ("cls", 3), ("visionzip_mean", 0), ("fastv", 2))]
    check_method_layers(ok, adapter)
    for name, layer, msg in (("visionzip_mean", 12, "outside the vision tower's 4 layers"),
                             ("atp", -5, "outside the vision tower's 4 layers"),
                             ("fastv", 3, "must be in 0..2"), ("fastv", 9, "must be in 0..2")):
        with pytest.raises(UserError, match=msg):
            check_method_layers([validate_method(MethodCfg(name=name, keep=0.25, layer=layer))], adapter)
