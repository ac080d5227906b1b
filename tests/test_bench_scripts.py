"""Smoke tests of the benchmark scripts: each runs on a tiny input and prints its table."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table(script: str, *args: str) -> list[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, check=True, timeout=120).stdout.splitlines()


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
