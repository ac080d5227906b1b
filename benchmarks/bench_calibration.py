"""Calibration of the report's and the gate's statistics, from simulations with realistic
correlation (pruned and full answers share each question's and each image's difficulty) and
clustering (several questions per image, of varying number):

    (1) null rejection rate of each test at alpha 0.05
    (2) CI coverage at 20 / 60 / 300 clusters, the old percentile interval beside the expanded BCa
    (3) family-wise error over 290 correlated comparisons (58 conditions x 5 pruned methods)
    (4) power for 2- and 5-point drops at n = 300 and 1000 after the correction
    (5) the gate's false-fail rate on noise-only runs
    (6) the committed CI slice: its minimum detectable drops and its measured power

    python benchmarks/bench_calibration.py [--sims N] [--quick] [--sections 1,2,...]

Every simulation is seeded; rates are over `--sims` draws (fewer for the costly sections; the
count is printed). --quick is a smoke test with a handful of draws.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

from robust_atp.stats import bootstrap_ci, cluster_sums, paired_tests, signflip_test  # noqa: E402

ALPHA = 0.05
BASELINE = ROOT / "reports" / "baselines" / "demo_ci"


# ----------------------------------------------------------------------------- simulated data

class World:
    """Questions on images: `sizes` questions per image (fixed, or drawn from 2..6), a latent ease
    per image (sd `image_sd`) and per question (sd 1); each (method, condition) answers correctly
    when ease + its own noise (sd `noise_sd`: the churn between methods) clears a threshold set
    for the wanted accuracy."""

    def __init__(self, rng, images: int, sims: int, per_image: int | None = 4, image_sd: float = 0.8,
                 noise_sd: float = 0.6):
        sizes = (np.full(images, per_image) if per_image else rng.integers(2, 7, size=images))
        self.clusters = np.repeat(np.arange(images), sizes)
        E = self.clusters.size
        self.rng, self.sims, self.noise_sd = rng, sims, noise_sd
        self.ease = rng.normal(0, image_sd, (images, sims))[self.clusters] + rng.normal(0, 1, (E, sims))
        self.scale = np.sqrt(image_sd ** 2 + 1 + noise_sd ** 2)

    def answers(self, accuracy) -> np.ndarray:
        """`[E, sims]` 0/1 scores of one (method, condition) at `accuracy` (a scalar or `[sims]`)."""
        noise = self.rng.normal(0, self.noise_sd, self.ease.shape)
        return (self.ease + noise > norm.ppf(1 - np.asarray(accuracy)) * self.scale).astype(np.float64)


def churned(rng, scores: np.ndarray, drop: float, churn: float) -> np.ndarray:
    """Another run's 0/1 scores: a share `churn` of the answers changes, losses exceeding gains by
    `drop` in expectation (per column, at that column's accuracy)."""
    acc = np.clip(scores.mean(0, keepdims=True), 1e-9, 1 - 1e-9)
    lose, gain = (churn + drop) / (2 * acc), (churn - drop) / (2 * (1 - acc))
    u = rng.random(scores.shape)
    return np.where(scores == 1, (u >= lose).astype(np.float64), (u < gain).astype(np.float64))


def lose_answers(rng, scores: np.ndarray, drop: float) -> np.ndarray:
    """A drop made of lost answers: each correct answer turns wrong with probability drop / accuracy."""
    r = drop / np.maximum(scores.mean(0, keepdims=True), 1e-9)
    return np.where((scores == 1) & (rng.random(scores.shape) < r), 0.0, scores)


def plain_sum_signflip(D: np.ndarray, clusters: np.ndarray, n_perm: int, rng) -> np.ndarray:
    """The sign-flip test with the plain sum as its statistic (the previous one), two-sided."""
    S, _ = cluster_sums(D, clusters)
    signs = rng.choice((-1.0, 1.0), size=(n_perm, S.shape[0]))
    hits = (np.abs(signs @ S) >= np.abs(S.sum(0)) - 1e-9).sum(0)
    return (1 + hits) / (1 + n_perm)


def percentile_ci(X: np.ndarray, clusters: np.ndarray, n_boot: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """The plain percentile interval of the cluster bootstrap (the previous one)."""
    S, n = cluster_sums(X, clusters)
    G = S.shape[0]
    w = rng.multinomial(G, np.full(G, 1 / G), size=n_boot).astype(np.float64)
    means = (w @ S) / (w @ n)
    return np.quantile(means, ALPHA / 2, axis=0), np.quantile(means, 1 - ALPHA / 2, axis=0)


def row(*cells, widths=(44, 28, 8, 12, 10)) -> str:
    return "".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths)))


# ----------------------------------------------------------------------------- sections

def null_rejection(sims: int, n_perm: int) -> None:
    print(f"\n(1) Null rejection at alpha {ALPHA} (same accuracy, correlated pairs)")
    print(row("test", "setting", "draws", "rejected"))
    rng = np.random.default_rng(1)
    w = World(rng, 300, sims, per_image=1)
    p = paired_tests(w.answers(0.7), w.answers(0.7), w.clusters, n_perm, 0)
    print(row("exact McNemar (0/1, one question per image)", "n=300, accuracy 0.7", sims, f"{(p.p < ALPHA).mean():.3f}"))
    w = World(rng, 75, sims, per_image=None)
    p = paired_tests(w.answers(0.7), w.answers(0.7), w.clusters, n_perm, 0)
    print(row("image-level sign flip (0/1)", "75 images x 2-6 questions", sims, f"{(p.p < ALPHA).mean():.3f}"))
    soft = lambda: sum(w.answers(0.6) for _ in range(3)) / 3  # noqa: E731  scores 0, 1/3, 2/3, 1
    p = paired_tests(soft(), soft(), w.clusters, n_perm, 0)
    print(row("image-level sign flip (soft scores)", "75 images x 2-6 questions", sims, f"{(p.p < ALPHA).mean():.3f}"))
    for name, draw in (("exponential", lambda s: rng.exponential(1, s) - 1),
                       ("lognormal", lambda s: np.exp(rng.normal(0, 0.75, s)) - np.exp(0.75 ** 2 / 2))):
        D = draw((30, sims * 2))
        plain = plain_sum_signflip(D, np.arange(30), n_perm, rng)
        new = signflip_test(D, np.arange(30), n_perm, 0).p
        print(row("  plain-sum sign flip (previous)", f"30 images, {name} diffs", sims * 2, f"{(plain < ALPHA).mean():.3f}"))
        print(row("  studentised + Hall sign flip", f"30 images, {name} diffs", sims * 2, f"{(new < ALPHA).mean():.3f}"))
    for n in (300, 1000):
        for churn in (0.02, 0.1):
            base = World(rng, n, sims, per_image=1).answers(0.8)
            cur = churned(rng, base, 0.01, churn)  # a true drop of exactly the 1-point margin
            g = paired_tests(base, cur, np.arange(n), n_perm, 0, "maxt", "greater", 0.01)
            print(row("gate, one-sided H0 drop <= 1 point", f"n={n}, drop 1, churn {churn:.0%}", sims,
                      f"{(g.p <= ALPHA).mean():.3f}"))


def coverage(sims: int, n_boot: int) -> None:
    print(f"\n(2) Coverage of {100 * (1 - ALPHA):.0f}% intervals (2-6 questions per image, image effect)")
    print(row("quantity", "clusters", "draws", "percentile", "exp. BCa"))
    rng = np.random.default_rng(2)
    for G in (20, 60, 300):
        for label, acc in (("accuracy 0.9", 0.9), ("accuracy 0.7", 0.7), ("difference, 0.8 vs 0.75", None)):
            w = World(rng, G, sims, per_image=None, image_sd=1.0)
            if acc is None:
                X, truth = w.answers(0.75) - w.answers(0.8), -0.05
            else:
                X, truth = w.answers(acc), acc
            _, lo, hi = bootstrap_ci(X, w.clusters, n_boot, seed=0, bounds=(-1.0, 1.0) if acc is None else (0.0, 1.0))
            plo, phi = percentile_ci(X, w.clusters, n_boot, rng)
            print(row(label, G, sims, f"{np.mean((plo <= truth) & (truth <= phi)):.3f}",
                      f"{np.mean((lo <= truth) & (truth <= hi)):.3f}"))


def family_wise(sims: int, n_perm: int) -> None:
    print(f"\n(3) Family-wise error over 290 correlated comparisons (58 conditions x 5 methods, null), "
          f"{n_perm} sign flips")
    print(row("family", "setting", "draws", "max-T", "Holm"))
    for per_image, G, label in ((1, 300, "300 images x 1 question"), (4, 75, "75 images x 4 questions")):
        rng = np.random.default_rng(3)
        hits = {"maxt": 0, "holm": 0}
        for s in range(sims):
            w = World(rng, G, 58, per_image=per_image)  # one "sim" column per condition
            acc = rng.uniform(0.4, 0.9, 58)
            full = w.answers(acc)
            A = np.hstack([w.answers(acc) for _ in range(5)])
            B = np.tile(full, 5)
            for correction in hits:
                hits[correction] += paired_tests(A, B, w.clusters, n_perm, s, correction).reject(ALPHA).any()
        print(row("290 comparisons vs full", label, sims, f"{hits['maxt'] / sims:.3f}", f"{hits['holm'] / sims:.3f}"))


def power(sims: int, n_perm: int) -> None:
    print(f"\n(4) Power at alpha {ALPHA} after the correction, one comparison dropping "
          f"(report: two-sided in a family of 290; gate: one-sided H0 drop <= 1 point over 6 pairs)")
    print(row("drop", "n (one question per image)", "draws", "report", "gate (lost)", widths=(14, 28, 8, 10, 13))
          + f"{'gate (churn)':>14}")
    rng = np.random.default_rng(4)
    for n in (300, 1000):
        for drop in (0.02, 0.05):
            hits = np.zeros(3)
            for s in range(sims):
                w = World(rng, n, 290, per_image=1)
                acc = rng.uniform(0.5, 0.9, 290)
                full = w.answers(acc)
                pruned = w.answers(acc)
                pruned[:, 0] = w.answers(acc[0] - drop)[:, 0]
                hits[0] += paired_tests(pruned, full, w.clusters, n_perm, s).reject(ALPHA)[0] \
                    and pruned[:, 0].mean() < full[:, 0].mean()
                base = full[:, :6]
                lost = base.copy()
                lost[:, :1] = lose_answers(rng, base[:, :1], drop)
                hits[1] += paired_tests(base, lost, w.clusters, n_perm, s, "maxt", "greater", 0.01).reject(ALPHA)[0]
                churn = np.hstack([pruned[:, :1], w.answers(acc)[:, 1:6]])  # every pair churns, one drops
                hits[2] += paired_tests(base, churn, w.clusters, n_perm, s, "maxt", "greater", 0.01).reject(ALPHA)[0]
            print(row(f"{100 * drop:.0f} points", n, sims, f"{hits[0] / sims:.3f}", f"{hits[1] / sims:.3f}",
                      widths=(14, 28, 8, 10, 13)) + f"{hits[2] / sims:>14.3f}")
    print("lost: the drop is answers lost, the other pairs unchanged; churn: every pair's answers also change"
          " both ways (about 20% of questions), one pair with the drop")


def false_fail(sims: int, n_perm: int) -> None:
    print("\n(5) The gate's false-fail rate on noise-only runs (answers churn both ways, no true drop), 6 pairs")
    print(row("max-drop", "n, churn", "draws", "failed"))
    rng = np.random.default_rng(5)
    for n in (350, 1000):
        for noise_sd, churn in ((0.25, "~5%"), (0.6, "~20%")):
            for max_drop in (1.0, 0.0):
                w = World(rng, n, 6 * sims, per_image=1, noise_sd=noise_sd)
                acc = rng.uniform(0.5, 0.9, 6 * sims)
                base, cur = w.answers(acc), w.answers(acc)
                failed = 0
                for s in range(sims):
                    cols = slice(6 * s, 6 * s + 6)
                    failed += paired_tests(base[:, cols], cur[:, cols], w.clusters, n_perm, s, "maxt", "greater",
                                           max_drop / 100).reject(ALPHA).any()
                print(row(f"{max_drop:g} points", f"n={n}, churn {churn}", sims, f"{failed / sims:.3f}"))


def ci_slice(draws: int, n_perm: int) -> None:
    from robust_atp.report.regress import compare
    from robust_atp.report.rundata import load_run

    base = load_run(BASELINE)
    print(f"\n(6) The committed CI slice ({BASELINE.relative_to(ROOT)}): a drop injected into one pair of the "
          f"baseline, the gate at --max-drop 1, {draws} draws, {n_perm} sign flips")
    same = {(r["condition"], r["method"]): r for r in compare(base, base, 1.0, ALPHA, n_perm)}
    print(f"{'pair':<40}{'n':>5}{'MDD':>7}{'5 lost':>9}{'MDD lost':>10}{'5 churn':>9}")
    rng = np.random.default_rng(6)
    for pair, r in same.items():
        rates = []
        for drop, mode in ((5.0, "lost"), (r["mdd"], "lost"), (5.0, "churn")):
            hits = 0
            for d in range(draws):
                cur = copy.copy(base)
                cur.samples = [_injected(s, pair, drop / 100, r["baseline"], mode, rng) for s in base.samples]
                rows = compare(base, cur, 1.0, ALPHA, n_perm, seed=d)
                hits += any(x["failed"] for x in rows if (x["condition"], x["method"]) == pair)
            rates.append(hits / draws)
        print(f"{pair[0] + ' / ' + pair[1]:<40}{r['n']:>5}{r['mdd']:>7.1f}" + "".join(f"{x:>9.2f}" for x in rates[:1])
              + f"{rates[1]:>10.2f}{rates[2]:>9.2f}")
    print("5 lost / MDD lost: a 5-point / MDD-sized drop as lost answers; 5 churn: a 5-point drop as 10% of "
          "the pair's answers changing (7.5% lost, 2.5% gained)")


def _injected(s: dict, pair, drop: float, accuracy: float, mode: str, rng) -> dict:
    if (s["condition"], s["method"]) != pair:
        return s
    if mode == "lost":
        flip = s["score"] == 1 and rng.random() < drop / accuracy
    else:  # 10% of the answers change: (10% + drop) / 2 lost, (10% - drop) / 2 gained
        share = (0.1 + drop) / 2 / accuracy if s["score"] == 1 else (0.1 - drop) / 2 / (1 - accuracy)
        flip = rng.random() < max(share, 0.0)
    return {**s, "score": 1.0 - s["score"]} if flip else s


SECTIONS = {"1": null_rejection, "2": coverage, "3": family_wise, "4": power, "5": false_fail, "6": ci_slice}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=2000, help="draws for the cheap sections (default 2000)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: a few draws per section")
    ap.add_argument("--sections", default="1,2,3,4,5,6")
    a = ap.parse_args(argv)
    sims = 20 if a.quick else a.sims
    scale = {"1": (sims, 2000), "2": (sims, 2000), "3": (max(4, sims // 10), 1000), "4": (max(4, sims // 20), 1000),
             "5": (max(4, sims // 4), 1000), "6": (max(4, sims // 20), 1000)}
    if a.quick:
        scale = {k: (4 if k in "3456" else sims, 200) for k in scale}
    t0 = time.perf_counter()
    for key in a.sections.split(","):
        t = time.perf_counter()
        SECTIONS[key.strip()](*scale[key.strip()])
        print(f"[{time.perf_counter() - t:.0f}s]")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
