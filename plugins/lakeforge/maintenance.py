"""Lake maintenance: expire old snapshots and remove files no snapshot references, without losing a
partition's record or a model's training data (``jobs/maintain.py``, the ``lakeforge_maintenance`` DAG).

Publishing never deletes anything: a rerun's commit replaces a partition, and the files it replaced
stay readable at the older snapshots (readers mid-way, time travel, lineage). This job is where
space comes back, for every table of a pipeline:

1. tag the snapshot of the latest commit of every partition (``lakeforge-partition-<path>``, moved
   when the partition is republished): a partition untouched for months keeps its commit record
   (rows, offsets, inputs) readable, as :meth:`lakeforge.lake.Lake.read_commit` needs;
2. ``CALL system.expire_snapshots`` older than ``snapshot_age`` (keeping the last ``retain_last``):
   Iceberg keeps every tagged snapshot — the partition tags above and the
   ``lakeforge-model-<name>-v<version>`` tags training puts on what each registered version trained
   on — and deletes the files only expired snapshots referenced;
3. ``CALL system.remove_orphan_files`` older than ``orphan_age``: files no snapshot references (a
   landing or Spark job that crashed before its commit). The age must exceed the longest write, so a
   job still writing never loses its files.

Spark runs both procedures (pyiceberg's expiry edits metadata only, it deletes no files).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Sequence

from lakeforge.catalog import LAYERS, remove_tags, set_tags, spark_table
from lakeforge.config import PipelineConfig
from lakeforge.lake import PARTITION_TAG_PREFIX, Lake, partition_tag

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def tag_partitions(lake: Lake, pipeline: str, layer: str) -> dict[str, int]:
    """Point ``lakeforge-partition-<path>`` at the latest commit of every partition of the table (one
    metadata commit); returns tag -> snapshot id."""
    table = lake.existing_table(pipeline, layer)
    if table is None:
        return {}
    wanted = {partition_tag(path): int(c.snapshot_id) for path, c in lake.commits(layer, pipeline).items()}
    stale = [name for name in table.metadata.refs if name.startswith(PARTITION_TAG_PREFIX) and name not in wanted]
    set_tags(table, wanted)
    remove_tags(table, stale)
    return wanted


def maintain(spark: "SparkSession", lake: Lake, pipeline: PipelineConfig, *, snapshot_age: timedelta,
             orphan_age: timedelta, retain_last: int = 5, now: datetime | None = None,
             layers: Sequence[str] = LAYERS) -> dict[str, Any]:
    """Tag partitions, expire snapshots and remove orphan files in the tables of ``pipeline`` (``layers``:
    all by default).

    Returns:
        per table: partitions tagged, snapshots before/after, data files deleted, orphan files removed.
    """
    from lakeforge.stage.spark_io import attach_catalog

    attach_catalog(spark, lake.settings)
    now = now or datetime.now(timezone.utc)
    expire_before = (now - snapshot_age).strftime("%Y-%m-%d %H:%M:%S")
    orphan_before = (now - orphan_age).strftime("%Y-%m-%d %H:%M:%S")
    report: dict[str, Any] = {}
    for layer in layers:
        table = lake.existing_table(pipeline.name, layer)
        if table is None:
            continue
        tags = tag_partitions(lake, pipeline.name, layer)
        before = len(table.refresh().snapshots())
        name = spark_table(pipeline.name, layer, lake.settings)
        catalog = lake.settings.catalog_name
        expired = spark.sql(
            f"CALL {catalog}.system.expire_snapshots(table => '{pipeline.name}.{layer}', "
            f"older_than => TIMESTAMP '{expire_before}', retain_last => {int(retain_last)})").first()
        orphans = spark.sql(
            f"CALL {catalog}.system.remove_orphan_files(table => '{pipeline.name}.{layer}', "
            f"older_than => TIMESTAMP '{orphan_before}', prefix_listing => true)").collect()
        report[name] = {"partitions_tagged": len(tags), "snapshots_before": before,
                        "snapshots_after": len(table.refresh().snapshots()),
                        "deleted_data_files": int(expired["deleted_data_files_count"]),
                        "orphan_files_removed": len(orphans)}
        log.info("maintained %s: %s", name, report[name])
    return report
