"""The curate job: one raw partition in, one curated partition (plus its index segment, excluded
rows and quality report) out. ``spark-submit jobs/curate.py`` parses its flags into a
:class:`~lakeforge.stage.run.StageRun` and calls :func:`run`.

Order of work, so that a failure at any point publishes nothing and loses nothing:

1. read the raw partition at the snapshot of the commit that published it; read the dedup index
   of the other published curated partitions (:mod:`lakeforge.curate.index`);
2. run the chain (:func:`curate_frame`);
3. evaluate the quality gate, write the report (``reports/…/run=<id>/quality.{json,html}``), and
   stop with :class:`~lakeforge.errors.DataQualityError` if the gate failed;
4. publish the dropped rows with their reasons (``<pipeline>.excluded``) and the index rows
   (``<pipeline>.dedup_index``), one Iceberg commit each;
5. check no other partition was republished meanwhile, then publish the curated rows
   (``<pipeline>.curated``, one commit naming the raw snapshot read and the other two commits) —
   the partition's publish point: readers and the next runs go by the curated commit.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

from lakeforge.curate import gates, report
from lakeforge.curate.dedup import CLUSTER, ExactDeduplicator, NearDeduplicator, text_hash
from lakeforge.curate.index import check_index_unchanged, prior_index, write_segment
from lakeforge.curate.steps import build_steps
from lakeforge.config import PipelineConfig
from lakeforge.lake import Commit
from lakeforge.stage import schema
from lakeforge.stage.chain import ChainResult, StepContext, run_steps
from lakeforge.stage.run import StageRun
from lakeforge.stage.spark_io import (SparkStageOptions, check_rows_read, publish_frame, read_partition,
                                      stage_session)
from lakeforge.stage.steps import HASH, TEXT, Step, chain_reasons

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

class TextHasher(Step):
    """Add ``text_hash`` of the current text (not registered: :func:`curate_frame` appends it last)."""

    name = "text_hash"
    modifies_text = False

    def apply(self, df, context=None):
        from pyspark.sql import functions as F

        return df.withColumn(HASH, text_hash(F.col(TEXT))), None


def curate_frame(df: "DataFrame", steps: Sequence[Step], *, samples_per_reason: int = 5,
                 context: StepContext | None = None) -> ChainResult:
    """Run the cleaning chain and add ``text_hash`` of the final text (the curated contract).

    Args:
        df: raw rows (at least ``id`` and ``text``; other columns pass through).
        steps: the chain, e.g. ``build_steps(pipeline.curate)``.
        samples_per_reason: dropped rows kept per reason for the report.
        context: the index of other partitions (cross-partition dedup); default none.
    """
    # The hash is recomputed even after exact_dedup: a later step may have changed the text.
    return run_steps(df, [*steps, TextHasher()], samples_per_reason=samples_per_reason, context=context)


def _typed(df: "DataFrame", schema: str, fill: dict[str, Any] | None = None) -> "DataFrame":
    from pyspark.sql import functions as F

    fill = fill or {}
    cols = []
    for part in schema.split(","):
        name, kind = part.strip().split(" ")
        value = fill.get(name, F.col(name) if name in df.columns else F.lit(None))
        cols.append(value.cast(kind).alias(name))
    return df.select(*cols)


def with_cluster(df: "DataFrame") -> "DataFrame":
    """``df`` with ``cluster_id`` filled: a row no near-dedup clustered is its own cluster (its text hash)."""
    from pyspark.sql import functions as F

    cluster = F.coalesce(F.col(CLUSTER), F.col(HASH)) if CLUSTER in df.columns else F.col(HASH)
    return df.withColumn(CLUSTER, cluster)


def select_curated(df: "DataFrame", pipeline: PipelineConfig) -> "DataFrame":
    """The curated contract's columns and types, in order (:func:`lakeforge.stage.schema.curated_ddl`)."""
    return _typed(with_cluster(df), schema.curated_ddl(pipeline))


def select_excluded(df: "DataFrame", pipeline: PipelineConfig) -> "DataFrame":
    """Dropped rows in the excluded-rows layout (text as the dropping step saw it, reason, links)."""
    return _typed(df, schema.excluded_ddl(pipeline))


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------

def run(stage: StageRun, options: SparkStageOptions | None = None, *,
        spark: "SparkSession | None" = None) -> Commit:
    """Curate the run's raw partition and publish it as ``curated`` (see the module docstring).

    Args:
        stage: pipeline, partition, run id and lake (tests pass a local lake).
        options: Spark master, samples per reason, rows per file.
        spark: a session to use (default: one with the lake's settings, see :func:`stage_session`).
    Raises:
        DataQualityError: the quality gate failed (nothing published; the report is written).
        PartitionNotPublishedError: the raw partition was not landed.
        LakeError: the raw partition does not hold what its commit says.
        PublishConflictError: another run published this partition, or another partition was
            republished while this one was deduplicated.
    """
    t0 = time.monotonic()
    options = options or SparkStageOptions()
    pipeline, partition, lake, run_id = stage.pipeline, stage.partition, stage.lake, stage.run_id
    steps = build_steps(pipeline.curate)  # fail on a bad chain before starting Spark
    gates.check_reasons_known(pipeline.quality_gate, chain_reasons(steps))
    raw_commit = lake.read_commit("raw", pipeline.name, partition)
    started = {layer: lake.snapshot_id(pipeline.name, layer) for layer in ("curated", "excluded", "dedup_index")}
    spark = spark or stage_session(stage, "curate", options)

    raw = read_partition(spark, stage, raw_commit)
    raw_types = dict(raw.dtypes) if raw_commit.rows else None
    near = next((s for s in steps if isinstance(s, NearDeduplicator)), None)
    dedups = any(isinstance(s, (ExactDeduplicator, NearDeduplicator)) for s in steps)
    context = StepContext(prior=prior_index(spark, stage, near) if dedups else None)
    raw = read_partition(spark, stage, raw_commit, schema.raw_required(pipeline))
    raw = context.persist(schema.role_frame(raw, pipeline))
    result = curate_frame(raw, steps, samples_per_reason=options.samples_per_reason, context=context)
    try:
        check_rows_read(raw_commit, result.rows_in)
        log.info("curate %s: %d -> %d rows, dropped %s", stage.where, result.rows_in, result.rows_out,
                 result.counts_by_reason)
        checks = gates.evaluate(pipeline.quality_gate, rows_in=result.rows_in, rows_out=result.rows_out,
                                counts=result.counts_by_reason, raw=raw_commit, pipeline=pipeline, raw_types=raw_types)
        dedup_stats = dict(context.stats)
        if context.prior is not None:
            dedup_stats["index"] = {"partitions": len(context.prior.versions), "rows": context.prior.rows}
        doc = report.build(
            pipeline=pipeline.name, partition=partition.path, run_id=run_id, inputs=[raw_commit.ref],
            rows_in=result.rows_in, rows_out=result.rows_out, counts=result.counts_by_reason, steps=result.step_stats,
            metrics=result.metrics, samples=result.dropped_samples, lengths_before=report.length_histogram(raw),
            lengths_after=report.length_histogram(result.kept), dedup=dedup_stats,
            gate=[c.to_dict() for c in checks], quarantined=raw_commit.quarantined, seconds=time.monotonic() - t0)
        links = {
            "json": lake.put_json(lake.report_key(pipeline.name, partition, run_id, "quality.json"), doc),
            "html": lake.put_bytes(lake.report_key(pipeline.name, partition, run_id, "quality.html"),
                                   report.render_html(doc).encode(), "text/html; charset=utf-8"),
        }
        gates.enforce(checks, stage.where, links["html"])

        n_dropped = sum(result.counts_by_reason.values())
        excluded = publish_frame(
            stage, select_excluded(result.dropped, pipeline) if result.dropped is not None
            else spark.createDataFrame([], schema.excluded_ddl(pipeline)), n_dropped, layer="excluded",
            rows_per_file=options.rows_per_file, started_from=started["excluded"], inputs=[raw_commit.ref],
            dropped=result.counts_by_reason)
        index = write_segment(stage, with_cluster(result.kept), result.rows_out, near, options.rows_per_file,
                              started["dedup_index"])
        check_index_unchanged(stage, context.prior)
        return publish_frame(
            stage, select_curated(result.kept, pipeline), result.rows_out, layer="curated",
            rows_per_file=options.rows_per_file, started_from=started["curated"],
            inputs=[raw_commit.ref], dropped=result.counts_by_reason,
            stats={
                "rows_in": result.rows_in,
                "rows_out": result.rows_out,
                "steps": [spec.model_dump() for spec in pipeline.curate],
                "dropped_samples": result.dropped_samples,
                "metrics": result.metrics,
                "dedup": dedup_stats,
                "gate": [c.to_dict() for c in checks],
                "report": links,
                "index": index,
                "excluded": {"rows": n_dropped, "snapshot_id": excluded.snapshot_id},
                "seconds": round(time.monotonic() - t0, 2),
            },
        )
    finally:
        result.release()
