"""Statistics the report and the CI gate claim: clustered bootstrap CIs, paired tests corrected as
one family, and the gate's minimum detectable drop.

Scores come as a matrix `X: [E, K]` (E examples, K columns: one (condition, method) series, a paired
difference, a difference-in-differences...), NaN where an example has no value for a column, and a
cluster id per example `clusters: [E]` (the image an example asks about: examples that share an
image are not independent). Every resampling statistic is vectorised over the K columns at once
and seeded by a `numpy.random.Generator` built from a `seed` argument.

    clusters.py    cluster ids and per-cluster sums
    bootstrap.py   expanded-BCa intervals from the cluster bootstrap
    signflip.py    exact McNemar, the studentised sign flip, Westfall-Young max-T, Holm
    power.py       the minimum detectable drop of a one-sided gate
"""
from .bootstrap import FEW_CLUSTERS, MIN_CLUSTERS, bootstrap_ci
from .clusters import cluster_index, cluster_sums
from .power import minimum_detectable_drop, sidak_critical
from .signflip import (EXACT_SIGNFLIP_MAX, PairedTests, SignFlipResult, holm, is_binary, mcnemar_exact,
                       paired_pvalues, paired_tests, signflip_pvalues, signflip_test)

__all__ = ["EXACT_SIGNFLIP_MAX", "FEW_CLUSTERS", "MIN_CLUSTERS", "PairedTests",
           "SignFlipResult", "bootstrap_ci", "cluster_index", "cluster_sums", "holm", "is_binary", "mcnemar_exact",
           "minimum_detectable_drop", "paired_pvalues", "paired_tests", "sidak_critical",
           "signflip_pvalues", "signflip_test"]
