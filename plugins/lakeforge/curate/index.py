"""The persistent dedup index: what earlier (and later) curated partitions hold, so that a daily run
or a backfill never admits a duplicate of data already curated.

The index is the ``<pipeline>.dedup_index`` Iceberg table: one row per kept row of every curated
partition — ``partition_start, id, text_hash, cluster_id, bands`` (the MinHash band ids) —
partitioned like the curated table. A curate run publishes its partition's index rows (one commit
to ``dedup_index``) just before its curated rows (one commit to ``curated``), and the curated
commit names the index commit's run. Reading it (:func:`prior_index`), a run takes every published
curated partition but its own, and trusts a partition's index rows only when they come from the
same run as its curated rows (a crash between the two commits leaves them apart) and were made with
the current MinHash parameters; for any other partition the band ids are recomputed from its
curated rows. :func:`check_index_unchanged` re-reads the curated commits before publishing and
refuses to publish when another partition was republished meanwhile (a concurrent run could
otherwise admit the same duplicate twice); the DAG also runs one curate task per pipeline at a time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lakeforge.catalog import spark_table
from lakeforge.config import Partition
from lakeforge.curate.dedup import CLUSTER, NearDeduplicator, PriorIndex
from lakeforge.curate.minhash import BANDS, MinHashSigner
from lakeforge.errors import PublishConflictError
from lakeforge.lake import Commit, table_commits
from lakeforge.stage.chain import FusedPass, union_frames
from lakeforge.stage.run import StageRun
from lakeforge.stage.spark_io import attach_catalog, publish_frame, read_partition
from lakeforge.stage.steps import HASH, TEXT

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

INDEX_FORMAT = 2  # 2: rows of the dedup_index Iceberg table


def _published(stage: StageRun) -> dict[str, Commit]:
    """partition path -> curated commit, for the stage's pipeline, but its own partition."""
    commits = stage.lake.commits("curated", stage.pipeline.name)
    commits.pop(stage.partition.path, None)
    return commits


def partition_path(start: "Column", granularity: str) -> "Column":
    """The lake partition path (``dt=YYYY-MM-DD[/hour=HH]``) of a partition-start timestamp column."""
    from pyspark.sql import functions as F

    fmt = "'dt='yyyy-MM-dd'/hour='HH" if granularity == "hourly" else "'dt='yyyy-MM-dd"
    return F.date_format(start, fmt)


def prior_index(spark: "SparkSession", stage: StageRun, near: NearDeduplicator | None) -> PriorIndex | None:
    """The index of every published curated partition of the pipeline but the run's own; None if there is none.

    Args:
        near: the chain's near-dedup step (its MinHash parameters decide which partitions' bands are
            usable); None when the chain has no near-dedup (only text hashes are read).
    """
    from pyspark.sql import functions as F

    lake, name = stage.lake, stage.pipeline.name
    commits = _published(stage)
    if not commits:
        return None
    params = near.minhash.to_dict() if near is not None else None
    # which index rows to trust and the snapshot they are read at come from one state of the table
    index_table = lake.existing_table(name, "dedup_index")
    indexed = table_commits(index_table) if index_table is not None else {}
    index_snapshot = index_table.current_snapshot() if index_table is not None else None
    segments, recompute = [], []  # partitions whose index rows are usable as they are; to recompute bands for
    exact_frames, band_frames = [], []

    def curated_rows(m: Commit) -> "DataFrame":
        return read_partition(spark, stage, m)

    for path, m in sorted(commits.items()):
        if not m.rows:
            continue
        index = m.stats.get("index") or {}
        ours = indexed.get(path)
        if index.get("format") == INDEX_FORMAT and ours is not None and ours.run_id == m.run_id:
            segments.append(path)
            if params is not None and index.get("minhash") != params:
                recompute.append(m)
        else:
            recompute.append(m)
            curated = curated_rows(m)
            exact_frames.append(curated.select(F.lit(path).alias("p_partition"), F.col("id").alias("p_id"), HASH,
                                               F.col(CLUSTER).alias("p_cluster")))
    if segments:
        attach_catalog(spark, stage.settings)
        seg = spark.sql(f"SELECT * FROM {spark_table(name, 'dedup_index', stage.settings)} "
                        f"VERSION AS OF {index_snapshot.snapshot_id}")
        seg = seg.select(partition_path(F.col("partition_start"), stage.pipeline.partition).alias("p_partition"),
                         F.col("id").alias("p_id"), HASH, F.col(CLUSTER).alias("p_cluster"), "bands")
        seg = seg.where(F.col("p_partition").isin(segments))
        exact_frames.append(seg.drop("bands"))
        if params is not None:
            stale = {m.partition for m in recompute}
            usable = seg.where(~F.col("p_partition").isin(sorted(stale))) if stale else seg
            band_frames.append(usable)
    if params is not None:
        for m in recompute:
            signed = FusedPass([MinHashSigner(near.minhash)]).apply(
                curated_rows(m).select("id", TEXT, HASH, F.col(CLUSTER).alias("p_cluster")))
            band_frames.append(signed.select(F.lit(m.partition).alias("p_partition"), F.col("id").alias("p_id"), HASH,
                                             "p_cluster", F.col(BANDS).alias("bands")))
            log.info("index: recomputed band ids of %s (no usable index rows for the current MinHash params)",
                     m.partition)

    exact = union_frames(exact_frames)
    bands = None
    if band_frames:
        bands = (union_frames(band_frames).where(F.col("bands").isNotNull())
                 .select("p_id", "p_cluster", "p_partition", F.posexplode("bands").alias("band", "bucket")))

    def texts(partitions: list[str]) -> "DataFrame":
        frames = [curated_rows(commits[p]).select(F.lit(p).alias("p_partition"), F.col("id").alias("p_id"),
                                                  F.col(TEXT).alias("p_text"))
                  for p in partitions if commits[p].rows]
        return union_frames(frames)

    return PriorIndex(exact=exact, bands=bands, texts=texts,
                      versions={p: m.run_id for p, m in commits.items()}, rows=sum(m.rows for m in commits.values()))


def index_segment(kept: "DataFrame", partition: Partition) -> "DataFrame":
    """The index rows of a partition's kept rows (``bands`` null when the chain has no near-dedup)."""
    from pyspark.sql import functions as F

    bands = F.col(BANDS) if BANDS in kept.columns else F.lit(None).cast("array<bigint>")
    return kept.select(F.lit(partition.start).alias("partition_start"), "id", HASH, CLUSTER, bands.alias("bands"))


def write_segment(stage: StageRun, kept: "DataFrame", rows: int, near: NearDeduplicator | None,
                  rows_per_file: int, started_from: int | None) -> dict[str, Any]:
    """Publish the partition's index rows (one commit to ``dedup_index``); returns ``stats["index"]``
    for the curated commit."""
    minhash = near.minhash.to_dict() if near is not None else None
    commit = publish_frame(stage, index_segment(kept, stage.partition), rows, layer="dedup_index",
                           rows_per_file=rows_per_file, started_from=started_from,
                           stats={"format": INDEX_FORMAT, "minhash": minhash})
    return {"format": INDEX_FORMAT, "rows": rows, "minhash": minhash, "snapshot_id": commit.snapshot_id}


def check_index_unchanged(stage: StageRun, prior: PriorIndex | None) -> None:
    """Refuse to publish when the other partitions' curated commits changed since the index was read."""
    pipeline, partition = stage.pipeline, stage.partition
    before = prior.versions if prior is not None else {}
    now = {p: m.run_id for p, m in _published(stage).items()}
    if now != before:
        changed = sorted(p for p in set(now) | set(before) if now.get(p) != before.get(p))
        raise PublishConflictError(
            f"curated partitions {changed} of {pipeline.name} were published while {partition.path} was being"
            f" deduplicated against them (runs {[now.get(p) for p in changed]}): not publishing; rerun"
            f" {partition.path} (Airflow retries it)")
