"""Statistics throughput: the clustered bootstrap (expanded BCa) and the sign-flip test (each
column's p and the max-T step-down over the shared sign matrix) at suite scale, medians over repeats.
Their calibration is benchmarks/bench_calibration.py.

    python benchmarks/bench_stats.py [--examples 300] [--columns 300] [--resamples 10000] [--repeats 3]

Columns stand for (condition, method) series of 0/1 scores; the report runs one bootstrap
over all of them at once. "shared images" gives every image 4 questions.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from robust_atp.stats import bootstrap_ci, signflip_pvalues  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--columns", type=int, default=300)
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    X = (rng.random((a.examples, a.columns)) < 0.7).astype(float)
    D = X - (rng.random((a.examples, a.columns)) < 0.7).astype(float)
    print(f"{a.examples} examples x {a.columns} columns, {a.resamples} resamples, median of {a.repeats}")
    print(f"{'statistic':<48}{'clusters':>10}{'seconds':>10}")
    for label, clusters in (("one question per image", np.arange(a.examples)),
                            ("shared images (4 questions each)", np.arange(a.examples) // 4)):
        s = median_seconds(lambda: bootstrap_ci(X, clusters, n_boot=a.resamples, seed=0), a.repeats)
        print(f"{'bootstrap CI, ' + label:<48}{clusters.max() + 1:>10}{s:>10.2f}")
        s = median_seconds(lambda: signflip_pvalues(D, clusters, n_perm=a.resamples, seed=0), a.repeats)
        print(f"{'sign-flip test, ' + label:<48}{clusters.max() + 1:>10}{s:>10.2f}")


if __name__ == "__main__":
    main()
