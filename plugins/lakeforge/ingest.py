"""Ingest: land one event-time partition of a Kafka topic into the lake as Parquet + manifest.

Partition semantics. A partition is the event-time interval ``[start, end)`` of an Airflow data
interval (or of the ``partition`` Param). A record belongs to it by its event time: the JSON field
``event_time_field`` (``ingest.time_source: field``, the default) or the Kafka record timestamp
(``time_source: kafka_timestamp``). For a run:

1. take the partition's lock in PostgreSQL (:mod:`lakeforge.locks`): a concurrent run for the
   same partition fails at once, naming the holder;
2. snapshot every topic-partition's high watermark: the end bound of this run, so a rerun over
   unchanged data reads the same offsets;
3. check completeness: every non-empty topic-partition must hold a record stamped at or after
   ``end + allowed_lateness`` (``force=True`` skips this; the DAG waits for it in a sensor);
4. find each topic-partition's start with ``offsets_for_times(start - max_timestamp_skew)`` (for
   ``kafka_timestamp``, ``start`` itself: Kafka returns the earliest offset stamped at or after
   it, so nothing earlier can belong). The hint is verified against the records read: a record
   whose Kafka timestamp precedes its event time by more than the skew would mean the hint may
   have skipped records of this partition, and the run fails instead of publishing a short
   partition;
5. read every record from the start to the snapshot in offset order, one topic-partition after
   another. A record whose event time falls in the interval lands in ``raw/``; one that cannot
   be parsed or violates the schema goes to ``quarantine/`` (assigned by its Kafka timestamp)
   with its raw bytes, coordinates and a snake_case reason; others belong to other partitions;
6. write both as streamed Parquet (zstd, sized row groups, a new file every ``rows_per_file``
   rows) under this run's prefix, then publish the manifest last (offset ranges, row counts,
   checksums, quarantine counts per reason, per-topic-partition volume and lag).

Late records. A record of an already published partition that reaches Kafka after that
partition's snapshot is *late*. It is never lost: any run that reads it (the run of the
partition covering its arrival) reports ``late_partitions`` (partition -> count), the DAG
re-lands those partitions (a triggered run with the ``partition`` Param), and the re-landed
manifest counts the rows that were not in the previous one (``stats.late_rows``). Re-landing
replaces the partition whole, so every record still appears in exactly one published partition.

Parsing. A typed msgspec decoder validates a record in one pass in C; only records it rejects go
through :func:`parse_record`, the plain-Python reference, which decides the quarantine reason (or
accepts what the fast path was too strict for, e.g. a timestamp with a space separator). So the
fast path changes speed, never outcomes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pyarrow as pa
from pydantic import BaseModel

from lakeforge.config import FieldSpec, Partition, PipelineConfig, Settings
from lakeforge.errors import ManifestError, PartitionIncompleteError, SourceUnavailableError, TimestampSkewError
from lakeforge.lake import FileEntry, Lake, Manifest, new_run_id

log = logging.getLogger(__name__)

_ARROW_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                "timestamp": pa.timestamp("us", tz="UTC")}
KAFKA_COLUMNS = [("kafka_topic", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
                 ("kafka_timestamp", pa.timestamp("ms", tz="UTC"))]
QUARANTINE_SCHEMA = pa.schema([("raw", pa.binary()), ("reason", pa.string()), ("detail", pa.string()),
                               *KAFKA_COLUMNS])
CONSUME_BATCH = 10_000  # messages per consume() call


def raw_schema(pipeline: PipelineConfig) -> pa.Schema:
    """Arrow schema of the raw layer: the event fields, then the Kafka coordinates."""
    return pa.schema([pa.field(f.name, _ARROW_TYPES[f.type], nullable=not f.required) for f in pipeline.fields]
                     + [pa.field(n, t, nullable=False) for n, t in KAFKA_COLUMNS])


class RecordRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _parse_time(value) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"not an ISO-8601 string: {value!r}")
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _check(spec: FieldSpec, value):
    """Validate one field value against its spec; return the Arrow-ready value."""
    if spec.type == "string":
        if not isinstance(value, str):
            raise RecordRejected("wrong_type", f"{spec.name} must be a string, got {type(value).__name__}")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate escape such as "\ud800"
            raise RecordRejected("invalid_utf8", f"{spec.name}: {exc}"[:200]) from None
        if spec.max_bytes and size > spec.max_bytes:
            raise RecordRejected("oversize", f"{spec.name} has {size} bytes > {spec.max_bytes}")
        return value
    if spec.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordRejected("wrong_type", f"{spec.name} must be an integer, got {value!r}"[:200])
        return value
    if spec.type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordRejected("wrong_type", f"{spec.name} must be a number, got {value!r}"[:200])
        return float(value)
    if spec.type == "bool":
        if not isinstance(value, bool):
            raise RecordRejected("wrong_type", f"{spec.name} must be a boolean, got {value!r}"[:200])
        return value
    try:
        return _parse_time(value)
    except ValueError as exc:
        raise RecordRejected("wrong_type", f"{spec.name}: {exc}"[:200]) from None


def parse_record(pipeline: PipelineConfig, value: bytes | None, max_record_bytes: int = 1 << 20) -> dict:
    """Decode and validate one Kafka value; raise :class:`RecordRejected` with a snake_case reason."""
    if value is None:
        raise RecordRejected("malformed_json", "empty (tombstone) record")
    if len(value) > max_record_bytes:
        raise RecordRejected("oversize", f"record has {len(value)} bytes > {max_record_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordRejected("invalid_utf8", str(exc)[:200]) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordRejected("malformed_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise RecordRejected("malformed_json", f"expected a JSON object, got {type(obj).__name__}")
    row = {}
    for spec in pipeline.fields:
        if obj.get(spec.name) is None:
            if spec.required:
                raise RecordRejected("missing_field", f"required field {spec.name!r} is missing")
            row[spec.name] = None
            continue
        row[spec.name] = _check(spec, obj[spec.name])
    return row


class FastParser:
    """msgspec decoder for the pipeline's schema; falls back to :func:`parse_record` on any doubt."""

    _PY = {"string": str, "int": int, "float": float, "bool": bool, "timestamp": datetime}

    def __init__(self, pipeline: PipelineConfig, max_record_bytes: int):
        import msgspec

        fields = [(f.name, self._PY[f.type]) if f.required else (f.name, self._PY[f.type] | None, None)
                  for f in pipeline.fields]
        self.pipeline, self.max_record_bytes = pipeline, max_record_bytes
        self.names = [f.name for f in pipeline.fields]
        self.decoder = msgspec.json.Decoder(msgspec.defstruct("Event", fields, kw_only=True))
        self.sized = [(f.name, f.max_bytes) for f in pipeline.fields if f.type == "string" and f.max_bytes]
        self.times = [f.name for f in pipeline.fields if f.type == "timestamp"]

    def __call__(self, value: bytes | None) -> dict:
        if value is None or len(value) > self.max_record_bytes:
            return parse_record(self.pipeline, value, self.max_record_bytes)
        try:
            ev = self.decoder.decode(value)
        except Exception:  # malformed, wrong type, missing, bad UTF-8: the reference decides why
            return parse_record(self.pipeline, value, self.max_record_bytes)
        row = {n: getattr(ev, n) for n in self.names}
        for name, limit in self.sized:
            v = row[name]
            if v is not None and len(v) * 4 > limit and len(v.encode("utf-8")) > limit:
                return parse_record(self.pipeline, value, self.max_record_bytes)
        for name in self.times:
            t = row[name]
            if t is not None:
                row[name] = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
        return row


class IngestConfig(BaseModel):
    pipeline: str  # pipeline name (pipelines/<name>.yaml) or path
    partition: str  # dt=YYYY-MM-DD[/hour=HH] or YYYY-MM-DD
    run_id: str | None = None  # Airflow run id (default: generated)
    force: bool = False  # land even if the topic has not passed end + allowed lateness
    poll_timeout_s: float = 1.0  # one consume()'s wait
    stall_timeout_s: float = 60.0  # fail when a topic-partition yields nothing for this long


class _PartWriter:
    """Streams column batches into Parquet files in the lake (zstd, sized row groups, rolled by rows).

    Rows are appended column-wise (a list per column) and converted to Arrow once per row group,
    which is several times faster than building dicts and ``Table.from_pylist``.
    """

    def __init__(self, lake: Lake, prefix: str, schema: pa.Schema, row_group_rows: int, rows_per_file: int):
        self.lake, self.prefix, self.schema = lake, prefix, schema
        self.row_group_rows, self.rows_per_file = row_group_rows, rows_per_file
        self.columns: dict[str, list] = {n: [] for n in schema.names}
        self.pending = 0
        self.files: list[FileEntry] = []
        self._writer = None
        self._key = ""
        self._file_rows = 0

    def add(self, row: dict) -> None:
        for name, col in self.columns.items():
            col.append(row[name])
        self.pending += 1
        if self.pending >= self.row_group_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.pending:
            return
        table = pa.Table.from_arrays([pa.array(self.columns[f.name], type=f.type) for f in self.schema],
                                     schema=self.schema)
        for col in self.columns.values():
            col.clear()
        n, self.pending = self.pending, 0
        if self._writer is None:
            self._key = f"{self.prefix}/part-{len(self.files):05d}.parquet"
            self._writer = pq.ParquetWriter(self.lake.arrow_path(self._key), self.schema, filesystem=self.lake.fs,
                                            compression="zstd")
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        self._file_rows += n
        if self._file_rows >= self.rows_per_file:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self.files.append(self.lake.describe_file(self._key, rows=self._file_rows))
        self._writer, self._file_rows = None, 0

    def close(self) -> list[FileEntry]:
        self.flush()
        self._close_file()
        return self.files

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files) + self._file_rows + self.pending


# --------------------------------------------------------------------------------------------
# Kafka access
# --------------------------------------------------------------------------------------------


def _consumer(settings: Settings, retries: int):
    """A librdkafka consumer for manual assignment (no group commits), checked to reach the broker."""
    from confluent_kafka import Consumer, KafkaException
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    bootstrap = settings.require("kafka_bootstrap")
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "lakeforge-ingest", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "enable.partition.eof": False, "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20,
        "queued.max.messages.kbytes": 65536,  # bounds librdkafka's prefetch buffer (memory)
        "socket.timeout.ms": 10_000, "client.id": "lakeforge-ingest",
    })
    try:
        for attempt in Retrying(stop=stop_after_attempt(retries), wait=wait_exponential(multiplier=0.5, max=8),
                                retry=retry_if_exception_type(KafkaException), reraise=True):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    log.warning("broker %s: attempt %d of %d", bootstrap, attempt.retry_state.attempt_number, retries)
                consumer.list_topics(timeout=5)
    except KafkaException as exc:
        consumer.close()
        raise SourceUnavailableError(
            f"Kafka broker {bootstrap} unreachable after {retries} attempts ({exc}); check LAKEFORGE_KAFKA_BOOTSTRAP "
            "or `lakeforge status`. Nothing was written.") from None
    return consumer


@dataclass
class TopicSnapshot:
    """Low/high watermarks of every topic-partition of a topic at one moment."""

    topic: str
    low: dict[int, int]
    high: dict[int, int]

    @property
    def partitions(self) -> list[int]:
        return sorted(self.high)


def snapshot(consumer, topic: str) -> TopicSnapshot:
    md = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        raise SourceUnavailableError(f"topic {topic!r} does not exist: run `lakeforge produce` (or your producer) first")
    from confluent_kafka import TopicPartition

    low, high = {}, {}
    for p in sorted(md.partitions):
        low[p], high[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
    return TopicSnapshot(topic, low, high)


def offsets_at(consumer, topic: str, partitions: list[int], ts_ms: int) -> dict[int, int]:
    """Earliest offset stamped at or after ``ts_ms`` per topic-partition (-1: none yet)."""
    from confluent_kafka import TopicPartition

    found = consumer.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in partitions], timeout=10)
    return {tp.partition: tp.offset for tp in found}


def completeness(consumer, snap: TopicSnapshot, partition: Partition, lateness_s: int) -> dict[int, bool]:
    """Whether each topic-partition has passed ``end + lateness`` (an empty one is idle, so complete)."""
    mark = int((partition.end.timestamp() + lateness_s) * 1000)
    at = offsets_at(consumer, snap.topic, snap.partitions, mark)
    return {p: snap.high[p] == snap.low[p] or 0 <= at[p] < snap.high[p] for p in snap.partitions}


def check_complete(pipeline: PipelineConfig, partition: Partition, settings: Settings | None = None) -> tuple[bool, str]:
    """(complete, explanation) for the DAG's completeness sensor."""
    settings = settings or Settings.load()
    consumer = _consumer(settings, pipeline.ingest.connect_retries)
    try:
        snap = snapshot(consumer, pipeline.topic)
        done = completeness(consumer, snap, partition, pipeline.ingest.allowed_lateness_s)
    finally:
        consumer.close()
    return explain_completeness(done, pipeline, partition)


def explain_completeness(done: dict[int, bool], pipeline: PipelineConfig, partition: Partition) -> tuple[bool, str]:
    """(complete, why) from :func:`completeness`'s answer, in words for logs and errors."""
    waiting = [p for p, ok in done.items() if not ok]
    mark = partition.end + timedelta(seconds=pipeline.ingest.allowed_lateness_s)
    if waiting:
        return False, (f"{pipeline.topic} partitions {waiting} hold no record stamped at or after "
                       f"{mark:%Y-%m-%d %H:%M} UTC (end of {partition.path} + {pipeline.ingest.allowed_lateness_s}s "
                       "allowed lateness)")
    return True, f"every partition of {pipeline.topic} has passed {mark:%Y-%m-%d %H:%M} UTC"


def _read_range(consumer, topic: str, p: int, start: int, end: int, poll_timeout_s: float,
                stall_timeout_s: float) -> Iterator[list]:
    """Batches of messages of one topic-partition in offset order, from start (inclusive) to end (exclusive)."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    if start >= end:
        return
    consumer.assign([TopicPartition(topic, p, start)])
    try:
        last_progress, nxt = time.monotonic(), start
        while nxt < end:
            msgs = consumer.consume(num_messages=CONSUME_BATCH, timeout=poll_timeout_s)
            batch = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                if m.offset() >= end:
                    break
                batch.append(m)
            if batch:
                nxt = batch[-1].offset() + 1
                last_progress = time.monotonic()
                yield batch
            elif not msgs:
                pos = consumer.position([TopicPartition(topic, p)])[0].offset
                if pos >= end:  # offsets up to the snapshot were control records or compacted away
                    return
                if time.monotonic() - last_progress > stall_timeout_s:
                    raise TimeoutError(f"no progress reading {topic}[{p}] at offset {nxt} (target {end}) "
                                       f"for {stall_timeout_s:.0f}s")
            if msgs and msgs[-1].offset() >= end - 1 and not batch:
                return
    finally:
        consumer.unassign()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class _TpStats:
    first: int
    end: int
    landed: int = 0
    quarantined: int = 0
    bytes: int = 0
    max_ts_ms: int = -1

    def as_dict(self, high_now: int) -> dict[str, int]:
        return {"first": self.first, "end": self.end, "landed": self.landed, "quarantined": self.quarantined,
                "bytes": self.bytes, "offset_lag": max(0, high_now - self.end), "max_timestamp_ms": self.max_ts_ms}


@dataclass
class _LateTracker:
    """Records of other, already published partitions found beyond those partitions' snapshots."""

    lake: Lake
    pipeline: PipelineConfig
    manifests: dict[str, Manifest | None] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)

    def see(self, t: datetime, p: int, offset: int) -> None:
        part = Partition.parse(t.strftime("%Y-%m-%dT%H") if self.pipeline.partition == "hourly"
                               else t.strftime("%Y-%m-%d"), self.pipeline.partition)
        if part.path not in self.manifests:
            try:
                self.manifests[part.path] = self.lake.read_manifest("raw", self.pipeline.name, part)
            except ManifestError:  # not landed yet: it will read this record itself
                self.manifests[part.path] = None
        m = self.manifests[part.path]
        rng = m and m.kafka_offsets.get(self.pipeline.topic, {}).get(str(p))
        if rng and offset >= rng[1]:
            self.late[part.path] = self.late.get(part.path, 0) + 1


def run(config: IngestConfig, settings: Settings | None = None,
        progress: Callable[[str], None] | None = None) -> Manifest:
    """Land one partition; return the published manifest."""
    from lakeforge.locks import partition_lock

    settings = settings or Settings.load()
    pipeline = PipelineConfig.load(config.pipeline)
    partition = Partition.parse(config.partition, pipeline.partition)
    lake = Lake(settings)
    run_id = config.run_id or new_run_id()
    with partition_lock(settings, lake.partition_key("raw", pipeline.name, partition), run_id):
        return _land(config, settings, pipeline, partition, lake, run_id, progress or (lambda s: log.info("%s", s)))


def _land(config: IngestConfig, settings: Settings, pipeline: PipelineConfig, partition: Partition, lake: Lake,
          run_id: str, progress: Callable[[str], None]) -> Manifest:
    spec = pipeline.ingest
    t0 = time.monotonic()
    start_ms, end_ms = int(partition.start.timestamp() * 1000), int(partition.end.timestamp() * 1000)
    by_field = spec.time_source == "field"
    skew_ms = spec.max_timestamp_skew_s * 1000
    try:
        previous = lake.read_manifest("raw", pipeline.name, partition)
    except ManifestError:  # first landing of this partition
        previous = None
    prev_end = (previous.kafka_offsets.get(pipeline.topic, {}) if previous else {})

    consumer = _consumer(settings, spec.connect_retries)
    try:
        snap = snapshot(consumer, pipeline.topic)
        if not config.force:
            done = completeness(consumer, snap, partition, spec.allowed_lateness_s)
            if not all(done.values()):
                _, why = explain_completeness(done, pipeline, partition)
                raise PartitionIncompleteError(f"{partition.path} is not complete: {why}. Wait, or land anyway with "
                                               "force (the DAG's `force_complete` Param).")
        hints = offsets_at(consumer, pipeline.topic, snap.partitions, start_ms - (skew_ms if by_field else 0))
        parse = FastParser(pipeline, spec.max_record_bytes)
        schema = raw_schema(pipeline)
        data = _PartWriter(lake, lake.run_key("raw", pipeline.name, partition, run_id), schema,
                           spec.row_group_rows, spec.rows_per_file)
        quarantine = _PartWriter(lake, lake.run_key("quarantine", pipeline.name, partition, run_id),
                                 QUARANTINE_SCHEMA, spec.row_group_rows, spec.rows_per_file)
        late = _LateTracker(lake, pipeline)
        quarantined: dict[str, int] = {}
        per_tp: dict[int, _TpStats] = {}
        outside = late_rows = 0
        max_skew_ms = 0
        tfield, topic = pipeline.event_time_field, pipeline.topic
        total = sum(snap.high[p] - max(snap.low[p], hints[p] if hints[p] >= 0 else snap.high[p]) for p in snap.partitions)
        scanned, last_report = 0, time.monotonic()
        for p in snap.partitions:
            first = max(hints[p] if hints[p] >= 0 else snap.high[p], snap.low[p])
            st = per_tp[p] = _TpStats(first=first, end=snap.high[p])
            seen_before = prev_end.get(str(p), [0, 0])[1] if previous else None
            for batch in _read_range(consumer, topic, p, first, snap.high[p], config.poll_timeout_s,
                                     config.stall_timeout_s):
                for m in batch:
                    value, offset = m.value(), m.offset()
                    ts = m.timestamp()[1]
                    try:
                        row = parse(value)
                    except RecordRejected as rej:
                        if start_ms <= ts < end_ms:  # unparseable: assigned by its Kafka timestamp
                            quarantined[rej.reason] = quarantined.get(rej.reason, 0) + 1
                            st.quarantined += 1
                            quarantine.add({"raw": value or b"", "reason": rej.reason, "detail": rej.detail,
                                            "kafka_topic": topic, "kafka_partition": p, "kafka_offset": offset,
                                            "kafka_timestamp": datetime.fromtimestamp(ts / 1000, tz=timezone.utc)})
                        continue
                    t = row[tfield] if by_field else datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
                    if by_field:
                        lead = int(t.timestamp() * 1000) - ts  # how far the Kafka stamp precedes the event
                        if lead > max_skew_ms:
                            max_skew_ms = lead
                    if partition.start <= t < partition.end:
                        row.update(kafka_topic=topic, kafka_partition=p, kafka_offset=offset,
                                   kafka_timestamp=datetime.fromtimestamp(ts / 1000, tz=timezone.utc))
                        data.add(row)
                        st.landed += 1
                        st.bytes += len(value)
                        st.max_ts_ms = max(st.max_ts_ms, ts)
                        if seen_before is not None and offset >= seen_before:
                            late_rows += 1
                    else:
                        outside += 1
                        if t < partition.start:
                            late.see(t, p, offset)
                scanned += len(batch)
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    progress(f"{partition.path}: scanned {scanned:,}/{total:,} records "
                             f"({scanned / max(1e-9, last_report - t0):,.0f}/s), landed {data.rows:,}")
        if max_skew_ms > skew_ms:
            raise TimestampSkewError(
                f"a record's Kafka timestamp precedes its {tfield} by {max_skew_ms / 1000:.0f}s > "
                f"max_timestamp_skew_s={spec.max_timestamp_skew_s}: records of {partition.path} may sit before the "
                "start offset. Raise ingest.max_timestamp_skew_s in the pipeline YAML (nothing was published).")
        files = data.close()
        qfiles = quarantine.close()
        high_now = snapshot(consumer, topic).high
    finally:
        consumer.close()

    seconds = round(time.monotonic() - t0, 2)
    manifest = Manifest(
        layer="raw", pipeline=pipeline.name, partition=partition.path, interval=(partition.start, partition.end),
        schema_version=pipeline.schema_version, run_id=run_id, files=files, rows=sum(f.rows for f in files),
        kafka_offsets={topic: {str(p): [s.first, s.end] for p, s in per_tp.items()}},
        quarantined=quarantined, quarantine_files=qfiles,
        stats={"records_scanned": scanned, "records_scanned_outside_interval": outside, "seconds": seconds,
               "msgs_per_s": round(scanned / max(seconds, 1e-9)), "forced": config.force,
               "time_source": spec.time_source, "max_timestamp_lead_s": round(max_skew_ms / 1000, 3),
               "late_rows": late_rows if previous else 0, "late_partitions": dict(sorted(late.late.items())),
               "topic_partitions": {str(p): s.as_dict(high_now.get(p, s.end)) for p, s in per_tp.items()}},
    )
    lake.publish(manifest)
    export_metrics(manifest, settings)
    progress(f"{partition.path}: landed {manifest.rows:,} rows, quarantined {sum(quarantined.values()):,} "
             f"{dict(quarantined) or ''} from {scanned:,} records in {seconds}s")
    if late.late:
        log.warning("late records for already published partitions %s: they will be re-landed", late.late)
    return manifest


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def metrics_of(manifest: Manifest) -> dict[str, Any]:
    """Lag and volume per topic-partition plus totals: the asset event metadata of a landing."""
    tps = manifest.stats.get("topic_partitions", {})
    return {
        "partition": manifest.partition, "rows": manifest.rows, "run_id": manifest.run_id,
        "quarantined": manifest.quarantined, "quarantined_total": sum(manifest.quarantined.values()),
        "late_rows": manifest.stats.get("late_rows", 0), "late_partitions": manifest.stats.get("late_partitions", {}),
        "msgs_per_s": manifest.stats.get("msgs_per_s"), "seconds": manifest.stats.get("seconds"),
        "files": [f.path for f in manifest.files],
        "topic_partitions": {p: {k: v[k] for k in ("landed", "quarantined", "bytes", "offset_lag", "first", "end")}
                             for p, v in tps.items()},
    }


def export_metrics(manifest: Manifest, settings: Settings) -> str | None:
    """Write the landing's metrics in Prometheus text format.

    To ``$LAKEFORGE_HOME/metrics/ingest_<pipeline>.prom`` (node-exporter textfile collector
    format, replaced atomically) and, when ``LAKEFORGE_PUSHGATEWAY_URL`` is set, to that Pushgateway.
    Metrics never fail a landing that is already published: errors are logged.
    """
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

    reg = CollectorRegistry()
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
    topic = next(iter(manifest.kafka_offsets), "")
    for p, s in manifest.stats.get("topic_partitions", {}).items():
        labels = dict(pipeline=manifest.pipeline, topic=topic, partition=p)
        records.labels(**labels, outcome="landed").set(s["landed"])
        records.labels(**labels, outcome="quarantined").set(s["quarantined"])
        nbytes.labels(**labels).set(s["bytes"])
        lag.labels(**labels).set(s["offset_lag"])
        end.labels(**labels).set(s["end"])
        if s["max_timestamp_ms"] >= 0:
            stamp.labels(**labels).set(manifest.created_at.timestamp() - s["max_timestamp_ms"] / 1000)
    dur.labels(pipeline=manifest.pipeline).set(manifest.stats.get("seconds", 0))
    late.labels(pipeline=manifest.pipeline).set(manifest.stats.get("late_rows", 0))
    path = settings.home / "metrics" / f"ingest_{manifest.pipeline}.prom"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), reg)
        if os.environ.get("LAKEFORGE_PUSHGATEWAY_URL"):
            push_to_gateway(os.environ["LAKEFORGE_PUSHGATEWAY_URL"], job=f"lakeforge_ingest_{manifest.pipeline}",
                            registry=reg)
    except Exception as exc:  # the partition is published; metrics are best effort
        log.warning("could not export ingest metrics: %s", exc)
        return None
    return str(path)
