"""Paired tests of a family of comparisons, corrected together over one shared sign matrix.

Differences come as `D: [E, K]` (E examples, K comparisons, NaN = unpaired) with a cluster id per
example `clusters: [E]`. Under the null a cluster's differences are as likely to have either sign,
so whole clusters are flipped at random (exchangeability, exact at any size); the same random
sign patterns `[B, G]` serve every column, which keeps the columns' dependence.

The statistic is the studentised mean difference, t = d / se with the cluster-robust standard
error, then Hall's (1992, "On the removal of skewness by transformation", JRSS B 54) cubic
skewness correction T = t + a (t^2 / 3 + 1/6) + a^2 t^3 / 27, a = sum e^3 / (sum e^2)^(3/2) over
the cluster residuals e. Both are recomputed under every sign pattern. With equal cluster sizes a
plain studentised t orders the sign patterns exactly as the plain sum does, so it alone cannot help;
the correction is what brings a test of 30 images with skewed differences (which a symmetric
reference distribution over-rejects, 6-7% at alpha 0.05) back to about 5%, and it changes nothing
under a symmetric null, where any statistic is exact.

Multiplicity: Westfall & Young's (1993) max-T step-down over the same sign patterns. The smallest
adjusted p is 1 / (B + 1) whatever K is (Holm's needs B + 1 >= K / alpha), and the correlation
between comparisons (they share examples) is used instead of assumed away.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from .clusters import as_matrix, cluster_sums

EXACT_SIGNFLIP_MAX = 12  # at most 2**12 sign patterns: a column's own p-value is enumerated exactly
CHUNK = 2000  # sign patterns per matrix product
ALTERNATIVES = ("two-sided", "greater")


@dataclass(frozen=True)
class _Columns:
    """Cluster sums and sizes `S, n: [G, K]` and the per-column sums that no sign pattern changes."""

    S: np.ndarray
    n: np.ndarray
    N: np.ndarray  # [K] pairs
    scale: np.ndarray  # [K] G / (G - 1), the small-sample factor of the cluster-robust variance
    Q: np.ndarray  # [K] sum S^2
    M2: np.ndarray  # [K] sum n^2
    M3: np.ndarray  # [K] sum n^3
    nS2: np.ndarray  # [K] sum n S^2

    @classmethod
    def of(cls, S: np.ndarray, n: np.ndarray, N=None, M2=None, M3=None, G=None) -> "_Columns":
        N = n.sum(0) if N is None else N
        G = (n > 0).sum(0) if G is None else G
        return cls(S, n, N, np.where(G > 1, G / np.maximum(G - 1, 1), 1.0), (S ** 2).sum(0),
                   (n ** 2).sum(0) if M2 is None else M2, (n ** 3).sum(0) if M3 is None else M3, (n * S ** 2).sum(0))

    def statistic(self, signs: np.ndarray, shift=0.0) -> np.ndarray:
        """`signs: [B, G]` -> T: [B, K], the skewness-corrected studentised mean of each column with
        its clusters' signs flipped (minus `shift`, the margin of a one-sided test)."""
        S, n = self.S, self.n
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            d = (signs @ S) / self.N
            nS = signs @ (n * S)
            V = self.Q - 2 * d * nS + d ** 2 * self.M2
            degenerate = V <= 1e-12 * (self.Q + d ** 2 * self.M2)
            V = np.where(degenerate, 0.0, V)
            C3 = signs @ S ** 3 - 3 * d * self.nS2 + 3 * d ** 2 * (signs @ (n * n * S)) - d ** 3 * self.M3
            num = d - shift
            tiny = 1e-12 * np.maximum(1.0, np.abs(shift))
            sign = np.where(num > tiny, 1.0, np.where(num < -tiny, -1.0, 0.0))
            t = np.where(degenerate, sign * np.inf, num * self.N / np.sqrt(self.scale * V))
            t = np.where(degenerate & (sign == 0), 0.0, t)
            a = np.where(degenerate, 0.0, C3 / V ** 1.5)
            T = t + a * (t ** 2 / 3 + 1 / 6) + a ** 2 * t ** 3 / 27
        return np.where(np.isfinite(t), T, t)


@dataclass
class SignFlipResult:
    """Per column: the statistic, its own p-value (exact when few clusters differ), the family-wise
    max-T adjusted p-value and the smallest p-value the column's own test could give (1 for no data)."""

    statistic: np.ndarray
    p: np.ndarray
    p_adj: np.ndarray
    min_p: np.ndarray


def signflip_test(D: np.ndarray, clusters: np.ndarray, n_perm: int = 10_000, seed: int = 0,
                  alternative: str = "two-sided", margin: float = 0.0, p_override=None) -> SignFlipResult:
    """The studentised sign-flip test of every column of `D: [E, K]` and their max-T step-down.

    `alternative="two-sided"`: H0 mean difference 0. `"greater"` with `margin` m: H0 mean <= m,
    rejected for a mean significantly above m (the reference distribution is the one at 0,
    the observed statistic is centred at m: exact for m = 0, asymptotically valid for m > 0).
    `p_override: [K]` (NaN = keep) replaces a column's own p-value by another valid one (exact
    McNemar); adjusted p-values never fall below a column's own. Columns without data get NaN."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    D = as_matrix(D)
    K = D.shape[1]
    out = SignFlipResult(np.full(K, np.nan), np.full(K, np.nan), np.full(K, np.nan), np.ones(K))
    if D.shape[0] == 0 or K == 0:
        return out
    S, n = cluster_sums(D, clusters)
    cols = _Columns.of(S, n)
    testable = cols.N > 0
    if not testable.any():
        return out
    two_sided = alternative == "two-sided"
    observed = cols.statistic(np.ones((1, S.shape[0])), margin)[0]
    score = np.abs(observed) if two_sided else observed
    out.statistic = np.where(testable, observed, np.nan)
    tol = 1e-9 * np.maximum(1.0, np.abs(np.where(np.isfinite(score), score, 0.0)))

    nonzero = (S != 0).sum(0)
    exact = testable & (nonzero <= EXACT_SIGNFLIP_MAX)
    for k in np.flatnonzero(exact):
        out.p[k], out.min_p[k] = _exact_p(cols, k, score[k] - tol[k], two_sided)
    sampled = np.flatnonzero(testable & ~exact)
    out.min_p[sampled] = 0.0
    if p_override is not None:
        p_override = np.asarray(p_override, dtype=np.float64)
        keep = np.isfinite(p_override) & testable
        out.p[keep] = p_override[keep]
    if n_perm <= 0:
        return out

    idx = np.flatnonzero(testable)
    order = idx[np.argsort(-score[idx], kind="stable")]  # most significant first
    sub = _Columns.of(S[:, order], n[:, order])
    threshold = score[order] - tol[order]
    exceed = np.zeros(len(order))
    raw_hits = np.zeros(len(order))
    mc = ~exact[order] & ~(np.isfinite(p_override[order]) if p_override is not None else False)
    rng = np.random.default_rng(seed)
    for start in range(0, n_perm, CHUNK):
        signs = rng.choice((-1.0, 1.0), size=(min(CHUNK, n_perm - start), S.shape[0]))
        T = sub.statistic(signs)
        if two_sided:
            T = np.abs(T)
        raw_hits += (T >= threshold).sum(0)
        successive_max = np.maximum.accumulate(T[:, ::-1], axis=1)[:, ::-1]  # max over this and less significant
        exceed += (successive_max >= threshold).sum(0)
    raw_mc = (1 + raw_hits) / (1 + n_perm)
    own = np.where(mc, raw_mc, out.p[order])
    out.p[order] = own
    out.p_adj[order] = np.minimum(np.maximum.accumulate(np.maximum((1 + exceed) / (1 + n_perm), own)), 1.0)
    return out


def _exact_p(cols: _Columns, k: int, threshold: float, two_sided: bool) -> tuple[float, float]:
    """Column k's p-value over all 2^m sign patterns of its m non-zero clusters (the others do not
    change under a flip), and the smallest p-value any data with those m clusters could give."""
    rows = np.flatnonzero(cols.S[:, k] != 0)
    m = len(rows)
    if m == 0:
        return 1.0, 1.0
    patterns = _all_sign_patterns(m)
    sub = _Columns.of(cols.S[rows, k:k + 1], cols.n[rows, k:k + 1], N=cols.N[k:k + 1], M2=cols.M2[k:k + 1],
                      M3=cols.M3[k:k + 1], G=np.array([(cols.n[:, k] > 0).sum()]))
    T = sub.statistic(patterns)[:, 0]
    if two_sided:
        T = np.abs(T)
    return float(np.mean(T >= threshold)), (2.0 if two_sided else 1.0) / 2 ** m


@functools.lru_cache(maxsize=EXACT_SIGNFLIP_MAX + 1)
def _all_sign_patterns(m: int) -> np.ndarray:
    """`[2^m, m]`: every assignment of signs to m clusters."""
    bits = (np.arange(2 ** m)[:, None] >> np.arange(m)[None, :]) & 1
    return (2.0 * bits - 1.0)


# ----------------------------------------------------------------------------- the family of comparisons

def is_binary(x: np.ndarray) -> bool:
    x = x[~np.isnan(x)]
    return bool(np.all((x == 0) | (x == 1)))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 scores `a, b: [E]` (statsmodels); 1.0 without
    a discordant pair, NaN without a pair at all. It treats examples as independent: with
    several questions per image the sign flip over images is used instead (`paired_tests`)."""
    keep = ~(np.isnan(a) | np.isnan(b))
    if not keep.any():
        return float("nan")
    a, b = a[keep].astype(bool), b[keep].astype(bool)
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    if table[0][1] + table[1][0] == 0:
        return 1.0
    return float(mcnemar(table, exact=True).pvalue)


@dataclass
class PairedTests:
    """One family of comparisons, each `[K]`: its test, own p, family-wise adjusted p, and the
    smallest adjusted p this test, resolution and family size could give (`resolvable`)."""

    tests: list[str]
    p: np.ndarray
    p_adj: np.ndarray
    min_p_adj: np.ndarray
    correction: str
    n_perm: int

    def reject(self, alpha: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return ~np.isnan(self.p_adj) & (self.p_adj <= alpha)

    def resolvable(self, alpha: float) -> np.ndarray:
        """False where no data could make the comparison significant at this size and resolution
        (a "not significant" there would say nothing)."""
        return self.min_p_adj <= alpha


CORRECTIONS = ("maxt", "holm")


def paired_tests(A: np.ndarray, B: np.ndarray, clusters: np.ndarray, n_perm: int = 10_000, seed: int = 0,
                 correction: str = "maxt", alternative: str = "two-sided", margin: float = 0.0) -> PairedTests:
    """Tests of mean(A - B) for each column of the paired scores `A, B: [E, K]`, corrected as one family.

    Two-sided: exact McNemar where both columns are 0/1 and every example has its own cluster (it
    is the exact sign-flip test of that case), the studentised sign flip over clusters elsewhere.
    One-sided (`alternative="greater"`, H0 mean(A - B) <= margin): the sign flip throughout.
    `correction`: "maxt" (Westfall-Young step-down over the shared sign patterns) or "holm"."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    A, B = as_matrix(A), as_matrix(B)
    K = A.shape[1]
    clusters = np.asarray(clusters, dtype=np.int64)
    independent = clusters.size == 0 or np.bincount(clusters).max() <= 1
    use_mcnemar = [alternative == "two-sided" and independent and is_binary(A[:, k]) and is_binary(B[:, k])
                   for k in range(K)]
    override = np.full(K, np.nan)
    min_mcnemar = np.ones(K)
    for k in np.flatnonzero(use_mcnemar):
        override[k] = mcnemar_exact(A[:, k], B[:, k])
        m = int(np.sum((A[:, k] != B[:, k]) & ~np.isnan(A[:, k]) & ~np.isnan(B[:, k])))
        min_mcnemar[k] = min(1.0, 2 * 0.5 ** m)
    res = signflip_test(A - B, clusters, n_perm, seed, alternative, margin, override)
    tests = ["mcnemar_exact" if u else "sign_flip" for u in use_mcnemar]
    own_min = np.where(use_mcnemar, min_mcnemar, res.min_p)
    floor = 1 / (n_perm + 1)
    testable = ~np.isnan(res.p)
    if correction == "maxt":
        p_adj = res.p_adj
        min_adj = np.maximum(own_min, floor)
    else:
        _, p_adj = holm(res.p)
        smallest_own = np.where(own_min > 0, own_min, floor)  # a Monte-Carlo p stops at 1 / (B + 1)
        min_adj = np.minimum(1.0, smallest_own * max(1, int(testable.sum())))
    return PairedTests(tests, res.p, p_adj, np.where(testable, min_adj, 1.0), correction, n_perm)


def paired_pvalues(A: np.ndarray, B: np.ndarray, clusters: np.ndarray, n_perm: int = 10_000,
                   seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Per column of `A, B: [E, K]`, the two-sided p-value of mean(A - B) == 0 and the test used."""
    res = paired_tests(A, B, clusters, n_perm, seed)
    return res.p, res.tests


def signflip_pvalues(D: np.ndarray, clusters: np.ndarray, n_perm: int = 10_000, seed: int = 0) -> np.ndarray:
    """Each column's own two-sided studentised sign-flip p-value for the differences `D: [E, K]`."""
    return signflip_test(D, clusters, n_perm, seed).p


def holm(pvalues, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down over one family: (reject, adjusted p-values), via statsmodels. A NaN p-value
    (a comparison without data) is left out of the family: never rejected, adjusted NaN."""
    pvalues = np.asarray(pvalues, dtype=np.float64)
    reject, adjusted = np.zeros(pvalues.shape, dtype=bool), np.full(pvalues.shape, np.nan)
    keep = ~np.isnan(pvalues)
    if keep.any():
        r, adj, _, _ = multipletests(pvalues[keep], alpha=alpha, method="holm")
        reject[keep], adjusted[keep] = r, adj
    return reject, adjusted
