"""Statistics at any size: multiplicity at any permutation count, intervals from few clusters,
degenerate inputs, skewed differences, cluster labels and mCE families. Each test checks a
behaviour the previous statistics got wrong (percentile intervals, Holm after sign flips,
the plain-sum sign flip, string cluster labels, one mCE over every family). Functions added with
those fixes are imported inside the tests that use them, so each test stands or falls on its own."""
import numpy as np
import pytest
from scipy.stats import norm

from robust_atp.stats import bootstrap_ci, cluster_index, holm, mcnemar_exact, signflip_pvalues

ALPHA = 0.05


def clustered_scores(rng, images: int, per_image: int, sims: int, accuracy, image_sd=1.0, noise_sd=0.6):
    """0/1 scores `[images * per_image, sims]` sharing an image effect, and their cluster ids."""
    clusters = np.repeat(np.arange(images), per_image)
    ease = rng.normal(0, image_sd, (images, sims))[clusters] + rng.normal(0, 1, (clusters.size, sims))
    scale = np.sqrt(image_sd ** 2 + 1 + noise_sd ** 2)
    noise = rng.normal(0, noise_sd, ease.shape)
    return (ease + noise > norm.ppf(1 - np.asarray(accuracy)) * scale).astype(float), clusters, ease


# ----------------------------------------------------------------------------- multiplicity

def test_a_large_drop_is_significant_at_100_sign_flips():
    """100 sign flips, 21 comparisons, questions sharing images: Holm needs p <= alpha / 21 < 1 / 101
    and can flag nothing; the max-T step-down flags the 25-point drop and nothing else."""
    from robust_atp.stats import paired_tests

    rng = np.random.default_rng(0)
    full, clusters, ease = clustered_scores(rng, 30, 4, 21, 0.8)
    pruned = (ease + rng.normal(0, 0.6, ease.shape) > norm.ppf(0.2) * np.sqrt(2.36)).astype(float)  # same accuracy
    pruned[:, 0] = np.where(rng.random(120) < 0.3, 0.0, full[:, 0])  # about 25 points lost
    holm_tests = paired_tests(pruned, full, clusters, n_perm=100, seed=0, correction="holm")
    assert not holm_tests.reject(ALPHA).any()
    assert not holm_tests.resolvable(ALPHA)[0]  # sampled p-values stop at 1/101; the report says so
    maxt = paired_tests(pruned, full, clusters, n_perm=100, seed=0)
    assert maxt.tests == ["sign_flip"] * 21
    assert maxt.reject(ALPHA)[0] and maxt.reject(ALPHA).sum() == 1
    assert maxt.p_adj[0] == pytest.approx(1 / 101) and maxt.resolvable(ALPHA).all()


def test_every_comparison_of_290_with_a_15_point_drop_is_found_at_5000_flips():
    from robust_atp.stats import paired_tests

    rng = np.random.default_rng(1)
    acc = rng.uniform(0.6, 0.9, 290)
    full, clusters, _ = clustered_scores(rng, 75, 4, 290, acc)
    pruned = np.where((full == 1) & (rng.random(full.shape) < 0.15 / acc), 0.0, full)
    assert not paired_tests(pruned, full, clusters, 5000, 0, "holm").reject(ALPHA).any()  # 1/5001 > 0.05/290
    found = paired_tests(pruned, full, clusters, 5000, 0).reject(ALPHA).sum()
    print(f"max-T rejections: {found} of 290")
    assert found >= 280


def test_maxt_keeps_the_family_wise_error_at_alpha():
    """60 null comparisons sharing examples and the full model's answers: any false rejection in
    about 5% of 400 families (Holm's own p-values would give much less: it ignores the correlation)."""
    from robust_atp.stats import paired_tests

    rng = np.random.default_rng(2)
    false = 0
    for s in range(400):
        full, clusters, ease = clustered_scores(rng, 40, 3, 12, 0.7)
        pruned = np.hstack([(ease + rng.normal(0, 0.6, ease.shape) > norm.ppf(0.3) * np.sqrt(2.36)).astype(float)
                            for _ in range(5)])
        false += paired_tests(pruned, np.tile(full, 5), clusters, 200, s).reject(ALPHA).any()
    print(f"family-wise error: {false / 400:.3f}")
    assert 0.025 <= false / 400 <= 0.075


def test_adjusted_p_values_are_monotone_and_above_each_own_p():
    from robust_atp.stats import signflip_test

    rng = np.random.default_rng(3)
    full, clusters, _ = clustered_scores(rng, 40, 2, 30, 0.7)
    pruned = np.where(rng.random(full.shape) < np.linspace(0, 0.3, 30), 0.0, full)
    res = signflip_test(pruned - full, clusters, 2000, 0)
    order = np.argsort(-np.abs(res.statistic))
    assert np.all(np.diff(res.p_adj[order]) >= -1e-12)
    assert np.all(res.p_adj >= res.p - 1e-12) and np.all(res.p_adj <= 1)


# ----------------------------------------------------------------------------- intervals from few clusters

def _percentile(X, clusters, n_boot, rng):
    """The plain percentile interval of the cluster bootstrap, `X: [E, K]` without missing values."""
    G = clusters.max() + 1
    S, n = np.zeros((G, X.shape[1])), np.zeros((G, 1))
    np.add.at(S, clusters, X)
    np.add.at(n, clusters, 1.0)
    w = rng.multinomial(G, np.full(G, 1 / G), size=n_boot).astype(float)
    means = (w @ S) / (w @ n)
    return np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2], axis=0)


def test_coverage_from_20_images_at_accuracy_0_9():
    """20 images x 5 questions, a strong image effect: the percentile interval covers about 89%, the
    expanded BCa at least 93% (2000 simulated runs, vectorised as columns)."""
    rng = np.random.default_rng(4)
    X, clusters, _ = clustered_scores(rng, 20, 5, 2000, 0.9)
    _, lo, hi = bootstrap_ci(X, clusters, n_boot=2000, seed=0)
    plo, phi = _percentile(X, clusters, 2000, rng)
    covered, covered_pct = np.mean((lo <= 0.9) & (0.9 <= hi)), np.mean((plo <= 0.9) & (0.9 <= phi))
    print(f"coverage: expanded BCa {covered:.3f}, percentile {covered_pct:.3f}")
    assert covered >= 0.93 and covered_pct < 0.91
    assert np.all(lo <= hi)


def test_degenerate_samples_get_defined_intervals():
    # one image: nothing to resample
    est, lo, hi = bootstrap_ci(np.array([1.0, 0.0, 1.0]), np.zeros(3, dtype=int))
    assert est[0] == pytest.approx(2 / 3) and np.isnan(lo[0]) and np.isnan(hi[0])
    # 60 of 60 correct: the Clopper-Pearson bound over 60 clusters, not [1, 1]
    est, lo, hi = bootstrap_ci(np.ones(60), np.arange(60))
    assert est[0] == 1 and hi[0] == 1 and lo[0] == pytest.approx(0.025 ** (1 / 60)) and lo[0] < 0.95
    # a pruned method answering exactly as the full model: a difference of 0 is not known to be exactly 0
    est, lo, hi = bootstrap_ci(np.zeros(300), np.arange(300) // 3, bounds=(-1.0, 1.0))
    u = 1 - 0.025 ** (1 / 100)
    assert est[0] == 0 and lo[0] == pytest.approx(-u) and hi[0] == pytest.approx(u)
    # empty input and an all-missing column: NaN, no exception
    est, lo, hi = bootstrap_ci(np.zeros((0, 2)), np.zeros(0, dtype=int))
    assert est.shape == (2,) and np.isnan(est).all() and np.isnan(lo).all()
    X = np.random.default_rng(5).random((50, 2))
    X[:, 1] = np.nan
    est, lo, hi = bootstrap_ci(X, np.arange(50), n_boot=500)
    assert np.isfinite([est[0], lo[0], hi[0]]).all() and np.isnan([est[1], lo[1], hi[1]]).all()
    # a near-boundary sample keeps a non-zero width
    _, lo, hi = bootstrap_ci(np.r_[np.ones(59), 0.0], np.arange(60), n_boot=2000)
    assert lo[0] < 59 / 60 < hi[0] or (lo[0] < 59 / 60 and hi[0] == 1.0)


def test_degenerate_tests_return_defined_values():
    from robust_atp.stats import paired_tests, signflip_test

    empty = np.zeros((0, 3))
    res = paired_tests(empty, empty, np.zeros(0, dtype=int))
    assert np.isnan(res.p).all() and not res.reject(ALPHA).any()
    assert np.isnan(mcnemar_exact(np.array([]), np.array([])))
    assert signflip_test(np.zeros(5), np.zeros(5, dtype=int)).p[0] == 1.0  # one image, no difference
    one = signflip_test(np.array([1.0, 1.0, 0.0]), np.zeros(3, dtype=int), 200)  # one image: cannot be significant
    assert one.p[0] == 1.0 and one.p_adj[0] == 1.0
    # a column without any pair among columns with pairs
    A = np.random.default_rng(6).random((40, 2))
    A[:, 1] = np.nan
    res = paired_tests(A, np.zeros((40, 2)), np.arange(40) // 2, 500)
    assert np.isfinite(res.p[0]) and np.isnan(res.p[1]) and np.isnan(res.p_adj[1]) and not res.reject(1.0)[1]


def test_holm_leaves_a_nan_p_value_out_of_the_family():
    reject, adj = holm([0.01, np.nan])
    assert reject.tolist() == [True, False] and adj[0] == pytest.approx(0.01) and np.isnan(adj[1])
    reject, adj = holm([np.nan, np.nan])
    assert not reject.any() and np.isnan(adj).all()


# ----------------------------------------------------------------------------- skewed differences

def test_signflip_with_skewed_differences_on_30_images():
    """Per-image differences with mean 0 but skewed (exponential): a symmetric reference distribution
    over-rejects the plain sum (about 7.5%); the studentised, skewness-corrected statistic about 5%."""
    rng = np.random.default_rng(7)
    D = rng.exponential(1, (30, 4000)) - 1
    new = signflip_pvalues(D, np.arange(30), n_perm=1000, seed=0)
    signs = rng.choice((-1.0, 1.0), size=(1000, 30))
    plain = (1 + (np.abs(signs @ D) >= np.abs(D.sum(0)) - 1e-9).sum(0)) / 1001
    rate, rate_plain = np.mean(new < ALPHA), np.mean(plain < ALPHA)
    print(f"null rejection: studentised {rate:.3f}, plain sum {rate_plain:.3f}")
    assert rate <= 0.058 and rate_plain >= 0.065


def test_a_symmetric_null_stays_exact():
    """Under a symmetric null any sign-flip statistic is exact: the studentised one rejects at alpha."""
    rng = np.random.default_rng(8)
    D = rng.normal(0, 1, (30, 4000)) * rng.integers(1, 4, (30, 1))
    rate = np.mean(signflip_pvalues(D, np.arange(30), n_perm=1000, seed=0) < ALPHA)
    assert 0.04 <= rate <= 0.06


# ----------------------------------------------------------------------------- labels and summaries

def test_cluster_labels_of_different_types_stay_apart():
    ids = cluster_index([1, "1", 1.0, "a", None, 2, "1"])
    assert ids[0] == ids[2] and ids[1] == ids[6] and len({ids[0], ids[1], ids[3], ids[4], ids[5]}) == 5
    # the numbering does not depend on the order of the examples
    labels = ["img7", "img10", 3, "img7", 3]
    perm = [4, 2, 0, 3, 1]
    assert cluster_index(labels)[perm].tolist() == cluster_index([labels[i] for i in perm]).tolist()


def test_mce_averages_image_corruptions_only():
    from robust_atp.metrics.robustness import corruption_errors

    acc = {("clean", "full"): 0.9, ("clean", "p"): 0.8,
           ("image:fog@1", "full"): 0.8, ("image:fog@1", "p"): 0.6,
           ("image:blur@1", "full"): 0.7, ("image:blur@1", "p"): 0.7,
           ("text:typo@1", "full"): 0.85, ("text:typo@1", "p"): 0.4,
           ("image:fog@1+text:typo@1", "full"): 0.6, ("image:fog@1+text:typo@1", "p"): 0.2}
    rows = {r["family"]: r for r in corruption_errors(acc, ["p"])}
    assert rows["mean"]["ce"] == pytest.approx(((0.4 / 0.2) + (0.3 / 0.3)) / 2)  # fog and blur only
    assert rows["mean"]["kind"] == "image"
    assert rows["mean (text)"]["ce"] == pytest.approx(0.6 / 0.15)
    assert rows["mean (image+text)"]["ce"] == pytest.approx(0.8 / 0.4)
    assert {r["kind"] for r in rows.values()} == {"image", "text", "image+text"}
