"""Statistics the report claims: clustered bootstrap CIs, paired tests, Holm, difference-in-differences,
mCE, token-set stability.

Scores come as a matrix `X: [E, K]` (E examples, K columns: one (condition, method) series, a paired
difference, a difference-in-differences...), NaN where an example has no value for a column, and a
cluster id per example `clusters: [E]` (the image an example asks about: examples that share an
image are not independent). Every resampling statistic is vectorised over the K columns at once
and seeded by a `numpy.random.Generator` built from a `seed` argument.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

CLEAN = "clean"
REFERENCE = "full"
EXACT_SIGNFLIP_MAX = 12  # at most 2**12 sign patterns: enumerate them instead of sampling


# ----------------------------------------------------------------------------- condition names

@dataclass(frozen=True)
class Condition:
    """A parsed condition name: `clean`, `image:<c>@<s>`, `text:<p>@<s>` or `image:<c>@<s>+text:<p>@<s>`."""

    name: str
    image: tuple[str, int] | None = None  # (corruption, severity)
    text: tuple[str, int] | None = None  # (perturbation, severity)

    @property
    def kind(self) -> str:
        return {(False, False): "clean", (True, False): "image", (False, True): "text",
                (True, True): "image+text"}[(self.image is not None, self.text is not None)]

    @property
    def family(self) -> str | None:
        """What a severity axis varies over: `image:fog`, `text:typo`; a crossed condition keeps its
        image severity fixed and varies the text one (`image:fog@3+text:typo`). None for clean."""
        if self.kind == "clean":
            return None
        if self.kind == "image":
            return f"image:{self.image[0]}"
        if self.kind == "text":
            return f"text:{self.text[0]}"
        return f"image:{self.image[0]}@{self.image[1]}+text:{self.text[0]}"

    @property
    def severity(self) -> int:
        """The severity along `family` (0 for clean)."""
        if self.text is not None:
            return self.text[1]
        return self.image[1] if self.image is not None else 0


def parse_condition(name: str) -> Condition:
    """Parse any of the four condition forms; ValueError on anything else."""
    if name == CLEAN:
        return Condition(name)
    parts = {}
    for part in name.split("+"):
        axis, sep, rest = part.partition(":")
        body, at, sev = rest.rpartition("@")
        if axis not in ("image", "text") or not sep or not at or not body or not sev.isdigit() or axis in parts:
            raise ValueError(f"malformed condition name {name!r}")
        parts[axis] = (body, int(sev))
    if list(parts) == ["text", "image"]:
        raise ValueError(f"malformed condition name {name!r} (image part comes first)")
    return Condition(name, parts.get("image"), parts.get("text"))


# ----------------------------------------------------------------------------- bootstrap

def cluster_index(cluster_ids) -> np.ndarray:
    """Cluster labels (any hashable) -> integer ids 0..G-1, `[E]`."""
    _, idx = np.unique(np.asarray(cluster_ids, dtype=object).astype(str), return_inverse=True)
    return idx.astype(np.int64)


def bootstrap_weights(clusters: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`[B, E]` example weights of `n_boot` cluster-bootstrap resamples: each resample draws G clusters
    with replacement and takes all their examples, so an example weighs its cluster's draw count."""
    n_clusters = int(clusters.max()) + 1
    counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)  # [B, G]
    return counts[:, clusters].astype(np.float64)


def weighted_means(X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`X: [E, K]` (NaN = missing), `weights: [B, E]` -> `[B, K]` resampled column means."""
    present = ~np.isnan(X)
    num = weights @ np.where(present, X, 0.0)
    den = weights @ present.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def bootstrap_ci(X: np.ndarray, clusters: np.ndarray, n_boot: int = 10_000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column means of `X: [E, K]` with percentile CIs from a bootstrap clustered by `clusters: [E]`.
    Returns (estimate, low, high), each `[K]`."""
    X = _as_matrix(X)
    present = ~np.isnan(X)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = np.where(present, X, 0.0).sum(0) / present.sum(0)
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, n_boot, 2000):  # bounded memory: [2000, E] weights at a time
        w = bootstrap_weights(clusters, min(2000, n_boot - start), rng)
        chunks.append(weighted_means(X, w))
    tail = (1 - confidence) / 2
    if not chunks:
        return est, est * np.nan, est * np.nan
    means = np.concatenate(chunks)
    # a resample can miss every example of a sparse column (NaN mean): only then pay for nanquantile
    quantile = np.nanquantile if np.isnan(means).any() else np.quantile
    with warnings.catch_warnings():  # an all-missing column gives NaN bounds, which is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = quantile(means, [tail, 1 - tail], axis=0)
    return est, lo, hi


def _as_matrix(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X[:, None] if X.ndim == 1 else X


# ----------------------------------------------------------------------------- paired tests

def is_binary(x: np.ndarray) -> bool:
    x = x[~np.isnan(x)]
    return bool(np.all((x == 0) | (x == 1)))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 scores `a, b: [E]` (statsmodels).
    It treats examples as independent: with many questions per image, prefer soft-score handling
    (`signflip_pvalues`, which flips whole images) or check the clustered bootstrap CI beside it."""
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep].astype(bool), b[keep].astype(bool)
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    if table[0][1] + table[1][0] == 0:
        return 1.0
    return float(mcnemar(table, exact=True).pvalue)


def signflip_pvalues(D: np.ndarray, clusters: np.ndarray, n_perm: int = 10_000, seed: int = 0) -> np.ndarray:
    """Two-sided sign-flip permutation p-values for paired differences `D: [E, K]` (NaN = unpaired),
    one per column. Under the null each cluster's summed difference is symmetric about 0, so its sign
    is flipped at random; statistic |sum|. Exact enumeration when a column has at most
    EXACT_SIGNFLIP_MAX non-zero clusters, else `n_perm` Monte-Carlo flips with p = (1 + hits) / (1 + n)."""
    D = np.nan_to_num(_as_matrix(D), nan=0.0)
    n_clusters = int(clusters.max()) + 1
    sums = np.zeros((n_clusters, D.shape[1]))
    np.add.at(sums, clusters, D)  # [G, K]
    sums = np.round(sums, 12)  # exact ties for sums of the same fractions
    observed = np.abs(sums.sum(0))
    tol = 1e-9 * np.maximum(1.0, observed)
    p = np.ones(D.shape[1])
    rng = np.random.default_rng(seed)
    nonzero = (sums != 0).sum(0)
    for k in np.flatnonzero((nonzero > 0) & (nonzero <= EXACT_SIGNFLIP_MAX)):
        s = sums[sums[:, k] != 0, k]
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=len(s))))
        p[k] = np.mean(np.abs(signs @ s) >= observed[k] - tol[k])
    sampled = np.flatnonzero(nonzero > EXACT_SIGNFLIP_MAX)
    if len(sampled):
        hits = np.zeros(len(sampled))
        S = sums[:, sampled]
        for start in range(0, n_perm, 2000):
            signs = rng.choice((-1.0, 1.0), size=(min(2000, n_perm - start), n_clusters))
            hits += (np.abs(signs @ S) >= observed[sampled] - tol[sampled]).sum(0)
        p[sampled] = (1 + hits) / (1 + n_perm)
    return p


def paired_pvalues(A: np.ndarray, B: np.ndarray, clusters: np.ndarray, n_perm: int = 10_000,
                   seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Per column of `A, B: [E, K]` (paired scores), the p-value of A == B and the test used:
    exact McNemar when both columns are 0/1 and every example has its own image, else the sign-flip
    permutation test over images (McNemar assumes independent examples, which questions sharing
    an image are not)."""
    A, B = _as_matrix(A), _as_matrix(B)
    independent = np.bincount(clusters).max() <= 1 if len(clusters) else True
    exact = [independent and is_binary(A[:, k]) and is_binary(B[:, k]) for k in range(A.shape[1])]
    p = np.ones(A.shape[1])
    flip = [k for k, e in enumerate(exact) if not e]
    if flip:
        p[flip] = signflip_pvalues(A[:, flip] - B[:, flip], clusters, n_perm, seed)
    for k, e in enumerate(exact):
        if e:
            p[k] = mcnemar_exact(A[:, k], B[:, k])
    return p, ["mcnemar_exact" if e else "sign_flip" for e in exact]


def holm(pvalues, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down over one family: (reject, adjusted p-values), via statsmodels."""
    pvalues = np.asarray(pvalues, dtype=np.float64)
    if pvalues.size == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    reject, adjusted, _, _ = multipletests(pvalues, alpha=alpha, method="holm")
    return reject, adjusted


# ----------------------------------------------------------------------------- robustness summaries

def corruption_errors(acc: dict[tuple[str, str], float], methods: list[str], reference: str = REFERENCE) -> list[dict]:
    """mCE-style summaries normalised by `reference`, per method and family.

    `acc[(condition, method)]` is an accuracy. Per family f (a corruption), with err = 1 - acc:
      CE(m, f)     = sum_s err(m, f@s) / sum_s err(ref, f@s)
      rel CE(m, f) = sum_s (err(m, f@s) - err(m, clean)) / sum_s (err(ref, f@s) - err(ref, clean))
    and one row per method with family "mean" holding mCE and relative mCE (means over families).
    NaN where the reference's denominator is 0."""
    fams: dict[str, list[str]] = {}
    for cond, _ in acc:
        c = parse_condition(cond)
        if c.family is not None:
            fams.setdefault(c.family, [])
            if cond not in fams[c.family]:
                fams[c.family].append(cond)
    out = []
    for m in methods:
        ces, rels = [], []
        for fam, conds in fams.items():
            if any((c, m) not in acc or (c, reference) not in acc for c in conds):
                continue
            err = lambda meth: np.array([1 - acc[(c, meth)] for c in conds])
            den = err(reference).sum()
            ce = err(m).sum() / den if den > 0 else np.nan
            rel = np.nan
            if (CLEAN, m) in acc and (CLEAN, reference) in acc:
                rden = (err(reference) - (1 - acc[(CLEAN, reference)])).sum()
                rnum = (err(m) - (1 - acc[(CLEAN, m)])).sum()
                rel = rnum / rden if rden > 0 else np.nan
            ces.append(ce)
            rels.append(rel)
            out.append({"method": m, "family": fam, "ce": float(ce), "relative_ce": float(rel)})
        if ces:
            out.append({"method": m, "family": "mean", "ce": float(np.nanmean(ces)) if not np.isnan(ces).all()
                        else float("nan"), "relative_ce": float(np.nanmean(rels)) if not np.isnan(rels).all()
                        else float("nan")})
    return out


def jaccard(a, b) -> float:
    """|a & b| / |a | b| of two kept-index sets (1.0 when both are empty)."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else 1.0
