"""Features: turn one curated partition into training rows ``id, text, label, split`` and publish them.

The split is a pure function of ``text_hash`` (see :func:`assign_split`), so identical texts always
land in the same split — across rows, partitions and reruns — and no duplicate can leak from train
into validation or test. Labels outside the model's label list are dropped with reason
``unknown_label`` and counted in the manifest.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lakeforge.config import PipelineConfig, Partition
from lakeforge.curate import (HASH, CurateResult, RowFilter, check_rows_read, publish_frame,
                              read_manifest_frame, run_steps, safe_run_id, SparkJobConfig)
from lakeforge.errors import ConfigError
from lakeforge.lake import Lake, Manifest, new_run_id

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
#: Resolution of the split assignment: ratios are rounded to 1/SPLIT_BUCKETS.
SPLIT_BUCKETS = 10_000
FEATURES_COLUMNS = ("id", "text", "label", "split")
CURATED_REQUIRED = {"id": "string", "text": "string", "label": "bigint", "text_hash": "string"}
CURATED_EMPTY_SCHEMA = "id string, text string, label bigint, text_hash string"

FeaturesResult = CurateResult


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


def assign_split(df: "DataFrame", ratios: Mapping[str, float], *, hash_col: str = HASH,
                 column: str = "split") -> "DataFrame":
    """Add ``column`` with a split name drawn deterministically from ``hash_col``.

    Args:
        df: rows with a text hash column.
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


class LabelRangeFilter(RowFilter):
    """Drop rows whose label is null or not an index into the model's labels (``unknown_label``)."""

    name = "label_range"
    reasons = ("unknown_label",)

    def __init__(self, num_labels: int):
        """Args:
            num_labels: number of class labels; valid label ids are ``0 .. num_labels-1``.
        """
        if num_labels < 1:
            raise ConfigError(f"a model needs at least one label, got num_labels={num_labels}")
        self.num_labels = int(num_labels)

    def drop_reason(self):
        from pyspark.sql import functions as F

        label = F.col("label")
        valid = label.isNotNull() & (label >= 0) & (label < self.num_labels)
        return F.when(~valid, F.lit("unknown_label"))


def features_frame(df: "DataFrame", labels: Sequence[str], ratios: Mapping[str, float], *,
                   samples_per_reason: int = 5) -> FeaturesResult:
    """Validate labels, assign splits and keep the features columns.

    Args:
        df: curated rows (``id, text, label, text_hash``).
        labels: the model's label names (``ModelSpec.labels``); label ids index into them.
        ratios: split -> share (the pipeline's ``split``).
        samples_per_reason: dropped rows kept per reason for the manifest.
    Returns:
        a result whose ``kept`` has ``id, text, label, split`` (persisted).
    """
    from pyspark.sql import functions as F

    _split_bounds(ratios)  # validate before any Spark work
    result = run_steps(df, [LabelRangeFilter(len(labels))], samples_per_reason=samples_per_reason)
    split = assign_split(result.kept, ratios).select(
        F.col("id").cast("string"), F.col("text").cast("string"), F.col("label").cast("bigint"), F.col("split"))
    split = split.persist()
    split.count()  # materialize before dropping the cache it is computed from
    result.release()
    result.kept = split
    return result


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


class FeaturesConfig(SparkJobConfig):
    """Arguments of one features run (``jobs/features.py``)."""


def run(config: FeaturesConfig, *, lake: Lake | None = None, spark: "SparkSession | None" = None) -> Manifest:
    """Build features for one curated partition and publish them as ``features``.

    Args:
        config: what to build.
        lake: the lake to use (default: ``Lake(Settings.load())``); tests pass a local one.
        spark: a session to use (default: ``lakeforge.spark.spark_session`` with the lake's settings).
    """
    pipeline = PipelineConfig.load(config.pipeline)
    partition = Partition.parse(config.partition, pipeline.partition)
    lake = lake or Lake()
    labels = pipeline.model.labels
    curated_manifest, curated_ref = lake.read_input("curated", pipeline.name, partition)
    inputs = [curated_ref]
    if spark is None:
        from lakeforge.spark import spark_session

        spark = spark_session(f"features-{pipeline.name}-{partition.path}", lake.settings, config.master)

    curated = read_manifest_frame(spark, lake, curated_manifest, CURATED_REQUIRED, CURATED_EMPTY_SCHEMA)
    result = features_frame(curated, labels, pipeline.split, samples_per_reason=config.samples_per_reason)
    check_rows_read(curated_manifest, result.rows_in)
    stats = {
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        **split_stats(result.kept, labels),
        "split_ratios": dict(pipeline.split),
        "dropped_samples": result.dropped_samples,
    }
    log.info("features %s %s: %d rows, per split %s, dropped %s", pipeline.name, partition.path,
             result.rows_out, stats["rows_per_split"], result.counts_by_reason)
    try:
        return publish_frame(lake, result.kept, result.rows_out, layer="features", pipeline=pipeline,
                             partition=partition, run_id=config.run_id, rows_per_file=config.rows_per_file,
                             inputs=inputs, dropped=result.counts_by_reason, stats=stats)
    finally:
        result.release()
