"""Smoke tests of the benchmark scripts: each runs on a tiny input and prints its table."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_COLUMNS = ("method", "keep", "tokens", "bound", "prefill", "e2e", "eff", "ans/s", "peakMB", "select%", "+text%",
               "same", "prefill_ms", "vision_ms", "e2e_ms")
KEEPS = (1, 0.5, 0.25, 0.125)


def _table(script: str, *args: str) -> list[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, check=True, timeout=600).stdout.splitlines()


def test_bench_corruptions_prints_a_table():
    lines = _table("bench_corruptions.py", "--size", "64", "--images", "1", "--repeats", "1",
                   "--corruptions", "fog,occlusion")
    assert lines[1].split()[:2] == ["corruption", "cold"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:5]}
    assert set(rows) == {"fog", "occlusion"}
    assert all(float(v[0]) > 0 and float(v[1]) > 0 for v in rows.values())
    assert lines[-1].startswith("all (harmonic)")


def test_bench_stats_prints_a_table():
    lines = _table("bench_stats.py", "--examples", "40", "--columns", "5", "--resamples", "200", "--repeats", "1")
    assert lines[1].split() == ["statistic", "clusters", "seconds"]
    assert len(lines) == 6 and [line.split()[-2] for line in lines[2:]] == ["40", "40", "10", "10"]
    assert all(float(line.split()[-1]) >= 0 for line in lines[2:])


@pytest.mark.slow
def test_bench_calibration_quick_prints_every_section():
    lines = _table("bench_calibration.py", "--quick")
    titles = [line.split(")")[0] for line in lines if line[:3] in {f"({k})" for k in "123456"}]
    assert titles == [f"({k}" for k in "123456"]
    rates = [float(line.split()[-1]) for line in lines if line.startswith("studentised")
             or line.startswith("  studentised")]
    assert rates and all(0 <= r <= 1 for r in rates) and lines[-1].startswith("total")


@pytest.mark.slow
def test_bench_prune_quick_prints_both_tables():
    lines = _table("bench_prune.py", "--quick")
    titles = [i for i, line in enumerate(lines) if line.startswith(("(a) demo model", "(b) LLaVA-1.5-shaped"))]
    assert len(titles) == 2
    for t in titles:
        assert lines[t + 1].split()[:6] == ["keep", "tokens", "flops", "prefill", "pred", "e2e"]
        full, quarter = lines[t + 3].split(), lines[t + 4].split()
        assert full[:3] == ["1", str(int(full[1])), "1.000"] and full[3] == "1.000" and full[6] == full[7] == "-"
        assert quarter[0] == "0.25" and int(quarter[1]) * 4 == int(full[1]) and 0 < float(quarter[2]) < 0.5
        assert float(full[8]) == 0.0 and float(quarter[8]) == 0.0  # counted FLOPs == analytical
        assert 0 <= float(quarter[6]) <= float(quarter[7]) and all(float(x) > 0 for x in quarter[9:11] + quarter[13:])
    assert "576 tokens" in lines[titles[1]]


@pytest.mark.slow
def test_bench_engine_quick_checks_predictions_and_prints_every_optimisation():
    lines = _table("bench_engine.py", "--quick")
    assert "identical in every row" in lines[0] and "x 6 methods" in lines[0]
    legend = next(i for i, line in enumerate(lines) if line.startswith("threads = "))
    rows = {line[:22].strip(): line[22:].split()[1:] for line in lines[2:legend]}
    labels = ["naive loop", "engine, none", "+ fuse", "+ reuse_prefix", "+ lean", "+ prefetch", "engine, all"]
    assert list(rows) in (labels, labels + ["all, 1 thread less", "all, 2 processes"])  # the last two with 2 threads
    procs = rows.pop("all, 2 processes", None)  # 2 questions: a batch of one in each process
    if procs is not None:
        assert procs[0] == str(2 * 2) and procs[-1].endswith("x")  # a vision pass per batch and image condition
    vision, corrupted, calls, prefixes = ({k: int(v[i]) for k, v in rows.items()} for i in range(4))
    assert vision["naive loop"] == 6 * 3 and set(vision.values()) - {18} == {2}  # per method vs shared
    assert corrupted["naive loop"] == 6 * corrupted["engine, none"] > 0
    # 2 questions x 3 conditions: one call per method and condition, fewer when fused
    assert calls["naive loop"] == calls["engine, none"] == calls["+ reuse_prefix"] == calls["+ lean"] == 18
    assert calls["+ prefetch"] == 18
    assert calls["+ fuse"] < 18 and calls["engine, all"] < 18
    # full, random and cls read no question: one prefix each on the clean image, reused once
    assert prefixes["+ reuse_prefix"] == prefixes["engine, all"] == 3 and prefixes["+ fuse"] == prefixes["+ lean"] == 0
    assert all(v[-1].endswith("x") for v in rows.values()) and rows["engine, none"][-1] == "1.00x"
    assert lines[-1].startswith("speedup (engine, all vs engine, none):")


@pytest.mark.slow
def test_bench_gpu_tiny_prints_both_families_and_keep_1_atp_is_full(tmp_path):
    out = tmp_path / "gpu.json"
    lines = _table("bench_gpu.py", "--tiny", "--json", str(out))
    heads = [i for i, line in enumerate(lines) if line.split() == list(GPU_COLUMNS)]
    assert len(heads) == 2 and lines[heads[0] - 1].startswith("LLaVA-1.5-7B-shaped (TINY)")
    assert lines[heads[1] - 1].startswith("Qwen2-VL-7B-shaped (TINY)")
    tables = []
    for h in heads:
        rows = []
        for line in lines[h + 2:]:
            if not line.strip() or line.startswith("  not run:"):
                break
            rows.append(dict(zip(GPU_COLUMNS, line.split())))
        tables.append(rows)
    llava, qwen = tables
    want = [("full", "1")] + [(m, f"{k:g}") for m in ("atp", "fastv", "visionzip") for k in KEEPS]
    assert [(r["method"], r["keep"]) for r in llava] == want
    assert [(r["method"], r["keep"]) for r in qwen] == want[:1 + len(KEEPS)]  # Qwen2-VL refuses FastV, VisionZip
    refused = [line for line in lines[heads[1]:] if line.startswith("  not run:")]
    assert len(refused) == 2 and "fastv" in refused[0] and "visionzip" in refused[1]
    for rows in tables:
        for r in rows:
            for c in ("bound", "prefill", "e2e", "eff", "ans/s", "peakMB", "prefill_ms", "vision_ms", "e2e_ms"):
                assert math.isfinite(float(r[c])) and float(r[c]) > 0, (r, c)
            for c in ("select%", "+text%"):
                assert (r[c] == "-") == (r["method"] == "full") and (r[c] == "-" or 0 <= float(r[c]) < math.inf)
        full, atp1 = rows[0], rows[1]
        assert full["bound"] == full["prefill"] == full["e2e"] == "1.000" and full["same"] == "2/2"
        assert atp1["method"] == "atp" and atp1["same"] == "2/2" and atp1["bound"] == "1.000"  # ATP at K = N is full
        atp = rows[1:1 + len(KEEPS)]
        assert [int(r["tokens"]) for r in atp] == [64, 32, 16, 8]
        assert [float(r["bound"]) for r in atp] == sorted(float(r["bound"]) for r in atp)
    # the `same` column can tell: pruning changes some answers of the random model
    assert any(r["same"] != "2/2" for r in llava if r["keep"] in ("0.25", "0.125"))
    assert lines[-2] == "ATP at keep 1 gives full's answers: yes (2/2, 2/2)" and lines[-1].startswith("total ")
    data = json.loads(out.read_text())
    assert data["mode"] == "tiny" and set(data["models"]) == {"llava", "qwen2_vl"}
    assert [r["label"] for r in data["models"]["llava"]["rows"]][:2] == ["full", "atp@1"]
    assert all(math.isfinite(r["answers_per_s"]) and r["answers_per_s"] > 0
               for m in data["models"].values() for r in m["rows"])
