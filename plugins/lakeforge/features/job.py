"""The features job: one curated partition in, training rows out (``spark-submit jobs/features.py``).

Columns: ``id, text, label, split`` (what any trainer needs), plus ``input_ids`` (list<int32>, the
model's fast tokenizer run inside Spark, batched in ``mapInArrow``, with the special tokens, the
pipeline's ``max_length`` and truncation side; :mod:`~lakeforge.features.tokens`), ``num_tokens``
(int32) and ``cluster_id`` (the near-duplicate cluster curate assigned; a row without
near-duplicates is its own cluster), split by cluster (:mod:`~lakeforge.features.split`).

Labels are indices into the pipeline's ``labels`` (curate mapped names to them); a null label or one
outside the label space is dropped with reason ``unknown_label`` and counted in the commit. The
pipeline's extra fields follow the features columns. The partition is published as one commit to the
``<pipeline>.features`` Iceberg table, whose zstd Parquet files have 16 MiB row groups a streaming
reader can take one at a time (:data:`lakeforge.catalog.LAYER_PROPERTIES`); token statistics go into
the commit.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping, Sequence

from lakeforge.errors import ConfigError
from lakeforge.features.split import _split_bounds, assign_split, split_stats
from lakeforge.features.tokens import TokenizerSpec, token_stats, tokenize_function
from lakeforge.lake import Commit
from lakeforge.stage import schema
from lakeforge.stage.chain import ChainResult, run_steps
from lakeforge.stage.run import StageRun
from lakeforge.stage.spark_io import SparkStageOptions, check_rows_read, publish_frame, read_partition, stage_session
from lakeforge.stage.steps import HASH, RowFilter

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

#: The features columns every pipeline has, in order; its extra fields follow them.
FEATURES_COLUMNS = ("id", "text", "label", "split", "input_ids", "num_tokens", "cluster_id")


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
                   tokenizer: TokenizerSpec | None = None, extras: Sequence[tuple[str, str]] = (),
                   samples_per_reason: int = 5) -> ChainResult:
    """Validate labels, assign splits by cluster, tokenize, keep the features columns.

    Args:
        df: curated rows (``id, text, label, text_hash``, and ``cluster_id`` from curate; a partition
            curated before clusters existed splits by ``text_hash``).
        labels: the model's label names (``ModelSpec.labels``); label ids index into them.
        ratios: split -> share (the pipeline's ``split``).
        tokenizer: how to tokenize; None leaves ``input_ids`` empty and ``num_tokens`` 0 (tests).
        extras: ``(name, Spark type)`` of the pipeline's extra fields, kept after the features columns.
        samples_per_reason: dropped rows kept per reason for the commit.
    Returns:
        a result whose ``kept`` has :data:`FEATURES_COLUMNS`, the extras, ``event_time`` (the features
        table's partition column) and ``_truncated`` (persisted).
    """
    from pyspark.sql import functions as F

    _split_bounds(ratios)  # validate before any Spark work
    if "cluster_id" not in df.columns:
        df = df.withColumn("cluster_id", F.col(HASH))
    df = df.withColumn("cluster_id", F.coalesce("cluster_id", HASH))
    result = run_steps(df, [LabelRangeFilter(len(labels))], samples_per_reason=samples_per_reason)
    extra_ddl = "".join(f", {name} {kind}" for name, kind in extras)
    rows = assign_split(result.kept, ratios).select(
        F.col("id").cast("string"), F.col("text").cast("string"), F.col("label").cast("bigint"), F.col("split"),
        F.col("cluster_id").cast("string"),
        *((F.col(name) if name in df.columns else F.lit(None)).cast(kind).alias(name) for name, kind in extras),
        (F.col("event_time") if "event_time" in df.columns else F.lit(None)).cast("timestamp").alias("event_time"))
    if tokenizer is not None:
        rows = rows.mapInArrow(tokenize_function(tokenizer),
                               "id string, text string, label bigint, split string, cluster_id string" + extra_ddl +
                               ", event_time timestamp, input_ids array<int>, num_tokens int, _truncated boolean")
    else:
        rows = rows.withColumns({"input_ids": F.array().cast("array<int>"), "num_tokens": F.lit(0),
                                 "_truncated": F.lit(False)})
    rows = rows.select(*FEATURES_COLUMNS, *(name for name, _ in extras), "event_time", "_truncated").persist()
    rows.count()  # materialize before dropping the cache it is computed from
    result.release()
    result.kept = rows
    return result


def run(stage: StageRun, options: SparkStageOptions | None = None, *,
        spark: "SparkSession | None" = None) -> Commit:
    """Build features for the run's curated partition and publish them as ``features``.

    Args:
        stage: pipeline, partition, run id and lake (tests pass a local lake).
        options: Spark master, samples per reason, rows per file.
        spark: a session to use (default: one with the lake's settings, see :func:`stage_session`).
    """
    options = options or SparkStageOptions()
    pipeline, partition, lake = stage.pipeline, stage.partition, stage.lake
    labels = pipeline.model.labels
    curated_commit = lake.read_commit("curated", pipeline.name, partition)
    started_from = lake.snapshot_id(pipeline.name, "features")
    inputs = [curated_commit.ref]
    spark = spark or stage_session(stage, "features", options)

    tokenizer = TokenizerSpec.of(pipeline)
    curated = read_partition(spark, stage, curated_commit, schema.curated_required(pipeline))
    result = features_frame(curated, labels, pipeline.split, tokenizer=tokenizer,
                            extras=schema.extra_columns(pipeline), samples_per_reason=options.samples_per_reason)
    check_rows_read(curated_commit, result.rows_in)
    from pyspark.sql import functions as F

    clusters = result.kept.groupBy("cluster_id").count()
    cluster_row = clusters.agg(F.count(F.lit(1)).alias("n"),
                               F.sum(F.when(F.col("count") > 1, F.col("count")).otherwise(0)).alias("shared")).first()
    stats = {
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        **split_stats(result.kept, labels),
        "split_ratios": dict(pipeline.split),
        "split_by": "cluster_id",
        "clusters": {"distinct": int(cluster_row["n"] or 0), "rows_in_shared_clusters": int(cluster_row["shared"] or 0)},
        "tokens": token_stats(result.kept, tokenizer),
        "dropped_samples": result.dropped_samples,
    }
    if "report" in curated_commit.stats:  # the quality report travels on to the trainer
        stats["curate_report"] = curated_commit.stats["report"]
    log.info("features %s: %d rows, per split %s, dropped %s", stage.where,
             result.rows_out, stats["rows_per_split"], result.counts_by_reason)
    try:
        return publish_frame(stage, result.kept.drop("_truncated"), result.rows_out, layer="features",
                             rows_per_file=options.rows_per_file, started_from=started_from, inputs=inputs,
                             dropped=result.counts_by_reason, stats=stats)
    finally:
        result.release()
