"""Uncertainty for metrics: percentile bootstrap, paired tests, a result type.

Every bootstrap resamples *examples* (rows) with replacement, ``n_boot`` times,
from a ``numpy.random.default_rng(seed)`` stream, so a given seed always gives
the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

ArrayLike = Sequence[float] | np.ndarray
Statistic = Callable[..., float]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its (1 - alpha) confidence interval over ``n`` units.

    ``ci_low``/``ci_high`` are ``None`` when the metric has no interval.
    """

    value: float
    ci_low: float | None
    ci_high: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready ``{"value", "ci_low", "ci_high", "n"}``."""
        return asdict(self)


def _as_columns(data: ArrayLike | tuple[ArrayLike, ...]) -> tuple[np.ndarray, ...]:
    columns = tuple(np.asarray(c, dtype=float) for c in data) if isinstance(data, tuple) else (
        np.asarray(data, dtype=float),)
    n = len(columns[0])
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if any(len(c) != n for c in columns):
        raise ValueError("per-example arrays must all have the same length")
    return columns


def bootstrap_ci(data: ArrayLike | tuple[ArrayLike, ...], statistic: Statistic = np.mean,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over examples.

    ``data`` is one per-example array, or a tuple of same-length per-example
    arrays that are resampled together (rows) and passed to ``statistic`` as
    separate arguments, e.g. ``statistic(stereo_gt_unrel, stereo_gt_anti)``.
    Returns the ``alpha/2`` and ``1 - alpha/2`` quantiles of the ``n_boot``
    resampled statistics (NaN resamples are ignored).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    columns = _as_columns(data)
    rng = np.random.default_rng(seed)
    n = len(columns[0])
    stats = np.array([statistic(*(c[idx] for c in columns))
                      for idx in rng.integers(0, n, size=(n_boot, n))], dtype=float)
    low, high = np.nanquantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def estimate(data: ArrayLike | tuple[ArrayLike, ...], statistic: Statistic = np.mean,
             n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> Estimate:
    """``statistic`` on the full sample with its :func:`bootstrap_ci`."""
    columns = _as_columns(data)
    low, high = bootstrap_ci(data, statistic, n_boot=n_boot, seed=seed, alpha=alpha)
    return Estimate(float(statistic(*columns)), low, high, len(columns[0]))


def paired_difference_test(a: ArrayLike, b: ArrayLike, n_boot: int = 10000, seed: int = 0,
                           alpha: float = 0.05) -> dict[str, float]:
    """Compare two systems scored on the same examples.

    ``difference`` = mean(a) - mean(b); its CI is the percentile bootstrap of
    the mean of the per-example differences d = a - b. The two-sided p-value
    comes from a paired sign-flip permutation test: under H0 each d_i is
    symmetric around 0, so p = (1 + #{|mean(s * d)| >= |mean(d)|}) / (1 + n_boot)
    over ``n_boot`` random sign vectors s.
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples differ in length: {len(a_arr)} vs {len(b_arr)}")
    d = a_arr - b_arr
    low, high = bootstrap_ci(d, np.mean, n_boot=n_boot, seed=seed, alpha=alpha)
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_boot, len(d)))
    observed = abs(d.mean())
    hits = int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12))
    return {"difference": float(d.mean()), "ci_low": low, "ci_high": high,
            "p_value": (1 + hits) / (1 + n_boot), "n": int(len(d))}
