"""Clusters: the unit every resampling statistic treats as independent (an image, by default).

Examples that ask about the same image are not independent evidence, so the bootstrap draws whole
clusters and the sign-flip test flips whole clusters. Both work on per-cluster sums of a score
matrix `X: [E, K]` (NaN = no value), which is all they need and far smaller than X."""
from __future__ import annotations

import json
import math

import numpy as np


def _label_key(x) -> tuple:
    """A sortable key that keeps labels of different JSON types apart (the image id 1 and the
    image id "1" are two images) and equal numbers together (1 and 1.0 are one)."""
    if isinstance(x, (bool, np.bool_)):
        return ("bool", int(x))
    if isinstance(x, (int, np.integer)):
        return ("number", int(x))
    if isinstance(x, (float, np.floating)):
        if math.isnan(x):
            return ("nan", 0)
        return ("number", int(x)) if float(x).is_integer() else ("number", float(x))
    if isinstance(x, str):
        return ("str", x)
    if x is None:
        return ("none", 0)
    return ("json", json.dumps(x, sort_keys=True, default=str))


def cluster_index(cluster_ids) -> np.ndarray:
    """Cluster labels (any JSON value) -> integer ids 0..G-1, `[E]`, numbered in sorted label order
    so that the same labels give the same ids whatever order the examples come in."""
    keys = [_label_key(x) for x in cluster_ids]
    ids = {k: i for i, k in enumerate(sorted(set(keys)))}
    return np.fromiter((ids[k] for k in keys), dtype=np.int64, count=len(keys))


def cluster_sums(X: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`X: [E, K]` (NaN = missing), `clusters: [E]` ids 0..G-1 -> (S, n), each `[G, K]`: the sum of each
    column's present values in each cluster, and how many there are."""
    X = as_matrix(X)
    clusters = np.asarray(clusters, dtype=np.int64)
    n_clusters = int(clusters.max()) + 1 if clusters.size else 0
    present = ~np.isnan(X)
    S = np.zeros((n_clusters, X.shape[1]))
    n = np.zeros((n_clusters, X.shape[1]))
    if clusters.size:
        order = np.argsort(clusters, kind="stable")
        sorted_ids = clusters[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        S[sorted_ids[starts]] = np.add.reduceat(np.where(present, X, 0.0)[order], starts, axis=0)
        n[sorted_ids[starts]] = np.add.reduceat(present[order].astype(np.float64), starts, axis=0)
    # sums of the same few fractions (1/3, 2/3) must tie exactly across clusters and sign patterns
    return np.round(S, 12), n


def as_matrix(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X[:, None] if X.ndim == 1 else X
