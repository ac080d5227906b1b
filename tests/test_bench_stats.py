"""Smoke test of the statistics benchmark: it runs and prints its table."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_stats_prints_a_table():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_stats.py"), "--examples", "40",
                          "--columns", "5", "--resamples", "200", "--repeats", "1"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    lines = out.splitlines()
    assert lines[1].split() == ["statistic", "clusters", "seconds"]
    assert len(lines) == 6 and [line.split()[-2] for line in lines[2:]] == ["40", "40", "10", "10"]
    assert all(float(line.split()[-1]) >= 0 for line in lines[2:])
