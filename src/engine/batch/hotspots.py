"""Where breaks concentrate: dimension values ranked by excess breaks, with Wilson intervals.

For a dimension value with n pairs of which k are flagged, against the overall flagged rate
p0 = K / N:

- rate k / n, with its Wilson score interval at 95 % (Wilson 1927; well-behaved for small n
  and rates near 0, unlike the normal approximation);
- expected breaks n * p0, excess breaks k - n * p0;
- the ranking: by the excess at the interval's lower bound, n * (low - p0): a value ranks high
  when it has many more breaks than its share *and* that is unlikely to be chance. A value with
  3 pairs and 2 breaks (rate 67 %, interval 21-94 %) ranks below one with 400 pairs and 60.

Pairs without a value (`(none)`: a record missing from the only system that carries the dimension)
are counted in the totals but not ranked.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pandas as pd

Z95 = 1.959963984540054
#: the value of a pair that has none on either side (engine.batch.join writes it)
NO_VALUE = "(none)"
F64 = npt.NDArray[np.float64]


def wilson(k: F64, n: F64, z: float = Z95) -> tuple[F64, F64]:
    """The Wilson score interval of k successes in n trials (n > 0), elementwise."""
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def rank(table: pd.DataFrame, total_pairs: int, total_flagged: int) -> pd.DataFrame:
    """One dimension's values (index; columns `pairs`, `flagged`, ...) ranked, best first.

    Adds `rate`, `ci_low`, `ci_high`, `expected`, `excess`, `score` (the ranking key, the excess
    at the interval's lower bound) and `rank` (1 = the strongest hotspot).
    """
    p0 = total_flagged / total_pairs if total_pairs else 0.0
    table = table[table.index != NO_VALUE]
    n = table["pairs"].to_numpy(dtype=np.float64)
    k = table["flagged"].to_numpy(dtype=np.float64)
    safe = np.maximum(n, 1.0)
    low, high = wilson(k, safe)
    out = table.copy()
    out.index.name = "value"
    out["rate"] = k / safe
    out["ci_low"] = low
    out["ci_high"] = high
    out["expected"] = n * p0
    out["excess"] = k - n * p0
    out["score"] = n * (low - p0)
    out = out.reset_index().sort_values(
        ["score", "flagged", "value"], ascending=[False, False, True], kind="stable"
    )
    out["rank"] = np.arange(1, len(out) + 1)
    return out.reset_index(drop=True)


def top(ranked: pd.DataFrame, count: int) -> list[dict[str, object]]:
    """The first `count` rows of a ranking as JSON-ready records."""
    rows = []
    for rec in ranked.head(count).to_dict(orient="records"):
        rows.append({str(k): (_plain(v)) for k, v in rec.items()})
    return rows


def _plain(value: object) -> object:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        f = float(value)
        return round(f, 6) if math.isfinite(f) else None
    return value
