"""Prometheus metrics of a landing: records per outcome, bytes, offset and event lag per Kafka topic-partition.

:func:`export_metrics` writes them after the landing is committed, to the node-exporter textfile
collector's directory and, when configured, to a Pushgateway. (The summary of a landing for XCom,
asset events and the CLI is :func:`lakeforge.stage.run.summarize`, shared by every stage.)
"""

from __future__ import annotations

import logging
import os

from lakeforge.config import Settings
from lakeforge.lake import Commit

log = logging.getLogger(__name__)


def export_metrics(commit: Commit, settings: Settings) -> str | None:
    """Write the landing's metrics in Prometheus text format.

    To ``$LAKEFORGE_HOME/metrics/ingest_<pipeline>.prom`` (node-exporter textfile collector
    format, replaced atomically) and, when ``LAKEFORGE_PUSHGATEWAY_URL`` is set, to that Pushgateway.
    Metrics never fail a landing that is already published: errors are logged.
    """
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

    reg = CollectorRegistry()
    # The label "partition" is the Kafka topic-partition, not a lake partition: the name is kept so
    # existing dashboards and alerts keep working.
    base = ["pipeline", "topic", "partition"]
    records = Gauge("lakeforge_ingest_records", "Records of the last landing per outcome", base + ["outcome"], registry=reg)
    nbytes = Gauge("lakeforge_ingest_bytes", "Value bytes landed by the last landing", base, registry=reg)
    lag = Gauge("lakeforge_ingest_offset_lag", "High watermark minus the landing's end offset", base, registry=reg)
    end = Gauge("lakeforge_ingest_end_offset", "End offset (exclusive) of the last landing", base, registry=reg)
    stamp = Gauge("lakeforge_ingest_event_lag_seconds", "Seconds from the newest landed record to the landing",
                  base, registry=reg)
    dur = Gauge("lakeforge_ingest_duration_seconds", "Duration of the last landing", ["pipeline"], registry=reg)
    late = Gauge("lakeforge_ingest_late_rows", "Rows of the last landing that arrived after an earlier landing",
                 ["pipeline"], registry=reg)
    topic = next(iter(commit.kafka_offsets), "")
    for tp, stats in commit.stats.get("topic_partitions", {}).items():
        labels = dict(pipeline=commit.pipeline, topic=topic, partition=tp)  # "partition": the topic-partition
        records.labels(**labels, outcome="landed").set(stats["landed"])
        records.labels(**labels, outcome="quarantined").set(stats["quarantined"])
        nbytes.labels(**labels).set(stats["bytes"])
        lag.labels(**labels).set(stats["offset_lag"])
        end.labels(**labels).set(stats["end"])
        if stats["max_timestamp_ms"] >= 0:
            stamp.labels(**labels).set(commit.created_at.timestamp() - stats["max_timestamp_ms"] / 1000)
    dur.labels(pipeline=commit.pipeline).set(commit.stats.get("seconds", 0))
    late.labels(pipeline=commit.pipeline).set(commit.stats.get("late_rows", 0))
    path = settings.home / "metrics" / f"ingest_{commit.pipeline}.prom"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), reg)
        if os.environ.get("LAKEFORGE_PUSHGATEWAY_URL"):
            push_to_gateway(os.environ["LAKEFORGE_PUSHGATEWAY_URL"], job=f"lakeforge_ingest_{commit.pipeline}",
                            registry=reg)
    except Exception as exc:  # the partition is published; metrics are best effort
        log.warning("could not export ingest metrics: %s", exc)
        return None
    return str(path)
