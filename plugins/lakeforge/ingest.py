"""Ingest: land one event-time partition of a Kafka topic into the lake as Parquet + manifest.

For a partition ``[start, end)``:

1. snapshot the high watermark of every topic-partition (the end bound of this run);
2. find each topic-partition's first offset with a timestamp >= ``start`` (``offsets_for_times``;
   the producer sets CreateTime to the event time) and read up to the snapshot;
3. parse each record against the pipeline's schema; a record whose event time falls in the
   interval lands in ``raw/``, a record that cannot be parsed or violates the schema goes to
   ``quarantine/`` with its raw bytes, coordinates and a reason;
4. write both as streamed Parquet batches (bounded memory) under this run's prefix, then publish
   the manifest last (offset ranges, row counts, checksums, quarantine counts).

Topic-partitions are read one after another in offset order, so a rerun over the same offsets
writes the same rows in the same order.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Iterator

import pyarrow as pa
from pydantic import BaseModel

from lakeforge.config import FieldSpec, Partition, PipelineConfig, Settings
from lakeforge.lake import FileEntry, Lake, Manifest, new_run_id

log = logging.getLogger(__name__)

_ARROW_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                "timestamp": pa.timestamp("us", tz="UTC")}
KAFKA_COLUMNS = [("kafka_topic", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
                 ("kafka_timestamp", pa.timestamp("ms", tz="UTC"))]
QUARANTINE_SCHEMA = pa.schema([("raw", pa.binary()), ("reason", pa.string()), ("detail", pa.string()),
                               *KAFKA_COLUMNS])
BATCH_ROWS = 10_000


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
        if spec.max_bytes and len(value.encode("utf-8")) > spec.max_bytes:
            raise RecordRejected("oversize", f"{spec.name} has {len(value.encode())} bytes > {spec.max_bytes}")
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


class IngestConfig(BaseModel):
    pipeline: str  # pipeline name (pipelines/<name>.yaml)
    partition: str  # dt=YYYY-MM-DD[/hour=HH] or YYYY-MM-DD
    run_id: str | None = None  # Airflow run id (default: generated)
    poll_timeout_ms: int = 1000  # one poll's wait


class _PartWriter:
    """Streams Arrow batches into one Parquet file in the lake (zstd, sized row groups)."""

    def __init__(self, lake: Lake, key: str, schema: pa.Schema):
        self.lake, self.key, self.schema = lake, key, schema
        self.rows: list[dict] = []
        self.count = 0
        self._writer = None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.lake.arrow_path(self.key), self.schema, filesystem=self.lake.fs,
                                            compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), row_group_size=BATCH_ROWS)
        self.count += len(self.rows)
        self.rows = []

    def close(self) -> FileEntry | None:
        self.flush()
        if self._writer is None:
            return None
        self._writer.close()
        return self.lake.describe_file(self.key, rows=self.count)


def _read_range(consumer, tp, start: int, end: int, poll_timeout_ms: int) -> Iterator:
    """Records of one topic-partition in offset order, from start (inclusive) to end (exclusive)."""
    consumer.assign([tp])
    consumer.seek(tp, start)
    idle = 0
    while consumer.position(tp) < end:
        batch = consumer.poll(timeout_ms=poll_timeout_ms, max_records=5000).get(tp, [])
        if not batch:
            idle += 1
            if idle > 30:
                raise TimeoutError(f"no progress reading {tp} at offset {consumer.position(tp)} (target {end})")
            continue
        idle = 0
        for rec in batch:
            if rec.offset >= end:
                return
            yield rec


def run(config: IngestConfig, settings: Settings | None = None) -> Manifest:
    """Land one partition; return the published manifest."""
    from kafka import KafkaConsumer, TopicPartition

    settings = settings or Settings.load()
    pipeline = PipelineConfig.load(config.pipeline)
    partition = Partition.parse(config.partition, pipeline.partition)
    lake = Lake(settings)
    run_id = config.run_id or new_run_id()
    t0 = time.monotonic()
    start_ms, end_ms = int(partition.start.timestamp() * 1000), int(partition.end.timestamp() * 1000)

    consumer = KafkaConsumer(bootstrap_servers=settings.require("kafka_bootstrap"), group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             fetch_max_bytes=32 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        parts = consumer.partitions_for_topic(pipeline.topic)
        if not parts:
            raise RuntimeError(f"topic {pipeline.topic!r} does not exist on {settings.kafka_bootstrap}: "
                               "run `lakeforge produce` (or your producer) first")
        tps = [TopicPartition(pipeline.topic, p) for p in sorted(parts)]
        high = consumer.end_offsets(tps)  # the snapshot that bounds this run
        begin = consumer.beginning_offsets(tps)
        hints = consumer.offsets_for_times({tp: start_ms for tp in tps})
        schema = raw_schema(pipeline)
        run_key = lake.run_key("raw", pipeline.name, partition, run_id)
        q_key = lake.run_key("quarantine", pipeline.name, partition, run_id)
        data = _PartWriter(lake, f"{run_key}/part-00000.parquet", schema)
        quarantine = _PartWriter(lake, f"{q_key}/part-00000.parquet", QUARANTINE_SCHEMA)
        quarantined: dict[str, int] = {}
        offsets: dict[str, list[int]] = {}
        out_of_interval = 0
        for tp in tps:
            first = hints[tp].offset if hints.get(tp) else high[tp]
            first = max(first, begin[tp])
            offsets[str(tp.partition)] = [first, high[tp]]
            for rec in _read_range(consumer, tp, first, high[tp], config.poll_timeout_ms):
                coords = {"kafka_topic": tp.topic, "kafka_partition": tp.partition, "kafka_offset": rec.offset,
                          "kafka_timestamp": datetime.fromtimestamp(rec.timestamp / 1000, tz=timezone.utc)}
                try:
                    row = parse_record(pipeline, rec.value)
                    t = row[pipeline.event_time_field]
                except RecordRejected as rej:
                    # unparseable: assign by the Kafka timestamp
                    if start_ms <= rec.timestamp < end_ms:
                        quarantined[rej.reason] = quarantined.get(rej.reason, 0) + 1
                        quarantine.add({"raw": rec.value or b"", "reason": rej.reason, "detail": rej.detail, **coords})
                    continue
                if partition.start <= t < partition.end:
                    data.add({**row, **coords})
                else:
                    out_of_interval += 1
        files = [f for f in [data.close()] if f]
        qfiles = [f for f in [quarantine.close()] if f]
    finally:
        consumer.close()

    manifest = Manifest(
        layer="raw", pipeline=pipeline.name, partition=partition.path, interval=(partition.start, partition.end),
        schema_version=pipeline.schema_version, run_id=run_id, files=files, rows=sum(f.rows for f in files),
        kafka_offsets={pipeline.topic: offsets}, quarantined=quarantined, quarantine_files=qfiles,
        stats={"records_scanned_outside_interval": out_of_interval, "seconds": round(time.monotonic() - t0, 2)},
    )
    lake.publish(manifest)
    return manifest
