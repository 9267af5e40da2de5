"""The contract every stage shares: one :class:`StageRun` per process, built once and passed on.

A stage (ingest, curate, features, train, evaluate) works on one pipeline, one lake
:class:`~lakeforge.config.Partition`, under one run id. The entry point of the process (a ``jobs/``
CLI, the ``lakeforge`` CLI or an Airflow task body in :mod:`lakeforge.operators`) builds the
:class:`StageRun` once, so the pipeline YAML is loaded and the partition parsed once per process,
and every stage's ``run`` takes it as its first argument.

Also here, because every stage needs the same answer: the one run-id sanitizer
(:func:`safe_run_id`, :func:`new_run_id`), the one commit-to-summary function
(:func:`summarize`: job stdout, XCom, asset-event metadata) and the exit status of a failed
data-quality gate (:data:`GATE_FAILED_EXIT`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakeforge.config import Partition, PipelineConfig, Settings
from lakeforge.lake import Commit, Lake

#: Exit status of a stage process that failed in a way rerunning cannot fix — its data-quality gate,
#: a partition whose columns do not match the pipeline, a bad pipeline file — so the Airflow task
#: fails without retries (``LakeSparkSubmitOperator`` reads it).
GATE_FAILED_EXIT = 3


def safe_run_id(value: str, limit: int = 120) -> str:
    """``value`` with every character but ASCII letters, digits, ``-``, ``_`` and ``.`` replaced by
    ``_``, cut at ``limit``: an Airflow run id (``backfill__2026-11-14T00:00:00+00:00``) as a lake
    key part or checkpoint key no S3 tool misreads."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in value)[:limit]


def new_run_id(hint: str | None = None) -> str:
    """A path-safe run id unique to this attempt: ``hint`` (the Airflow run id) or ``manual``, plus a
    short random suffix."""
    return f"{safe_run_id(hint or 'manual', 80)}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class StageRun:
    """One stage's run of one pipeline on one partition (see the module docstring)."""

    pipeline: PipelineConfig  # the pipeline YAML, loaded once
    partition: Partition  # the lake partition, parsed once
    run_id: str  # path-safe: names the run in commits, reports and checkpoints
    settings: Settings  # endpoints and credentials
    lake: Lake  # where the stage reads and publishes (clients are created on first use)

    @classmethod
    def create(cls, pipeline: str | Path | PipelineConfig, partition: str | Partition, run_id: str | None = None, *,
               settings: Settings | None = None, lake: Lake | None = None, per_attempt: bool = False) -> "StageRun":
        """Build the run of a process: load the pipeline, parse the partition, settle the run id.

        Args:
            pipeline: a pipeline name (``pipelines/<name>.yaml``), a YAML path, or a loaded config.
            partition: ``2026-11-23``, ``dt=2026-11-23``, ``2026-11-23T05``, … or a parsed Partition.
            run_id: the Airflow run id (made path-safe); None: a new one (``manual-<suffix>``).
            settings: default ``lake.settings``, else ``Settings.load()``.
            lake: default ``Lake(settings)``; tests pass a ``LocalLake``.
            per_attempt: add a random suffix to ``run_id``, so every attempt writes under its own
                prefix (the Spark stages); without it a retry reuses the prefix (ingest).
        """
        config = pipeline if isinstance(pipeline, PipelineConfig) else PipelineConfig.load(pipeline)
        part = partition if isinstance(partition, Partition) else Partition.parse(partition, config.partition)
        if per_attempt or not run_id:
            run_id = new_run_id(run_id)
        else:
            run_id = safe_run_id(run_id)
        settings = settings or (lake.settings if lake is not None else Settings.load())
        return cls(pipeline=config, partition=part, run_id=run_id, settings=settings, lake=lake or Lake(settings))

    @property
    def where(self) -> str:
        """``<pipeline> <partition path>``, for logs and error messages."""
        return f"{self.pipeline.name} {self.partition.path}"

    def commit(self, layer: str, rows: int, **fields: Any) -> Commit:
        """The commit record of ``layer`` for this run's partition, before it is published (``fields``:
        inputs, kafka_offsets, dropped, quarantined, stats, …); every stage builds its records here."""
        part = self.partition
        return Commit(layer=layer, pipeline=self.pipeline.name, partition=part.path, interval=(part.start, part.end),
                      schema_version=self.pipeline.schema_version, run_id=self.run_id, rows=rows, **fields)


def summarize(commit: Commit, lake: Lake, *, presign: bool = False) -> dict[str, Any]:
    """The summary of a published partition: what a job prints as its last stdout line, what the
    Airflow task returns (XCom) and attaches to its outlet asset event.

    Args:
        commit: the commit that published the partition.
        lake: the lake it was published in (presigns the report link).
        presign: add ``report_url``, a presigned HTTP link to the quality report (7 days).
    """
    stats = commit.stats or {}
    summary: dict[str, Any] = {
        "table": commit.table, "snapshot_id": commit.snapshot_id,
        "layer": commit.layer, "partition": commit.partition, "run_id": commit.run_id,
        "rows": commit.rows, "files": commit.files, "dropped": commit.dropped,
        "quarantined": commit.quarantined, "quarantined_total": sum(commit.quarantined.values()),
    }
    if commit.kafka_offsets:
        summary["kafka_offsets"] = commit.kafka_offsets
    for key in ("rows_per_split", "late_rows", "late_partitions", "msgs_per_s", "seconds"):
        if key in stats:
            summary[key] = stats[key]
    if "topic_partitions" in stats:  # per Kafka topic-partition: volume, lag, offsets
        summary["topic_partitions"] = {
            tp: {k: v[k] for k in ("landed", "quarantined", "bytes", "offset_lag", "first", "end")}
            for tp, v in stats["topic_partitions"].items()}
    report = stats.get("report") or stats.get("curate_report")  # features carry their curated input's
    if report:
        summary["report"] = report
        summary["report_json"], summary["report_html"] = report["json"], report["html"]
        if presign:
            summary["report_url"] = lake.http_link(report["html"])  # opens in a browser for 7 days
    return summary
