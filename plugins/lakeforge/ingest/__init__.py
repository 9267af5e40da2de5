"""Ingest: land one event-time partition of a Kafka topic into the lake's ``raw`` Iceberg table.

Partition semantics. A (lake) partition is the event-time interval ``[start, end)`` of an Airflow
data interval (or of the ``partition`` Param). A record belongs to it by its event time: the JSON
field ``event_time_field`` (``ingest.time_source: field``, the default) or the Kafka record
timestamp (``time_source: kafka_timestamp``). The topic's own partitions are always called
*topic-partitions* here. A landing (:func:`run`, given a :class:`~lakeforge.stage.run.StageRun`):

1. takes the partition's lock in PostgreSQL (:mod:`lakeforge.locks`): a concurrent run for the
   same partition fails at once, naming the holder;
2. snapshots every topic-partition's high watermark: the end bound of this run, so a rerun over
   unchanged data reads the same offsets;
3. checks completeness: every non-empty topic-partition must hold a record stamped at or after
   ``end + allowed_lateness`` (``IngestOptions(force=True)`` skips this; the DAG waits for it in a
   sensor, :func:`check_complete`);
4. finds each topic-partition's start with ``offsets_for_times(start - max_timestamp_skew)`` (for
   ``kafka_timestamp``, ``start`` itself: Kafka returns the earliest offset stamped at or after
   it, so nothing earlier can belong). The hint is verified against the records read: a record
   whose Kafka timestamp precedes its event time by more than the skew would mean the hint may
   have skipped records of this partition, and the run fails instead of publishing a short
   partition. When Kafka retention already deleted records that may be this partition's (the log
   start is that first offset, :func:`~lakeforge.ingest.kafka.retention_gaps`), the run fails with
   :class:`~lakeforge.errors.RetentionLossError` naming the deleted range, unless
   ``IngestOptions(accept_retention_loss=True)``, which records it (``stats.retention_loss``);
5. reads every record from the start to the snapshot, all topic-partitions at once (librdkafka
   fetches them in parallel), each in offset order. A record whose event time falls in the interval
   lands in ``<pipeline>.raw``; one that cannot be parsed or violates the schema goes to
   ``<pipeline>.quarantine``
   (assigned by its Kafka timestamp) with its raw bytes, coordinates and a snake_case reason;
   others belong to other partitions;
6. streams both as Parquet into the tables' data locations, encoded and uploaded by background
   threads while the main thread consumes; then commits the quarantine partition and, last, the raw
   partition: one Iceberg commit each that replaces exactly that partition, its snapshot summary
   carrying the offset ranges per topic-partition, row counts, quarantine counts per reason and
   per-topic-partition volume and lag (a crash before it leaves the table as it was: the written
   files are orphans that maintenance removes); and exports Prometheus metrics.

Memory is bounded by the batch, row-group and file sizes, not by the partition: librdkafka's
prefetch buffer per topic-partition, one pending row group and one open file per topic-partition
and stream, and at most two row groups waiting for the writer.

Late records. A record of an already published partition that reaches Kafka after that
partition's snapshot is *late*. It is never lost: any run that reads it (the run of the
partition covering its arrival) reports ``late_partitions`` (partition -> count), the DAG
re-lands those partitions (a triggered run with the ``partition`` Param), and the re-landing's
commit counts the rows that were not in the previous one (``stats.late_rows``). Re-landing
replaces the partition whole, so every record still appears in exactly one published partition.

Modules:

* :mod:`~lakeforge.ingest.landing` — :func:`run`, :class:`IngestOptions`: the landing of one partition;
* :mod:`~lakeforge.ingest.kafka` — the consumer, snapshots, offsets, completeness, the read loop;
* :mod:`~lakeforge.ingest.records` — parsing and validating records, the raw and quarantine schemas;
* :mod:`~lakeforge.ingest.files` — Parquet file streams and the background writer;
* :mod:`~lakeforge.ingest.metrics` — Prometheus export.

The summary of a landing (XCom, asset events, the CLI's last line) is
:func:`lakeforge.stage.run.summarize`, shared by every stage.
"""

from lakeforge.ingest.files import BackgroundWriter, BoundedExecutor, ParquetFileStream
from lakeforge.ingest.kafka import (TopicSnapshot, check_complete, completeness, explain_completeness, offsets_at,
                                    open_consumer, read_topic_partitions, retention_gaps, snapshot, topic_size)
from lakeforge.ingest.landing import (IngestOptions, Landing, LateRecordTracker, TopicPartitionLanding,
                                      TopicPartitionStats, gc_paused, run)
from lakeforge.ingest.metrics import export_metrics
from lakeforge.ingest.records import (KAFKA_COLUMNS, QUARANTINE_SCHEMA, BatchParser, ParsedBatch, RecordRejected,
                                      parse_record, raw_schema)

__all__ = [
    "KAFKA_COLUMNS", "QUARANTINE_SCHEMA", "BackgroundWriter", "BatchParser", "BoundedExecutor", "IngestOptions",
    "Landing", "LateRecordTracker", "ParquetFileStream", "ParsedBatch", "RecordRejected", "TopicPartitionLanding",
    "TopicPartitionStats", "TopicSnapshot", "check_complete", "completeness", "explain_completeness",
    "export_metrics", "gc_paused", "offsets_at", "open_consumer", "parse_record", "raw_schema",
    "read_topic_partitions", "retention_gaps", "run", "snapshot", "topic_size",
]
