"""Smoke test of the corruption throughput benchmark: it runs and prints its table."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_corruptions_prints_a_table():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_corruptions.py"), "--size", "64",
                          "--images", "1", "--repeats", "1", "--corruptions", "fog,occlusion"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["corruption", "cold"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:5]}
    assert set(rows) == {"fog", "occlusion"}
    assert all(float(v[0]) > 0 and float(v[1]) > 0 for v in rows.values())
    assert lines[-1].startswith("all (harmonic)")
