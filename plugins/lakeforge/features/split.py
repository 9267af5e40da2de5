"""Train/validation/test assignment by near-duplicate cluster.

The split is a pure function of ``cluster_id`` (:func:`assign_split`), so near-duplicates — and
identical texts — always land in the same split, across rows, partitions and reruns, and none can
leak from train into validation or test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from lakeforge.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

SPLITS = ("train", "validation", "test")
#: Resolution of the split assignment: ratios are rounded to 1/SPLIT_BUCKETS.
SPLIT_BUCKETS = 10_000


def _split_bounds(ratios: Mapping[str, float]) -> list[tuple[str, int]]:
    """``[(split, exclusive upper bucket)]`` in canonical order; the last split takes the rest."""
    bad = {k: v for k, v in ratios.items() if v < 0}
    if not ratios or bad or abs(sum(ratios.values()) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios must be non-negative and sum to 1, got {dict(ratios)}")
    names = [s for s in SPLITS if s in ratios] + [s for s in ratios if s not in SPLITS]
    bounds, cumulative = [], 0.0
    for name in names:
        cumulative += ratios[name]
        bounds.append((name, round(cumulative * SPLIT_BUCKETS)))
    bounds[-1] = (names[-1], SPLIT_BUCKETS)
    return bounds


def assign_split(df: "DataFrame", ratios: Mapping[str, float], *, hash_col: str = "cluster_id",
                 column: str = "split") -> "DataFrame":
    """Add ``column`` with a split name drawn deterministically from ``hash_col``.

    Args:
        df: rows with the column the split is a function of (the near-duplicate cluster id).
        ratios: split -> share, summing to 1 (the pipeline's ``split``).
        hash_col: the column the split is a function of; equal values get equal splits.
        column: name of the added column.
    """
    from pyspark.sql import functions as F

    bounds = _split_bounds(ratios)
    # xxhash64 mixes the (hex) hash into a uniform 64-bit value; pmod keeps it non-negative.
    bucket = F.pmod(F.xxhash64(F.col(hash_col)), F.lit(SPLIT_BUCKETS))
    expr = None
    for name, upper in bounds[:-1]:
        expr = F.when(bucket < upper, F.lit(name)) if expr is None else expr.when(bucket < upper, F.lit(name))
    last = F.lit(bounds[-1][0])
    return df.withColumn(column, last if expr is None else expr.otherwise(last))


def split_stats(df: "DataFrame", labels: Sequence[str]) -> dict[str, Any]:
    """Rows per split and label balance (per split and overall), with label names, zeros included."""
    counts = {(r["split"], r["label"]): r["count"] for r in df.groupBy("split", "label").count().collect()}
    splits = list(SPLITS) + sorted({s for s, _ in counts if s not in SPLITS})
    balance = {s: {name: counts.get((s, i), 0) for i, name in enumerate(labels)} for s in splits}
    return {
        "rows_per_split": {s: sum(balance[s].values()) for s in splits},
        "label_balance": balance,
        "labels": {name: sum(balance[s][name] for s in splits) for name in labels},
    }
