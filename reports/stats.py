"""Intervals and significance for tidy result rows: cluster bootstrap over test sources.

The unit of resampling is a *test source* (an (effect, sample) pair): its draws share the source
and the per-source metrics (coverage, diversity) repeat one value on each draw's row, so
resampling rows would overstate n. ``n`` reported beside an interval is the number of sources.
A difference between two methods is judged with a *paired* bootstrap over the sources both
were evaluated on (same sources, same effects), which removes the between-source variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

N_BOOT = 2000
LEVEL = 0.95
CLUSTER = ("effect", "sample")


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int           # clusters (test sources)

    def text(self, digits: int = 3) -> str:
        if np.isnan(self.mean):
            return "—"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def cluster_means(rows: pd.DataFrame, value: str = "value") -> pd.Series:
    """Mean per test source (effect, sample) of finite values."""
    keys = [c for c in CLUSTER if c in rows.columns]
    ok = rows[np.isfinite(rows[value].astype(float))]
    return ok.groupby(keys)[value].mean() if keys else ok[value]


def bootstrap_ci(values, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (one value per cluster)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    if len(x) == 1:
        return Interval(float(x[0]), float("nan"), float("nan"), 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1)
    a = (1 - level) / 2
    return Interval(float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), len(x))


def paired_difference(a: pd.Series, b: pd.Series, **kw) -> Interval:
    """Interval of mean(a - b) over the clusters both series share (index-aligned)."""
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    return bootstrap_ci((both.iloc[:, 0] - both.iloc[:, 1]).to_numpy(), **kw)


def log_distance(values, ideal: float = 1.0):
    """|log(value / ideal)|: how far a "-> ideal" ratio (texture energy, diversity) is from right,
    the same distance above and below (a ratio of 2 and of 0.5 are equally wrong), so a mean of it
    over effects cannot cancel the way a mean of the ratio does. 0 is exact; an exact sampler's own
    per-source spread keeps it above 0."""
    return np.abs(np.log(np.clip(values, 1e-6, None) / ideal))


def significantly(diff: Interval, higher_is_better: bool) -> bool:
    """Whether an interval of (a - b) says a is better than b at the interval's level."""
    if np.isnan(diff.lo):
        return False
    return diff.lo > 0 if higher_is_better else diff.hi < 0
