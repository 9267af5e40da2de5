"""The landing of one lake partition: :func:`run`, the ingest stage's entry point.

:func:`run` takes the partition's lock, snapshots the topic, checks completeness, reads every Kafka
topic-partition from its start offset to the snapshot, routes each record, and last commits the
quarantine and then the raw partition to their Iceberg tables (the steps, and what late records are,
are in the :mod:`lakeforge.ingest` overview).

* :class:`IngestOptions` — how to land, beyond what the :class:`~lakeforge.stage.run.StageRun` says;
* :class:`Landing` — what every topic-partition's landing shares: the lake partition and its
  bounds, the parser, the writer, the counters;
* :class:`TopicPartitionLanding` — the messages of one Kafka topic-partition routed to the lake
  partition's rows, to quarantine or past it; its figures in :class:`TopicPartitionStats`;
* :class:`LateRecordTracker` — records of already published lake partitions found beyond those
  partitions' snapshots (``stats.late_partitions``);
* :func:`gc_paused` — the read loop runs without cyclic garbage collection.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from lakeforge.config import Partition, PipelineConfig
from lakeforge.errors import (LakeError, PartitionIncompleteError, PartitionNotPublishedError, RetentionLossError,
                               TimestampSkewError)
from lakeforge.ingest.files import BackgroundWriter, ParquetFileStream
from lakeforge.ingest.kafka import (completeness, explain_completeness, offsets_at, open_consumer,
                                    read_topic_partitions, retention_gaps, snapshot)
from lakeforge.ingest.metrics import export_metrics
from lakeforge.ingest.records import QUARANTINE_SCHEMA, BatchParser, raw_schema
from lakeforge.lake import Commit, Lake

if TYPE_CHECKING:
    from lakeforge.stage.run import StageRun

log = logging.getLogger(__name__)


class IngestOptions(BaseModel):
    """How to land, beyond the pipeline, partition and run id of the :class:`StageRun`."""

    model_config = ConfigDict(frozen=True)
    force: bool = False  # land even if the topic has not passed end + allowed lateness
    accept_retention_loss: bool = False  # land even if Kafka retention deleted records that may be this partition's
    poll_timeout_s: float = 1.0  # one consume()'s wait
    stall_timeout_s: float = 60.0  # fail when a topic-partition yields nothing for this long


@dataclass
class TopicPartitionStats:
    """The figures of one Kafka topic-partition in a landing (the commit's ``stats.topic_partitions``)."""

    first: int  # first offset read
    end: int  # end offset (exclusive): the snapshot's high watermark
    landed: int = 0  # rows landed in the lake partition
    quarantined: int = 0  # records of the lake partition sent to quarantine
    bytes: int = 0  # value bytes landed
    max_ts_ms: int = -1  # newest Kafka timestamp landed (-1: none)

    def as_dict(self, high_now: int) -> dict[str, int]:
        return {"first": self.first, "end": self.end, "landed": self.landed, "quarantined": self.quarantined,
                "bytes": self.bytes, "offset_lag": max(0, high_now - self.end), "max_timestamp_ms": self.max_ts_ms}


@dataclass
class LateRecordTracker:
    """Records of other, already published lake partitions found beyond those partitions' snapshots."""

    lake: Lake
    pipeline: PipelineConfig
    commits: dict[str, Commit | None] = field(default_factory=dict)  # partition path -> raw commit (None: not landed)
    late: dict[str, int] = field(default_factory=dict)  # partition path -> late records seen

    def see(self, tp: int, times: pa.Array, offsets: pa.Array) -> None:
        """Count the records (event times, Kafka offsets in topic-partition ``tp``) of earlier partitions."""
        import pyarrow.compute as pc

        if not len(times):
            return
        unit = "hour" if self.pipeline.partition == "hourly" else "day"
        buckets = pc.floor_temporal(times, unit=unit)
        for bucket in pc.unique(buckets).to_pylist():
            partition = Partition.containing(bucket, self.pipeline.partition)
            if partition.path not in self.commits:
                try:
                    self.commits[partition.path] = self.lake.read_commit("raw", self.pipeline.name, partition)
                except PartitionNotPublishedError:  # not landed yet: it will read these records itself
                    self.commits[partition.path] = None
            commit = self.commits[partition.path]
            rng = commit and commit.kafka_offsets.get(self.pipeline.topic, {}).get(str(tp))
            if rng:
                here = pc.filter(offsets, pc.equal(buckets, pa.scalar(bucket, buckets.type)))
                n = pc.sum(pc.greater_equal(here, rng[1])).as_py() or 0
                if n:
                    self.late[partition.path] = self.late.get(partition.path, 0) + n


class TopicPartitionLanding:
    """Lands the messages of one Kafka topic-partition: routes each to the lake partition's rows, to
    quarantine or past it, and keeps that topic-partition's figures."""

    def __init__(self, landing: "Landing", tp: int, first: int, end: int):
        self.landing, self.tp = landing, tp
        self.stats = TopicPartitionStats(first=first, end=end)
        # offsets from here on were not in the previous landing of the lake partition (None: first landing)
        self.previous_end = landing.previous_offsets.get(str(tp), [0, 0])[1] if landing.previous else None
        self.data = ParquetFileStream(landing.lake, landing.data_prefix, tp, landing.schema, landing.spec,
                                      landing.writer, landing.plain)
        self.quarantine = ParquetFileStream(landing.lake, landing.quarantine_prefix, tp, QUARANTINE_SCHEMA,
                                            landing.spec, landing.writer, {"raw", "detail"})

    def process(self, msgs: list) -> None:
        import pyarrow.compute as pc

        landing = self.landing
        values = [m.value() for m in msgs]
        offsets = [m.offset() for m in msgs]
        stamps = [m.timestamp()[1] for m in msgs]
        batch = landing.parser.parse(values)
        if batch.rejected:
            self._quarantine(batch.rejected, values, offsets, stamps)
        if not batch.index:
            return
        idx = pa.array(batch.index, pa.int64())
        ts = pc.take(pa.array(stamps, pa.int64()), idx)
        offs = pc.take(pa.array(offsets, pa.int64()), idx)
        kafka_ts = ts.cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("us", tz="UTC"))
        if landing.by_field:
            t = batch.table[landing.tfield].combine_chunks()
            # how far each record's Kafka stamp precedes its event time: the start-offset hint is safe
            # only while this stays within max_timestamp_skew_s
            lead = pc.max(pc.subtract(pc.divide(t.cast(pa.int64()), 1000), ts)).as_py()
            if lead is not None and lead > landing.max_lead_ms:
                landing.max_lead_ms = lead
                if lead > landing.skew_ms:
                    raise TimestampSkewError(
                        f"a record's Kafka timestamp precedes its {landing.tfield} by {lead / 1000:.0f}s > "
                        f"max_timestamp_skew_s={landing.spec.max_timestamp_skew_s}: records of "
                        f"{landing.partition.path} may sit before the start offset. Raise "
                        "ingest.max_timestamp_skew_s in the pipeline YAML (nothing was published).")
        else:
            t = kafka_ts
        inside = pc.and_(pc.greater_equal(t, landing.start_scalar(t.type)), pc.less(t, landing.end_scalar(t.type)))
        n_in = pc.sum(inside).as_py() or 0
        if n_in:
            everything = n_in == len(batch.index)  # the usual case: no copy of the texts by a filter

            def keep(data):
                return data if everything else data.filter(inside)

            landed_rows, landed_offsets, landed_ts, landed_sizes = (keep(batch.table), keep(offs), keep(kafka_ts),
                                                                    keep(batch.sizes))
            n = landed_rows.num_rows
            cols = [*landed_rows.columns, pa.array([landing.topic] * n, pa.string()),
                    pa.array([self.tp] * n, pa.int32()), landed_offsets, landed_ts]
            self.data.add(pa.Table.from_arrays(cols, schema=landing.schema),
                          landed_sizes.to_numpy(zero_copy_only=False))
            stats = self.stats
            stats.landed += n
            stats.bytes += pc.sum(landed_sizes).as_py()
            stats.max_ts_ms = max(stats.max_ts_ms, pc.max(keep(ts)).as_py())
            if self.previous_end is not None:
                landing.late_rows += pc.sum(pc.greater_equal(landed_offsets, self.previous_end)).as_py() or 0
        n_out = len(batch.index) - n_in
        if n_out:
            landing.outside += n_out
            before = pc.less(t, landing.start_scalar(t.type))
            if pc.any(before).as_py():
                landing.late.see(self.tp, t.filter(before), offs.filter(before))

    def _quarantine(self, rejected, values, offsets, stamps) -> None:
        """Unparseable records, assigned to lake partitions by their Kafka timestamp."""
        landing = self.landing
        rows = [(i, rej) for i, rej in rejected if landing.start_ms <= stamps[i] < landing.end_ms]
        if not rows:
            return
        for _, rej in rows:
            landing.quarantined[rej.reason] = landing.quarantined.get(rej.reason, 0) + 1
        self.stats.quarantined += len(rows)
        n = len(rows)
        raw = [values[i] or b"" for i, _ in rows]
        self.quarantine.add(pa.Table.from_arrays([
            pa.array(raw, pa.binary()),
            pa.array([rej.reason for _, rej in rows], pa.string()),
            pa.array([rej.detail for _, rej in rows], pa.string()),
            pa.array([landing.topic] * n, pa.string()), pa.array([self.tp] * n, pa.int32()),
            pa.array([offsets[i] for i, _ in rows], pa.int64()),
            pa.array([stamps[i] for i, _ in rows], pa.int64()).cast(pa.timestamp("ms", tz="UTC")).cast(
                pa.timestamp("us", tz="UTC")),
            pa.array([landing.partition.start] * n, pa.timestamp("us", tz="UTC")),
        ], schema=QUARANTINE_SCHEMA), np.fromiter(map(len, raw), np.int64, count=n))

    def close(self) -> None:
        self.data.close()
        self.quarantine.close()


class Landing:
    """One landing of one lake partition: what every topic-partition's landing shares."""

    def __init__(self, stage: StageRun, previous: Commit | None):
        pipeline, partition, lake = stage.pipeline, stage.partition, stage.lake
        self.pipeline, self.partition, self.lake = pipeline, partition, lake
        self.spec = pipeline.ingest
        self.topic = pipeline.topic
        self.tfield = pipeline.event_time_field
        self.by_field = self.spec.time_source == "field"
        self.start_ms = int(partition.start.timestamp() * 1000)
        self.end_ms = int(partition.end.timestamp() * 1000)
        self.skew_ms = self.spec.max_timestamp_skew_s * 1000
        self.previous = previous  # the commit that published the lake partition's raw rows, if any
        # topic-partition -> [first, end] offsets of the previous landing
        self.previous_offsets = previous.kafka_offsets.get(self.topic, {}) if previous else {}
        self.parser = BatchParser(pipeline, self.spec.max_record_bytes)
        self.schema = raw_schema(pipeline)
        self.plain = {pipeline.id_field} | {f.name for f in pipeline.fields if f.type == "string" and f.max_bytes}
        # where this attempt's files go before the commit: the tables' data locations
        self.data_prefix = lake.staging_key(lake.table(pipeline, "raw"), partition, stage.run_id)
        self.quarantine_prefix = lake.staging_key(lake.table(pipeline, "quarantine"), partition, stage.run_id)
        self.writer = BackgroundWriter()
        self.late = LateRecordTracker(lake, pipeline)
        self.quarantined: dict[str, int] = {}  # quarantine reason -> records
        self.outside = self.late_rows = self.max_lead_ms = 0

    def start_scalar(self, typ: pa.DataType) -> pa.Scalar:
        return pa.scalar(self.partition.start, typ)

    def end_scalar(self, typ: pa.DataType) -> pa.Scalar:
        return pa.scalar(self.partition.end, typ)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: the read loop makes millions of short-lived objects
    (librdkafka messages, values, lists), which refcounting frees, and none in cycles (rejections
    are :meth:`RecordRejected.detached`), yet each of them counts towards the collector's passes,
    which then took a tenth to a fifth of the landing's CPU. Restored on exit."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def lock_name(stage: StageRun) -> str:
    """The lock a landing holds (:func:`lakeforge.locks.partition_lock`): one landing per raw partition."""
    return f"{stage.pipeline.name}.raw/{stage.partition.path}"


def run(stage: StageRun, options: IngestOptions | None = None,
        progress: Callable[[str], None] | None = None) -> Commit:
    """Land the stage's partition from Kafka into ``stage.lake``; return the raw table's commit.

    Args:
        stage: the pipeline, the lake partition, the run id (named in the commits), the settings
            (Kafka, the PostgreSQL lock, the metrics dir) and the lake.
        options: force, poll and stall timeouts; default :class:`IngestOptions`.
        progress: called with a line of progress every 10 s and at the end; default: the log.
    """
    from lakeforge.locks import partition_lock

    options = options or IngestOptions()
    with partition_lock(stage.settings, lock_name(stage), stage.run_id):
        return _land(stage, options, progress or (lambda s: log.info("%s", s)))


def _land(stage: StageRun, options: IngestOptions, progress: Callable[[str], None]) -> Commit:
    pipeline, partition, lake = stage.pipeline, stage.partition, stage.lake
    spec = pipeline.ingest
    t0 = time.monotonic()
    started = {layer: lake.snapshot_id(pipeline.name, layer) for layer in ("raw", "quarantine")}
    try:
        previous = lake.read_commit("raw", pipeline.name, partition)
    except PartitionNotPublishedError:  # first landing of this partition
        previous = None
    landing = Landing(stage, previous)
    topic = pipeline.topic
    consumer = open_consumer(stage.settings, spec.connect_retries)
    try:
        snap = snapshot(consumer, topic)
        if not options.force:
            done = completeness(consumer, snap, partition, spec.allowed_lateness_s)
            if not all(done.values()):
                _, why = explain_completeness(done, pipeline, partition)
                raise PartitionIncompleteError(f"{partition.path} is not complete: {why}. Wait, or land anyway with "
                                               "force (the DAG's `force_complete` Param).")
        hints = offsets_at(consumer, topic, snap.topic_partitions,
                           landing.start_ms - (landing.skew_ms if landing.by_field else 0))
        lost = retention_gaps(snap, hints)
        if lost and not options.accept_retention_loss:
            gone = ", ".join(f"topic-partition {tp}: offsets [0, {low})" for tp, low in sorted(lost.items()))
            raise RetentionLossError(
                f"{partition.path}: Kafka retention already deleted records of {topic} that may belong to this "
                f"partition ({gone}; the oldest remaining record is at or after the partition's start). Restore them "
                "and rerun, or land what remains with accept_retention_loss (the DAG's `accept_retention_loss` Param, "
                "`lakeforge ingest --accept-retention-loss`); the landing then records the deleted range in its stats.")
        if lost:
            log.warning("%s: landing without offsets deleted by retention: %s", partition.path, lost)
        ranges = {tp: (max(hints[tp] if hints[tp] >= 0 else snap.high[tp], snap.low[tp]), snap.high[tp])
                  for tp in snap.topic_partitions}
        tp_landings = {tp: TopicPartitionLanding(landing, tp, first, end) for tp, (first, end) in ranges.items()}
        total = sum(end - first for first, end in ranges.values())
        scanned, last_report = 0, time.monotonic()
        todo = [tp for tp in snap.topic_partitions if ranges[tp][0] < ranges[tp][1]]
        wave = max(1, spec.max_parallel_topic_partitions)
        with gc_paused():
            for w in range(0, len(todo), wave):
                for tp, msgs in read_topic_partitions(consumer, topic, {tp: ranges[tp] for tp in todo[w:w + wave]},
                                                      options.poll_timeout_s, options.stall_timeout_s):
                    tp_landings[tp].process(msgs)
                    scanned += len(msgs)
                    if time.monotonic() - last_report > 10:
                        last_report = time.monotonic()
                        progress(f"{partition.path}: scanned {scanned:,}/{total:,} records "
                                 f"({scanned / max(1e-9, last_report - t0):,.0f}/s), "
                                 f"landed {sum(tp_landing.stats.landed for tp_landing in tp_landings.values()):,}")
        for tp_landing in tp_landings.values():
            tp_landing.close()
        landing.writer.drain()
        high_now = snapshot(consumer, topic).high
    finally:
        landing.writer.shutdown()
        consumer.close()

    by_tp = sorted(tp_landings.items())
    files = [f for _, tp_landing in by_tp for f in tp_landing.data.files]
    quarantine_files = [f for _, tp_landing in by_tp for f in tp_landing.quarantine.files]
    landed = sum(tp_landing.stats.landed for _, tp_landing in by_tp)
    if sum(f.rows for f in files) != landed:  # internal invariant
        raise LakeError(f"{partition.path}: files hold {sum(f.rows for f in files)} rows, landed {landed}; "
                        "not publishing")
    seconds = round(time.monotonic() - t0, 2)
    kafka_offsets = {topic: {str(tp): [tp_landing.stats.first, tp_landing.stats.end] for tp, tp_landing in by_tp}}
    quarantined = dict(sorted(landing.quarantined.items()))
    quarantine = lake.publish_files(pipeline, stage.commit(
        "quarantine", sum(f.rows for f in quarantine_files), kafka_offsets=kafka_offsets, quarantined=quarantined),
        [f.key for f in quarantine_files], started["quarantine"])
    commit = lake.publish_files(pipeline, stage.commit(
        "raw", landed, kafka_offsets=kafka_offsets, quarantined=quarantined,
        stats={"records_scanned": scanned, "records_scanned_outside_interval": landing.outside, "seconds": seconds,
               "msgs_per_s": round(scanned / max(seconds, 1e-9)), "forced": options.force,
               "time_source": spec.time_source, "max_timestamp_lead_s": round(landing.max_lead_ms / 1000, 3),
               "accept_retention_loss": options.accept_retention_loss,  # the run's Param, recorded
               # accepted loss to retention: topic-partition -> [0, log start) deleted before this landing
               "retention_loss": {str(tp): [0, low] for tp, low in sorted(lost.items())},
               "retention_loss_offsets": sum(lost.values()),
               "late_rows": landing.late_rows if previous else 0,
               "late_partitions": dict(sorted(landing.late.late.items())),
               "quarantine_snapshot_id": quarantine.snapshot_id,
               "topic_partitions": {str(tp): tp_landing.stats.as_dict(high_now.get(tp, tp_landing.stats.end))
                                    for tp, tp_landing in by_tp}},
    ), [f.key for f in files], started["raw"])
    export_metrics(commit, stage.settings)
    progress(f"{partition.path}: landed {commit.rows:,} rows, quarantined {sum(landing.quarantined.values()):,} "
             f"{dict(landing.quarantined) or ''} from {scanned:,} records in {seconds}s")
    if landing.late.late:
        log.warning("late records for already published partitions %s: they will be re-landed", landing.late.late)
    return commit
