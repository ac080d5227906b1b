"""Statistics: agreement with statsmodels, calibration under a simulated null, power, clustering."""

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from robust_atp.metrics.robustness import corruption_errors, jaccard
from robust_atp.stats import (bootstrap_ci, cluster_index, holm, mcnemar_exact, paired_pvalues,
                              signflip_pvalues)

ALPHA = 0.05


def correlated_binary(rng, n, sims, p_full, p_pruned, rho_scale=1.5):
    """Paired 0/1 scores [n, sims] sharing a per-example difficulty (pruned and full agree on most
    examples, as a pruned model and its full model do)."""
    difficulty = rng.normal(size=(n, sims)) * rho_scale
    from scipy.stats import norm

    def draw(p):
        # threshold chosen so the marginal accuracy is p under the latent N(0, 1 + rho^2) model
        t = norm.ppf(1 - p) * np.sqrt(1 + rho_scale ** 2)
        return (difficulty + rng.normal(size=(n, sims)) > t).astype(float)

    return draw(p_full), draw(p_pruned)


# ----------------------------------------------------------------------------- equality with statsmodels

def test_mcnemar_equals_statsmodels():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(5, 200))
        a = (rng.random(n) < rng.random()).astype(float)
        b = np.where(rng.random(n) < 0.7, a, 1 - a)
        table = [[np.sum((a == 1) & (b == 1)), np.sum((a == 1) & (b == 0))],
                 [np.sum((a == 0) & (b == 1)), np.sum((a == 0) & (b == 0))]]
        expected = mcnemar(table, exact=True).pvalue if table[0][1] + table[1][0] else 1.0
        assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)


def test_holm_equals_statsmodels():
    p = np.random.default_rng(2).random(40) ** 3
    reject, adj = holm(p, 0.05)
    ref_reject, ref_adj, _, _ = multipletests(p, alpha=0.05, method="holm")
    assert np.array_equal(reject, ref_reject) and np.allclose(adj, ref_adj)
    assert reject.any() and not reject.all()  # the family is not trivial


def test_paired_pvalues_pick_the_test_by_score_type():
    rng = np.random.default_rng(3)
    binary = (rng.random((50, 1)) < 0.5).astype(float)
    soft = rng.choice([0, 1 / 3, 2 / 3, 1], size=(50, 1))
    A, B = np.hstack([binary, soft]), np.hstack([1 - binary, soft[::-1]])
    p, tests = paired_pvalues(A, B, np.arange(50))
    assert tests == ["mcnemar_exact", "sign_flip"]
    assert p[0] == mcnemar_exact(A[:, 0], B[:, 0])


def test_binary_scores_on_shared_images_use_the_clustered_sign_flip():
    rng = np.random.default_rng(8)
    a, b = (rng.random((60, 1)) < 0.6).astype(float), (rng.random((60, 1)) < 0.6).astype(float)
    assert paired_pvalues(a, b, np.arange(60))[1] == ["mcnemar_exact"]
    assert paired_pvalues(a, b, np.arange(60) // 3)[1] == ["sign_flip"]


def test_calibration_under_null_binary_clustered_signflip():
    """0/1 scores, 4 questions per image sharing an image effect: the image-level sign flip rejects at
    ~alpha where per-question McNemar would not be entitled to."""
    rng = np.random.default_rng(15)
    images, per, sims = 150, 4, 600
    clusters = np.repeat(np.arange(images), per)
    effect = np.repeat(rng.normal(size=(images, sims)), per, axis=0)
    draw = lambda: (effect + rng.normal(size=(images * per, sims)) > 0).astype(float)
    p, tests = paired_pvalues(draw(), draw(), clusters, n_perm=2000, seed=0)
    rate = np.mean(p < ALPHA)
    print(f"clustered sign-flip (0/1) null rejection rate: {rate:.3f}")
    assert set(tests) == {"sign_flip"} and 0.03 <= rate <= 0.07


def hall_statistic(d: np.ndarray, clusters: np.ndarray) -> float:
    """The sign-flip statistic written out plainly for one sign pattern: the studentised mean with
    the cluster-robust standard error, then Hall's cubic skewness correction."""
    ids = np.unique(clusters)
    sums = np.array([d[clusters == g].sum() for g in ids])
    sizes = np.array([(clusters == g).sum() for g in ids], dtype=float)
    mean = sums.sum() / sizes.sum()
    resid = sums - sizes * mean
    var = (resid ** 2).sum()
    if var == 0:
        return 0.0 if mean == 0 else np.sign(mean) * np.inf
    t = mean / (np.sqrt(len(ids) / (len(ids) - 1) * var) / sizes.sum())
    a = (resid ** 3).sum() / var ** 1.5
    return t + a * (t ** 2 / 3 + 1 / 6) + a ** 2 * t ** 3 / 27


def test_signflip_exact_enumeration_matches_brute_force():
    import itertools
    d = np.array([0.0, 1 / 3, -2 / 3, 1.0, 1 / 3, 0.0, 2 / 3, -1 / 3, 1.0])
    for clusters in (np.arange(len(d)), np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])):
        p = signflip_pvalues(d, clusters)[0]
        nonzero = [g for g in np.unique(clusters) if d[clusters == g].sum() != 0]
        observed = abs(hall_statistic(d, clusters))
        stats_ = []
        for signs in itertools.product((-1, 1), repeat=len(nonzero)):
            flip = dict(zip(nonzero, signs))
            stats_.append(abs(hall_statistic(d * np.array([flip.get(g, 1) for g in clusters]), clusters)))
        assert p == pytest.approx(np.mean(np.array(stats_) >= observed - 1e-9))
    assert signflip_pvalues(np.zeros(10), np.arange(10))[0] == 1.0


def test_monte_carlo_signflip_agrees_with_exact_enumeration():
    """Past EXACT_SIGNFLIP_MAX differing clusters the p-value is sampled: with many draws it lands on the
    value enumerated over all 2^14 patterns (the statistic written out for singleton clusters)."""
    import itertools
    rng = np.random.default_rng(21)
    d = rng.choice([-1.0, -1 / 3, 1 / 3, 2 / 3, 1.0], size=14)
    x = np.array(list(itertools.product((-1.0, 1.0), repeat=14))) * d  # [2^14, 14]
    resid = x - x.mean(1, keepdims=True)
    var = (resid ** 2).sum(1)
    t = x.mean(1) / (np.sqrt(14 / 13 * var) / 14)
    a = (resid ** 3).sum(1) / var ** 1.5
    T = np.abs(t + a * (t ** 2 / 3 + 1 / 6) + a ** 2 * t ** 3 / 27)
    exact = np.mean(T >= T[-1] - 1e-9)  # the last pattern is all +1: the observed data
    assert T[-1] == pytest.approx(abs(hall_statistic(d, np.arange(14))))
    p = signflip_pvalues(d, np.arange(14), n_perm=40_000, seed=3)[0]
    assert p == pytest.approx(exact, abs=0.01)


# ----------------------------------------------------------------------------- calibration and power

def test_calibration_under_null_binary_mcnemar():
    """Same marginal accuracy, correlated pairs: exact McNemar rejects at ~alpha over 1000 simulations."""
    rng = np.random.default_rng(10)
    a, b = correlated_binary(rng, n=1000, sims=1000, p_full=0.7, p_pruned=0.7)
    rate = np.mean([mcnemar_exact(a[:, k], b[:, k]) < ALPHA for k in range(a.shape[1])])
    print(f"McNemar null rejection rate: {rate:.3f}")
    assert 0.03 <= rate <= 0.07


def test_calibration_under_null_soft_signflip():
    """Soft VQA-style scores in {0, 1/3, 2/3, 1}, exchangeable pairs: sign-flip rejects at ~alpha."""
    rng = np.random.default_rng(11)
    n, sims = 300, 600
    base = rng.choice([0, 1 / 3, 2 / 3, 1], size=(n, sims), p=[0.3, 0.1, 0.2, 0.4])
    noise = lambda: np.clip(base + rng.choice([-1 / 3, 0, 1 / 3], size=(n, sims), p=[0.2, 0.6, 0.2]), 0, 1)
    a, b = noise(), noise()
    p = signflip_pvalues(a - b, np.arange(n), n_perm=2000, seed=0)
    rate = np.mean(p < ALPHA)
    print(f"sign-flip null rejection rate: {rate:.3f}")
    assert 0.03 <= rate <= 0.07


def test_calibration_under_null_clustered_bootstrap_did():
    """The difference-in-differences CI (clustered bootstrap) excludes 0 at ~alpha under a null with
    6 questions per image."""
    rng = np.random.default_rng(12)
    images, per, sims = 100, 6, 500
    clusters = np.repeat(np.arange(images), per)
    img_effect = rng.normal(size=(images, 1, 1)).repeat(per, 0).reshape(images * per, 1)
    draws = lambda: (img_effect + rng.normal(size=(images * per, sims)) > 0).astype(float)
    did = (draws() - draws()) - (draws() - draws())
    _, lo, hi = bootstrap_ci(did, clusters, n_boot=1000, seed=0)
    rate = np.mean((lo > 0) | (hi < 0))
    print(f"clustered-bootstrap DiD null rejection rate: {rate:.3f}")
    assert 0.03 <= rate <= 0.07


def test_power_five_point_drop_at_n_1000():
    """Full at 80%, pruned at 75% (correlated pairs), n = 1000: detected in >= 80% of 500 simulations."""
    rng = np.random.default_rng(13)
    full, pruned = correlated_binary(rng, n=1000, sims=500, p_full=0.80, p_pruned=0.75)
    p = [mcnemar_exact(pruned[:, k], full[:, k]) for k in range(full.shape[1])]
    power = np.mean(np.array(p) < ALPHA)
    drop = np.mean(full - pruned)
    print(f"McNemar power at a {100 * drop:.1f}-point drop, n=1000: {power:.3f}")
    assert 0.045 < drop < 0.055 and power >= 0.80


def test_power_soft_scores_signflip():
    rng = np.random.default_rng(14)
    n, sims = 1000, 200
    base = rng.choice([0, 1 / 3, 2 / 3, 1], size=(n, sims), p=[0.2, 0.1, 0.2, 0.5])
    full = base
    pruned = np.clip(base - (rng.random((n, sims)) < 0.15) / 3, 0, 1)  # ~5 points lower
    p = signflip_pvalues(pruned - full, np.arange(n), n_perm=2000, seed=1)
    assert np.mean(p < ALPHA) >= 0.80


# ----------------------------------------------------------------------------- bootstrap

def test_cluster_bootstrap_widens_ci_when_examples_share_images():
    rng = np.random.default_rng(4)
    images, per = 50, 6
    image_ids = np.repeat([f"img{i}" for i in range(images)], per)
    # an image mostly decides whether its questions are answered correctly
    p_img = rng.beta(0.5, 0.5, size=images).repeat(per)
    scores = (rng.random(images * per) < p_img).astype(float)
    _, lo_c, hi_c = bootstrap_ci(scores, cluster_index(image_ids), n_boot=4000, seed=0)
    _, lo_e, hi_e = bootstrap_ci(scores, np.arange(images * per), n_boot=4000, seed=0)
    print(f"CI width clustered {hi_c[0] - lo_c[0]:.3f} vs per example {hi_e[0] - lo_e[0]:.3f}")
    assert hi_c[0] - lo_c[0] > 1.5 * (hi_e[0] - lo_e[0])


def test_bootstrap_matches_the_plain_bootstrap_for_singleton_clusters():
    x = np.random.default_rng(5).random(400)
    est, lo, hi = bootstrap_ci(x, np.arange(400), n_boot=5000, seed=0)
    se = x.std(ddof=1) / np.sqrt(400)
    assert est[0] == pytest.approx(x.mean())
    assert hi[0] - lo[0] == pytest.approx(2 * 1.96 * se, rel=0.08)


def test_bootstrap_is_seeded_and_handles_missing_values():
    X = np.random.default_rng(6).random((100, 3))
    X[::7, 1] = np.nan
    a = bootstrap_ci(X, np.arange(100), n_boot=500, seed=9)
    b = bootstrap_ci(X, np.arange(100), n_boot=500, seed=9)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0][1] == pytest.approx(np.nanmean(X[:, 1]))


# ----------------------------------------------------------------------------- summaries

def test_mce_and_relative_mce_normalised_by_full():
    acc = {("clean", "full"): 0.9, ("clean", "p"): 0.8,
           ("image:fog@1", "full"): 0.8, ("image:fog@3", "full"): 0.6,
           ("image:fog@1", "p"): 0.6, ("image:fog@3", "p"): 0.5}
    rows = {(r["method"], r["family"]): r for r in corruption_errors(acc, ["full", "p"])}
    # CE = (0.4 + 0.5) / (0.2 + 0.4); relative = ((0.4-0.2) + (0.5-0.2)) / ((0.2-0.1) + (0.4-0.1))
    assert rows["p", "image:fog"]["ce"] == pytest.approx(0.9 / 0.6)
    assert rows["p", "image:fog"]["relative_ce"] == pytest.approx(0.5 / 0.4)
    assert rows["full", "mean"]["ce"] == pytest.approx(1.0) and rows["full", "mean"]["relative_ce"] == pytest.approx(1.0)


def test_jaccard():
    assert jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(0.5)
    assert jaccard([], []) == 1.0 and jaccard([1], [2]) == 0.0



# ----------------------------------------------------------------------------- properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1 / 3, 2 / 3, 1.0]), st.sampled_from([0.0, 1 / 3, 2 / 3, 1.0])),
                min_size=1, max_size=40))
def test_paired_test_is_symmetric_and_a_probability(pairs):
    a, b = np.array(pairs).T
    p_ab, _ = paired_pvalues(a[:, None], b[:, None], np.arange(len(a)), n_perm=500, seed=0)
    p_ba, _ = paired_pvalues(b[:, None], a[:, None], np.arange(len(a)), n_perm=500, seed=0)
    assert 0 < p_ab[0] <= 1 and p_ab[0] == pytest.approx(p_ba[0])


@settings(max_examples=12, deadline=None)  # statsmodels' multipletests runs gc.collect() on every call
@given(st.lists(st.floats(0, 1), min_size=1, max_size=60))
def test_holm_adjusted_p_is_at_least_raw_p(p):
    reject, adj = holm(p)
    assert np.all(adj >= np.array(p) - 1e-12) and np.all(adj <= 1)
    assert np.array_equal(reject, adj <= 0.05)
