"""Bootstrap confidence intervals and the paired bootstrap test (pure functions).

A benchmark score is a mean over questions; the bootstrap resamples the questions with
replacement `resamples` times and reads the interval off the percentiles of the
resampled means (the percentile bootstrap). Everything is seeded: the same values,
resamples and seed give the same interval on every machine.

The paired test compares two systems on the *same* questions: it resamples question
indices once per draw and takes the mean per-question difference, so the variation
that comes from which questions were drawn cancels between the two systems. The
two-sided p-value is that of the centred bootstrap (Efron & Tibshirani 1993, §16.4):
the share of resampled differences at least as far from the observed difference as the
observed difference is from 0, with the usual +1 correction so that p is never 0.

>>> bootstrap_ci([1.0, 1.0, 1.0], resamples=100, seed=0)
(1.0, 1.0)
>>> paired_bootstrap([1.0, 0.0, 1.0], [1.0, 0.0, 1.0], resamples=100, seed=0)["p_value"]
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_bootstrap", "DEFAULT_RESAMPLES"]

DEFAULT_RESAMPLES = 1000
# Draws are made in chunks so that memory stays bounded for test sets of 100k questions.
_CHUNK_ELEMENTS = 1 << 22


def _resampled_means(values_N: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples,) means of `values_N` resampled with replacement."""
    n = len(values_N)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // n)
    means = []
    for start in range(0, resamples, rows):
        idx_R_N = rng.integers(0, n, size=(min(rows, resamples - start), n))
        means.append(values_N[idx_R_N].mean(axis=1))
    return np.concatenate(means)


def _check(values: Sequence[float], resamples: int, confidence: float) -> np.ndarray:
    values_N = np.asarray(values, dtype=np.float64)
    if values_N.ndim != 1 or len(values_N) == 0:
        raise ValueError(f"bootstrap needs a non-empty list of numbers, got shape {values_N.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return values_N


def bootstrap_ci(values: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    values_N = _check(values, resamples, confidence)
    means_R = _resampled_means(values_N, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means_R, [tail, 1 - tail])
    return float(low), float(high)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired test of mean(b) - mean(a); `a[i]` and `b[i]` score the same question.

    Returns `diff` (observed mean difference), `ci` (percentile interval of the
    difference), `p_value` (two-sided, centred bootstrap) and `n`.

    >>> r = paired_bootstrap([0.0] * 20, [1.0] * 20, resamples=99, seed=0)
    >>> r["diff"], r["ci"], r["p_value"]
    (1.0, (1.0, 1.0), 0.01)
    """
    a_N, b_N = _check(a, resamples, confidence), _check(b, resamples, confidence)
    if len(a_N) != len(b_N):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(a_N)} and {len(b_N)}")
    delta_N = b_N - a_N
    observed = float(delta_N.mean())
    deltas_R = _resampled_means(delta_N, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas_R, [tail, 1 - tail])
    # Centred at the observed difference, the resampled differences approximate the null
    # distribution; a tolerance keeps float noise from flipping ties.
    extreme = int(np.sum(np.abs(deltas_R - observed) >= abs(observed) - 1e-12))
    return {
        "diff": observed,
        "ci": (float(low), float(high)),
        "p_value": (1 + extreme) / (1 + resamples),
        "n": len(delta_N),
    }
