"""Spark <-> lake I/O of the Spark stages: read a published partition of an Iceberg table at its
snapshot, publish a partition as one Iceberg commit; and the options every Spark stage takes besides
its :class:`~lakeforge.stage.run.StageRun`."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict

from lakeforge.catalog import partition_column, spark_table
from lakeforge.config import Partition, Settings
from lakeforge.errors import LakeError, PartitionNotPublishedError, PublishConflictError, SchemaMismatchError
from lakeforge.lake import PARTITION_KEY, RUN_ID_KEY, Commit, ancestry, check_no_rival

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from lakeforge.stage.run import StageRun

log = logging.getLogger(__name__)


class SparkStageOptions(BaseModel):
    """How a Spark stage runs (``jobs/curate.py``, ``jobs/features.py``); what it runs on is the StageRun."""

    model_config = ConfigDict(frozen=True)
    master: str | None = None  # Spark master URL; None: spark_session's default / spark-submit's
    samples_per_reason: int = 5  # dropped rows per reason recorded in the report
    rows_per_file: int = 1_000_000  # above this, output is split into several files


def stage_session(stage: "StageRun", name: str, options: SparkStageOptions) -> "SparkSession":
    """The Spark session of one stage run (``<name>-<pipeline>-<partition>``), with the lake's settings."""
    from lakeforge.spark import spark_session

    return spark_session(f"{name}-{stage.pipeline.name}-{stage.partition.path}", stage.lake.settings, options.master)


def attach_catalog(spark: "SparkSession", settings: Settings) -> None:
    """Point ``spark`` at the lake's catalog (settings and secrets, at run time: a catalog is
    instantiated on its first use in a session, so a session made elsewhere — a test's — works too)."""
    from lakeforge.catalog import spark_conf, spark_secrets

    for key, value in {**spark_conf(settings), **spark_secrets(settings)}.items():
        if key.startswith("spark.sql.catalog.") and spark.conf.get(key, None) != value:
            spark.conf.set(key, value)


def read_partition(spark: "SparkSession", stage: "StageRun", commit: Commit,
                   required: Mapping[str, str] | None = None) -> "DataFrame":
    """The rows a commit published (its partition of its table, at its snapshot: a rerun committed
    since changes nothing here), the required columns cast.

    Args:
        required: column -> Spark SQL type; a column the table lacks raises SchemaMismatchError.
    """
    from pyspark.sql import functions as F

    required = required or {}
    if commit.snapshot_id is None:
        raise PartitionNotPublishedError(f"{commit.table} {commit.partition} has no snapshot: it was never committed")
    attach_catalog(spark, stage.settings)
    name = spark_table(commit.pipeline, commit.layer, stage.settings)
    df = spark.sql(f"SELECT * FROM {name} VERSION AS OF {int(commit.snapshot_id)}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SchemaMismatchError(
            f"table {commit.table} lacks columns {missing} (found {df.columns}); the pipeline's `fields` and the"
            f" table disagree: was it written by an older schema (bump `schema_version` and re-land), or does a"
            f" field need another `name`?"
        )
    df = df.where(in_partition(partition_column(stage.pipeline, commit.layer), commit.lake_partition))
    return df.withColumns({c: F.col(c).cast(t) for c, t in required.items()})


def check_rows_read(commit: Commit, rows_read: int) -> None:
    """Fail when a published partition holds another number of rows than its commit says."""
    if rows_read != commit.rows:
        raise LakeError(
            f"{commit.table} {commit.partition} (run {commit.run_id}, snapshot {commit.snapshot_id}) says"
            f" {commit.rows} rows but holds {rows_read}: rerun the upstream task for {commit.partition}"
        )


def sorted_for_write(df: "DataFrame", rows: int, rows_per_file: int) -> "DataFrame":
    """``df`` laid out for writing: the same rows in the same files and order on reruns.

    One file when ``rows <= rows_per_file`` (globally sorted by id), else ``ceil(rows /
    rows_per_file)`` files hash-partitioned on id; every file is sorted by id, then by the other
    columns so duplicate ids still come out in a fixed order.
    """
    files = max(1, math.ceil(rows / rows_per_file))
    # hash partitioning (not range) so file contents never depend on sampling
    parts = df.repartition(1) if files == 1 else df.repartition(files, "id")
    sortable = [f.name for f in df.schema.fields if f.dataType.typeName() not in ("array", "map", "struct", "binary")]
    order = (["id"] if "id" in sortable else []) + [c for c in sortable if c != "id"]
    return parts.sortWithinPartitions(*order)


def in_partition(column: str, part: Partition) -> "Column":
    """The Spark condition of a lake partition: ``start <= column < end``."""
    from pyspark.sql import functions as F

    return (F.col(column) >= F.lit(part.start)) & (F.col(column) < F.lit(part.end))


def publish_frame(stage: "StageRun", df: "DataFrame", rows: int, *, layer: str, rows_per_file: int,
                  started_from: int | None, **fields: Any) -> Commit:
    """Replace the stage's partition of ``<pipeline>.<layer>`` with ``df`` (``rows`` rows) in one Iceberg
    commit whose snapshot summary carries the record (``fields``: inputs, dropped, stats).

    The commit is an overwrite by the partition's filter, validated from ``started_from`` (the table's
    snapshot when the run began) at serializable isolation: a commit of another partition in the
    meantime is retried by Iceberg, another run's commit of *this* partition fails this one with
    :class:`PublishConflictError` (nothing of it committed).
    """
    lake, pipeline, part = stage.lake, stage.pipeline, stage.partition
    table = lake.table(pipeline, layer)  # created on first use, with the pipeline's columns and partitioning
    commit = stage.commit(layer, rows, **fields)
    check_no_rival(table.refresh(), commit, started_from)
    attach_catalog(df.sparkSession, stage.settings)
    writer = (sorted_for_write(df.select(*[f.name for f in table.schema().fields]), rows, rows_per_file)
              .writeTo(spark_table(pipeline.name, layer, stage.settings))
              .option("distribution-mode", "none")  # keep the layout above (and both cores writing)
              .option("isolation-level", "serializable"))
    if started_from is not None:
        writer = writer.option("validate-from-snapshot-id", str(started_from))
    for key, value in commit.properties().items():
        writer = writer.option(f"snapshot-property.{key}", value)
    try:
        writer.overwrite(in_partition(partition_column(pipeline, layer), part))
    except Exception as exc:
        if "ValidationException" in str(exc) or "conflicting files" in str(exc):
            raise PublishConflictError(
                f"{commit.table} {part.path}: another run published this partition while run {stage.run_id!r} was"
                f" writing it; nothing of this run was committed. Rerun it to replace that run's rows.") from exc
        raise
    snap = next(s for s in ancestry(table.refresh())
                if s.summary.get(RUN_ID_KEY) == stage.run_id and s.summary.get(PARTITION_KEY) == part.path)
    added = int(snap.summary.get("added-records") or 0)
    if added != rows:
        raise LakeError(f"{commit.table} {part.path}: snapshot {snap.snapshot_id} added {added} rows, expected {rows}")
    log.info("published %s %s: %d rows (snapshot %d)", commit.table, part.path, rows, snap.snapshot_id)
    return Commit.of_snapshot(snap).model_copy(update={"stats": commit.stats})  # the samples, for the caller
