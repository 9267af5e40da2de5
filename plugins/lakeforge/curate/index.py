"""The persistent dedup index: what earlier (and later) curated partitions hold, so that a daily run
or a backfill never admits a duplicate of data already curated.

There is no separate index to keep in step with the data. Every curated publish writes an *index
segment* — one row per kept row: ``partition, id, text_hash, cluster_id, bands`` (the MinHash band
ids) — under its own run prefix (``run=<id>/_index/``) and lists it in its ``_MANIFEST.json``
(``stats["index"]``), next to the data files. The index of a pipeline is the union of the
segments that the *published* curated manifests list. So the partition and its index entries are
published by the same single PUT of the manifest: a crash before it leaves both old, after it both
new, and a rerun replaces both whole (superseded runs' files, segment included, are removed after
the publish).

Reading it (:func:`prior_index`), a run takes every published partition except its own. A segment
written with other MinHash parameters (or none: a partition curated before segments existed) is
not trusted for bands: they are recomputed from that partition's curated text with the current
parameters. :func:`check_index_unchanged` re-reads the manifests before publishing and refuses
to publish when another partition was republished meanwhile (a concurrent run could otherwise
admit the same duplicate twice); the DAG also runs one curate task per pipeline at a time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lakeforge.config import Partition
from lakeforge.curate.dedup import CLUSTER, NearDeduplicator, PriorIndex
from lakeforge.curate.minhash import BANDS, MinHashSigner
from lakeforge.errors import PublishConflictError
from lakeforge.lake import Manifest
from lakeforge.stage.chain import FusedPass, union_frames
from lakeforge.stage.run import StageRun
from lakeforge.stage.spark_io import file_uris, write_files
from lakeforge.stage.steps import HASH, TEXT

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

INDEX_FORMAT = 1


def _published(stage: StageRun) -> list[Manifest]:
    """The published curated manifests of the stage's pipeline, but its own partition's."""
    lake, name = stage.lake, stage.pipeline.name
    return [lake.read_manifest("curated", name, p)
            for p in lake.published_partitions("curated", name) if p.path != stage.partition.path]


def prior_index(spark: "SparkSession", stage: StageRun, near: NearDeduplicator | None) -> PriorIndex | None:
    """The index of every published curated partition of the pipeline but the run's own; None if there is none.

    Args:
        near: the chain's near-dedup step (its MinHash parameters decide which segments' bands are
            usable); None when the chain has no near-dedup (only text hashes are read).
    """
    from pyspark.sql import functions as F

    lake = stage.lake
    manifests = _published(stage)
    if not manifests:
        return None
    params = near.minhash.to_dict() if near is not None else None
    segments, recompute = [], []  # index file entries usable as they are; manifests to recompute bands for
    exact_frames, band_frames = [], []
    for m in manifests:
        if not m.files:
            continue
        index = m.stats.get("index") or {}
        if index.get("files") and index.get("format") == INDEX_FORMAT:
            segments.append(m)
            if params is not None and index.get("minhash") != params:
                recompute.append(m)
        else:
            recompute.append(m)
            curated = spark.read.parquet(*file_uris(lake, m.files))
            cluster = F.col(CLUSTER) if CLUSTER in curated.columns else F.col(HASH)
            exact_frames.append(curated.select(F.lit(m.partition).alias("p_partition"), F.col("id").alias("p_id"),
                                               HASH, cluster.alias("p_cluster")))
    if segments:
        seg = spark.read.parquet(*[u for m in segments for u in file_uris(lake, m.stats["index"]["files"])])
        seg = seg.select(F.col("partition").alias("p_partition"), F.col("id").alias("p_id"), HASH,
                         F.col(CLUSTER).alias("p_cluster"), "bands")
        exact_frames.append(seg.drop("bands"))
        if params is not None:
            stale = {m.partition for m in recompute}
            usable = seg.where(~F.col("p_partition").isin(sorted(stale))) if stale else seg
            band_frames.append(usable)
    if params is not None:
        for m in recompute:
            curated = spark.read.parquet(*file_uris(lake, m.files))
            cluster = F.col(CLUSTER) if CLUSTER in curated.columns else F.col(HASH)
            signed = FusedPass([MinHashSigner(near.minhash)]).apply(
                curated.select("id", TEXT, HASH, cluster.alias("p_cluster")))
            band_frames.append(signed.select(F.lit(m.partition).alias("p_partition"), F.col("id").alias("p_id"), HASH,
                                             "p_cluster", F.col(BANDS).alias("bands")))
            log.info("index: recomputed band ids of %s (no usable segment for the current MinHash params)", m.partition)

    exact = union_frames(exact_frames)
    bands = None
    if band_frames:
        bands = (union_frames(band_frames).where(F.col("bands").isNotNull())
                 .select("p_id", "p_cluster", "p_partition", F.posexplode("bands").alias("band", "bucket")))
    by_partition = {m.partition: m for m in manifests}

    def texts(partitions: list[str]) -> "DataFrame":
        frames = [spark.read.parquet(*file_uris(lake, by_partition[p].files))
                  .select(F.lit(p).alias("p_partition"), F.col("id").alias("p_id"), F.col(TEXT).alias("p_text"))
                  for p in partitions if by_partition[p].files]
        return union_frames(frames)

    return PriorIndex(exact=exact, bands=bands, texts=texts,
                      versions={m.partition: m.run_id for m in manifests}, rows=sum(m.rows for m in manifests))


def index_segment(kept: "DataFrame", partition: Partition) -> "DataFrame":
    """The index rows of a partition's kept rows (``bands`` null when the chain has no near-dedup)."""
    from pyspark.sql import functions as F

    bands = F.col(BANDS) if BANDS in kept.columns else F.lit(None).cast("array<bigint>")
    return kept.select(F.lit(partition.path).alias("partition"), "id", HASH, CLUSTER, bands.alias("bands"))


def write_segment(stage: StageRun, kept: "DataFrame", rows: int, near: NearDeduplicator | None,
                  rows_per_file: int) -> dict[str, Any]:
    """Write the partition's index segment under its run prefix; returns ``stats["index"]`` for the manifest."""
    lake = stage.lake
    key = lake.run_part_key("curated", stage.pipeline.name, stage.partition, stage.run_id, "index")
    files = write_files(lake, index_segment(kept, stage.partition), rows, key, rows_per_file)
    return {"format": INDEX_FORMAT, "files": [f.model_dump() for f in files], "rows": rows,
            "minhash": near.minhash.to_dict() if near is not None else None}


def check_index_unchanged(stage: StageRun, prior: PriorIndex | None) -> None:
    """Refuse to publish when the other partitions' manifests changed since the index was read."""
    pipeline, partition = stage.pipeline, stage.partition
    before = prior.versions if prior is not None else {}
    now = {m.partition: m.run_id for m in _published(stage)}
    if now != before:
        changed = sorted(p for p in set(now) | set(before) if now.get(p) != before.get(p))
        raise PublishConflictError(
            f"curated partitions {changed} of {pipeline.name} were published while {partition.path} was being"
            f" deduplicated against them (runs {[now.get(p) for p in changed]}): not publishing; rerun"
            f" {partition.path} (Airflow retries it)")



