"""Spark <-> lake I/O of the Spark stages (thin; every path comes from :class:`lakeforge.lake.Lake`),
and the options every Spark stage takes besides its :class:`~lakeforge.stage.run.StageRun`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict

from lakeforge.errors import ManifestError, SchemaMismatchError
from lakeforge.lake import FileEntry, Lake, Manifest

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from lakeforge.stage.run import StageRun


class SparkStageOptions(BaseModel):
    """How a Spark stage runs (``jobs/curate.py``, ``jobs/features.py``); what it runs on is the StageRun."""

    model_config = ConfigDict(frozen=True)
    master: str | None = None  # Spark master URL; None: spark_session's default / spark-submit's
    samples_per_reason: int = 5  # dropped rows per reason recorded in the manifest and the report
    rows_per_file: int = 1_000_000  # above this, output is split into several files


def stage_session(stage: "StageRun", name: str, options: SparkStageOptions) -> "SparkSession":
    """The Spark session of one stage run (``<name>-<pipeline>-<partition>``), with the lake's settings."""
    from lakeforge.spark import spark_session

    return spark_session(f"{name}-{stage.pipeline.name}-{stage.partition.path}", stage.lake.settings, options.master)


def read_manifest_frame(spark: "SparkSession", lake: Lake, manifest: Manifest,
                        required: Mapping[str, str], empty_schema: str) -> "DataFrame":
    """Read exactly the files a manifest lists (as ``s3a://``), casting the required columns.

    Args:
        required: column -> Spark SQL type; a missing column raises ManifestError.
        empty_schema: DDL schema of the frame returned for a manifest without files.
    """
    from pyspark.sql import functions as F

    if not manifest.files:
        return spark.createDataFrame([], empty_schema)  # a local relation: no Python worker for nothing
    df = spark.read.parquet(*file_uris(lake, manifest.files))
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SchemaMismatchError(
            f"{manifest.layer} partition {manifest.pipeline}/{manifest.partition} lacks columns {missing}"
            f" (found {df.columns}); the pipeline's `fields` and the partition disagree: was it written by an older"
            f" schema (bump `schema_version` and re-land), or does a field need another `name`?"
        )
    return df.withColumns({c: F.col(c).cast(t) for c, t in required.items()})


def file_uris(lake: Lake, files: list[FileEntry] | list[dict[str, Any]]) -> list[str]:
    """``s3a://`` URIs of manifest file entries (FileEntry or their dicts)."""
    paths = [f.path if isinstance(f, FileEntry) else f["path"] for f in files]
    return [lake.uri(lake.key_of(p), scheme="s3a") for p in paths]


def check_rows_read(manifest: Manifest, rows_read: int) -> None:
    """Fail when the files of a manifest hold another number of rows than it says."""
    if rows_read != manifest.rows:
        raise ManifestError(
            f"{manifest.layer} partition {manifest.pipeline}/{manifest.partition} (run {manifest.run_id}) lists"
            f" {manifest.rows} rows but its files hold {rows_read}: rerun the upstream task for {manifest.partition}"
        )


def write_sorted_parquet(df: "DataFrame", uri: str, rows: int, rows_per_file: int,
                         row_group_bytes: int | None = None) -> None:
    """Write ``df`` as zstd Parquet under ``uri``: the same rows in the same files and order on reruns.

    (The bytes match too within one JVM; across JVMs parquet-mr may list a column chunk's
    encodings in another order in the footer, so compare rows, not file checksums.)

    One file when ``rows <= rows_per_file`` (globally sorted by id), else ``ceil(rows /
    rows_per_file)`` files hash-partitioned on id; every file is sorted by id, then by the other
    columns so duplicate ids still come out in a fixed order. ``row_group_bytes`` sets the Parquet
    row-group size (default parquet-mr's 128 MiB).
    """
    files = max(1, math.ceil(rows / rows_per_file))
    # hash partitioning (not range) so file contents never depend on sampling
    parts = df.repartition(1) if files == 1 else df.repartition(files, "id")
    sortable = [f.name for f in df.schema.fields if f.dataType.typeName() not in ("array", "map", "struct", "binary")]
    order = ["id"] + [c for c in sortable if c != "id"]
    writer = parts.sortWithinPartitions(*order).write.mode("overwrite").option("compression", "zstd")
    if row_group_bytes:
        writer = writer.option("parquet.block.size", str(row_group_bytes))
    writer.parquet(uri)


def write_files(lake: Lake, df: "DataFrame", rows: int, key: str, rows_per_file: int,
                row_group_bytes: int | None = None) -> list[FileEntry]:
    """Write ``df`` under the prefix ``key`` and describe the files (sizes, checksums, rows)."""
    if rows == 0:
        return []
    write_sorted_parquet(df, lake.uri(key, scheme="s3a"), rows, rows_per_file, row_group_bytes)
    files = [lake.describe_file(uri) for uri in lake.list_run_files(key)]
    written = sum(f.rows for f in files)
    if written != rows:
        raise ManifestError(f"{lake.uri(key)} holds {written} rows, expected {rows}: not publishing")
    return files


def stage_manifest(stage: "StageRun", layer: str, files: list[FileEntry], rows: int, **fields: Any) -> Manifest:
    """The manifest of ``layer`` for this stage run's partition (``fields``: inputs, dropped, stats, …)."""
    part = stage.partition
    return Manifest(layer=layer, pipeline=stage.pipeline.name, partition=part.path, interval=(part.start, part.end),
                    schema_version=stage.pipeline.schema_version, run_id=stage.run_id, files=files, rows=rows,
                    **fields)


def publish_frame(stage: "StageRun", df: "DataFrame", rows: int, *, layer: str, rows_per_file: int,
                  inputs: list[dict[str, str]], dropped: dict[str, int], stats: dict[str, Any],
                  row_group_bytes: int | None = None) -> Manifest:
    """Write ``df`` under the run prefix, describe the files and publish the manifest (last)."""
    lake = stage.lake
    key = lake.run_key(layer, stage.pipeline.name, stage.partition, stage.run_id)  # type: ignore[arg-type]
    files = write_files(lake, df, rows, key, rows_per_file, row_group_bytes)
    manifest = stage_manifest(stage, layer, files, rows, inputs=inputs, dropped=dropped, stats=stats)
    lake.publish(manifest)
    return manifest
