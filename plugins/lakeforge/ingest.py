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
5. read every record from the start to the snapshot, all topic-partitions at once (librdkafka
   fetches them in parallel), each in offset order. A record whose event time falls in the interval
   lands in ``raw/``; one that cannot be parsed or violates the schema goes to ``quarantine/``
   (assigned by its Kafka timestamp) with its raw bytes, coordinates and a snake_case reason;
   others belong to other partitions;
6. stream both as Parquet (zstd, row groups cut at ``row_group_rows`` rows or ``row_group_bytes``
   value bytes, files at ``rows_per_file`` rows or ``file_bytes`` bytes, one file sequence per
   topic-partition, so the same offsets always make the same bytes), encoded and uploaded by a
   background thread while the main thread consumes, with sha256 and size computed on the way;
   then publish the manifest last (offset ranges, row counts, checksums, quarantine counts per
   reason, per-topic-partition volume and lag).

Memory is bounded by the batch, row-group and file sizes, not by the partition: librdkafka's
prefetch buffer per topic-partition, one pending row group and one open file per topic-partition
and stream, and at most two row groups waiting for the writer.

Late records. A record of an already published partition that reaches Kafka after that
partition's snapshot is *late*. It is never lost: any run that reads it (the run of the
partition covering its arrival) reports ``late_partitions`` (partition -> count), the DAG
re-lands those partitions (a triggered run with the ``partition`` Param), and the re-landed
manifest counts the rows that were not in the previous one (``stats.late_rows``). Re-landing
replaces the partition whole, so every record still appears in exactly one published partition.

Parsing. A typed msgspec decoder validates a record in one pass in C; only records it rejects go
through :func:`parse_record`, the plain-Python reference, which decides the quarantine reason (or
accepts what the fast path was too strict for). Routing, the skew check and the statistics are
computed on Arrow columns of each batch. So the fast path changes speed, never outcomes.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import operator
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Callable, Iterator

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from lakeforge.config import FieldSpec, IngestSpec, Partition, PipelineConfig, Settings
from lakeforge.errors import ManifestError, PartitionIncompleteError, SourceUnavailableError, TimestampSkewError
from lakeforge.lake import FileEntry, Lake, Manifest, new_run_id, path_safe

log = logging.getLogger(__name__)

_ARROW_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                "timestamp": pa.timestamp("us", tz="UTC")}
KAFKA_COLUMNS = [("kafka_topic", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
                 ("kafka_timestamp", pa.timestamp("ms", tz="UTC"))]
QUARANTINE_SCHEMA = pa.schema([("raw", pa.binary()), ("reason", pa.string()), ("detail", pa.string()),
                               *KAFKA_COLUMNS])
CONSUME_BATCH = 10_000  # messages per consume() call
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def raw_schema(pipeline: PipelineConfig) -> pa.Schema:
    """Arrow schema of the raw layer: the event fields, then the Kafka coordinates."""
    return pa.schema([pa.field(f.name, _ARROW_TYPES[f.type], nullable=not f.required) for f in pipeline.fields]
                     + [pa.field(n, t, nullable=False) for n, t in KAFKA_COLUMNS])


class RecordRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail

    def detached(self) -> "RecordRejected":
        """This rejection without its traceback and context, to keep in a list: the traceback's frames
        hold the batch (and the list itself), a cycle that only a full garbage collection frees."""
        self.__traceback__ = self.__context__ = None
        return self


def _parse_time(value) -> datetime:
    """An ISO-8601 string as an aware UTC datetime (a naive one is taken as UTC).

    RFC 3339 strings are parsed by msgspec, as the fast path parses them (same rounding of digits
    beyond microseconds, same ``z``), other ISO-8601 forms by ``datetime.fromisoformat``.
    """
    import msgspec

    if not isinstance(value, str):
        raise ValueError(f"not an ISO-8601 string: {value!r}")
    try:
        t = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        t = datetime.fromisoformat(value)
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
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise RecordRejected("wrong_type", f"{spec.name} does not fit in 64 bits: {value}"[:200])
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


@dataclass
class ParsedBatch:
    """A batch of Kafka values after parsing: the accepted rows as Arrow columns, the rejected ones."""

    index: list[int]  # positions (in the batch) of the accepted values, ascending
    table: pa.Table  # the accepted values' event fields, one row per entry of ``index``
    rejected: list[tuple[int, RecordRejected]]  # (position, why), ascending
    sizes: pa.Array  # byte size of each accepted value


class BatchParser:
    """Parses a batch of values into Arrow columns: a typed msgspec decoder validates each value in C;
    values it rejects go through :func:`parse_record`, the plain-Python reference, which gives the
    quarantine reason (or accepts what the fast path was too strict for, e.g. ``2026-11-20T10:00Z``).
    String size limits are checked on the Arrow columns. So the fast path changes speed, never outcomes
    (``tests/unit/test_ingest.py`` checks both agree on every kind of bad input).

    Hand-written rather than ``pyarrow.json``: Arrow's reader parses a whole block or fails it, and at
    realistic fault rates every block holds a bad record, so it would always fall back to this loop.
    """

    def __init__(self, pipeline: PipelineConfig, max_record_bytes: int):
        import msgspec

        self.pipeline, self.max_record_bytes = pipeline, max_record_bytes
        # int64 bounds, so an integer Arrow cannot hold is rejected like any wrong type
        i64 = Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]
        py = {"string": str, "int": i64, "float": float, "bool": bool, "timestamp": datetime}
        fields = [(f.name, py[f.type]) if f.required else (f.name, py[f.type] | None, None) for f in pipeline.fields]
        # gc=False: the fields are strings, numbers and datetimes, so no cycle; untracked structs cost the
        # collector nothing (a million tracked ones made its passes a tenth of the landing's CPU)
        self.struct = msgspec.defstruct("Event", fields, kw_only=True, gc=False)
        self.decode = msgspec.json.Decoder(self.struct).decode
        self.fields = [(f.name, _ARROW_TYPES[f.type]) for f in pipeline.fields]
        self.sized = [(f.name, f.max_bytes) for f in pipeline.fields if f.type == "string" and f.max_bytes]

    def parse(self, values: list[bytes | None]) -> ParsedBatch:
        import pyarrow.compute as pc

        rows: list = []
        index: list[int] = []
        rejected: list[tuple[int, RecordRejected]] = []
        n = len(values)
        # The decoder runs over the batch in C (list.extend over map): Python code runs only at a
        # value the decoder refuses, where extend stops with the rows before it already appended.
        it = iter(values)
        pos = 0
        while pos < n:
            before = len(rows)
            try:
                rows.extend(map(self.decode, it))
                index.extend(range(pos, n))
                break
            except Exception:  # malformed, wrong type, missing, bad UTF-8, a tombstone: the reference decides
                ok = len(rows) - before
                index.extend(range(pos, pos + ok))
                bad = pos + ok
                pos = bad + 1
                self._reference(values, bad, rows, index, rejected)
        table = pa.Table.from_arrays(
            [pa.array(col, type=t) for col, (_, t) in zip(self._columns(rows), self.fields)],
            names=[name for name, _ in self.fields])
        # limits the decoder does not check: the record size and the strings' byte sizes
        lens = pa.array([len(values[i]) for i in index], pa.int64()) if index else pa.array([], pa.int64())
        too_big = pc.greater(lens, self.max_record_bytes)
        for name, max_bytes in self.sized:
            too_big = pc.or_(too_big, pc.fill_null(pc.greater(pc.binary_length(table[name]), max_bytes), False))
        if index and pc.any(too_big).as_py():
            for k in pc.indices_nonzero(too_big).to_pylist():
                try:
                    parse_record(self.pipeline, values[index[k]], self.max_record_bytes)
                except RecordRejected as rej:
                    rejected.append((index[k], rej.detached()))
            keep = pc.invert(too_big)
            table = table.filter(keep)
            lens = lens.filter(keep)
            index = [i for i, k in zip(index, keep.to_pylist()) if k]
            rejected.sort(key=lambda r: r[0])
        return ParsedBatch(index=index, table=table, rejected=rejected, sizes=lens)

    def _reference(self, values, i: int, rows: list, index: list[int], rejected: list) -> None:
        """Parse value ``i`` with the reference parser: accept it (as the decoder's struct) or reject it."""
        try:
            row = parse_record(self.pipeline, values[i], self.max_record_bytes)
        except RecordRejected as rej:
            rejected.append((i, rej.detached()))
            return
        rows.append(self.struct(**row))
        index.append(i)

    def _columns(self, rows: list) -> list:
        """Column lists of the rows' fields."""
        return [list(map(operator.attrgetter(name), rows)) for name, _ in self.fields]


class IngestConfig(BaseModel):
    pipeline: str  # pipeline name (pipelines/<name>.yaml) or path
    partition: str  # dt=YYYY-MM-DD[/hour=HH] or YYYY-MM-DD
    run_id: str | None = None  # Airflow run id (default: generated)
    force: bool = False  # land even if the topic has not passed end + allowed lateness
    poll_timeout_s: float = 1.0  # one consume()'s wait
    stall_timeout_s: float = 60.0  # fail when a topic-partition yields nothing for this long


class _Queue:
    """A one-thread executor with at most ``max_pending`` tasks waiting: submitting more waits for the
    oldest, and a failed task re-raises in the submitter at the next submit or at :meth:`drain`."""

    def __init__(self, name: str, max_pending: int):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.pending: deque = deque()
        self.max_pending = max_pending

    def submit(self, fn, *args) -> None:
        while len(self.pending) >= self.max_pending:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(fn, *args))

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _BackgroundWriter:
    """Two threads beside the consuming one (pyarrow releases the GIL): one encodes and compresses
    row groups, the other uploads finished files, so compression goes on while the S3 server takes
    a file (uploading in the encoding thread left it waiting for the server about a third of the
    time). At most ``max_pending`` row groups and ``max_uploads`` files wait, which bounds memory;
    a failure re-raises in the main thread at the next submit or at :meth:`drain`."""

    def __init__(self, max_pending: int = 2, max_uploads: int = 2):
        self.encoding = _Queue("lakeforge-parquet", max_pending)
        self.uploads = _Queue("lakeforge-upload", max_uploads)

    def submit(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the encoding thread (from the main thread)."""
        self.encoding.submit(fn, *args)

    def upload(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the upload thread (from the encoding thread)."""
        self.uploads.submit(fn, *args)

    def drain(self) -> None:
        self.encoding.drain()
        self.uploads.drain()

    def shutdown(self) -> None:
        self.encoding.shutdown()
        self.uploads.shutdown()


class _FileStream:
    """Rows of one layer and one topic-partition, streamed into Parquet files in the lake.

    A row group closes at ``row_group_rows`` rows or at the row that brings its value bytes to
    ``row_group_bytes``, whichever comes first; a file closes after the row group that brings it to
    ``rows_per_file`` rows or ``file_bytes`` bytes. The cuts depend on the rows alone, not on how
    they arrived, so a rerun over the same offsets writes the same bytes. Files are named
    ``part-<topic-partition>-<n>.parquet``.

    A file is encoded into memory and uploaded whole when it closes, its sha256 computed on the way:
    the writer thread then runs C++ only (Parquet, zstd, hashlib and the S3 upload release the GIL).
    A Python file object as the Parquet sink made every page write wait for the GIL, which the
    consuming thread holds: the writer was 1.5x slower that way.
    """

    def __init__(self, lake: Lake, prefix: str, tp: int, schema: pa.Schema, spec: "IngestSpec",
                 writer: _BackgroundWriter, plain: set[str]):
        self.lake, self.prefix, self.tp, self.schema, self.writer = lake, prefix, tp, schema, writer
        self.row_group_rows = min(spec.row_group_rows, spec.rows_per_file)
        self.row_group_bytes = spec.row_group_bytes
        self.rows_per_file = spec.rows_per_file
        self.file_bytes = spec.file_bytes
        # high-cardinality columns (ids, texts, raw bytes): no dictionary attempt, no min/max statistics
        self.options = {"compression": "zstd",
                        "use_dictionary": [n for n in schema.names if n not in plain],
                        "write_statistics": [n for n in schema.names if n not in plain]}
        self.pending: list[pa.Table] = []
        self.pending_sizes: list[np.ndarray] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        self.files: list[FileEntry] = []
        self._buffer = None  # the open file, encoded into memory (writer thread)
        self._pq = None
        self._written = 0
        self.rows = 0

    def add(self, table: pa.Table, sizes: np.ndarray) -> None:
        """Append rows and their value sizes in bytes (what the row-group byte limit counts)."""
        if not table.num_rows:
            return
        self.pending.append(table)
        self.pending_sizes.append(sizes)
        self.pending_rows += table.num_rows
        self.pending_bytes += int(sizes.sum())
        self.rows += table.num_rows
        while n := self._cut():
            self._hand_off(n)

    def _cut(self) -> int:
        """Rows of the next complete row group, or 0 while it is not complete yet."""
        max_rows = self.row_group_rows
        if self.pending_rows < max_rows and self.pending_bytes < self.row_group_bytes:
            return 0
        cumulative = np.cumsum(np.concatenate(self.pending_sizes))
        by_bytes = int(np.searchsorted(cumulative, self.row_group_bytes)) + 1  # the row reaching the limit closes it
        return min(max_rows, by_bytes, self.pending_rows)

    def _hand_off(self, n: int) -> None:
        table = pa.concat_tables(self.pending)
        group, rest = table.slice(0, n), table.slice(n)
        sizes = np.concatenate(self.pending_sizes)[n:]
        self.pending = [rest] if rest.num_rows else []
        self.pending_sizes = [sizes] if len(sizes) else []
        self.pending_rows = rest.num_rows
        self.pending_bytes = int(sizes.sum())
        self.writer.submit(self._write, group)

    def close(self) -> None:
        """Hand off the remaining rows and the closing of the last file (call :meth:`_BackgroundWriter.drain`)."""
        if self.pending_rows:
            self._hand_off(self.pending_rows)
        self.writer.submit(self._close_file)

    # -- on the writer thread -------------------------------------------------------------------
    def _write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if self._pq is None:
            self._buffer = pa.BufferOutputStream()
            self._pq = pq.ParquetWriter(self._buffer, self.schema, **self.options)
            self._written = 0
        # one chunk per column (on this thread: it copies), so the pages do not depend on how the rows arrived
        self._pq.write_table(table.combine_chunks(), row_group_size=table.num_rows)
        self._written += table.num_rows
        if self._written >= self.rows_per_file or self._buffer.tell() >= self.file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._pq is None:
            return
        self._pq.close()
        data = self._buffer.getvalue()
        key = f"{self.prefix}/part-{self.tp:05d}-{len(self.files):05d}.parquet"
        self.files.append(FileEntry(path=self.lake.uri(key), size=data.size,
                                    sha256=hashlib.sha256(memoryview(data)).hexdigest(), rows=self._written))
        self._pq = self._buffer = None
        self.writer.upload(self._upload, key, data)

    # -- on the upload thread -------------------------------------------------------------------
    def _upload(self, key: str, data: pa.Buffer) -> None:
        with self.lake.fs.open_output_stream(self.lake.arrow_path(key)) as out:
            out.write(data)


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
        "fetch.max.bytes": 16 << 20, "max.partition.fetch.bytes": 8 << 20,
        "queued.max.messages.kbytes": 16384,  # bounds librdkafka's prefetch buffer per topic-partition (memory)
        # when that buffer is full, fetch again after 10 ms, not the default 1 s: processing is the
        # bottleneck, and with 1 s backoffs a full buffer idled the consumer (25k instead of 390k msgs/s)
        "fetch.queue.backoff.ms": 10,
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


def topic_size(settings: Settings, topic: str) -> int:
    """Records ever written to ``topic`` (its high watermarks summed); 0 while it does not exist."""
    consumer = _consumer(settings, 1)
    try:
        return sum(snapshot(consumer, topic).high.values())
    except SourceUnavailableError:  # no such topic yet
        return 0
    finally:
        consumer.close()


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


_error = operator.methodcaller("error")
_partition = operator.methodcaller("partition")


def read_partitions(consumer, topic: str, ranges: dict[int, tuple[int, int]], poll_timeout_s: float,
                    stall_timeout_s: float) -> Iterator[tuple[int, list]]:
    """``(topic-partition, messages)`` batches from ``[first, end)`` of every topic-partition of ``ranges``.

    All of them are assigned at once, so librdkafka fetches them in parallel (one after another was
    3x slower here); each batch is in offset order, batches of different topic-partitions interleave.
    A topic-partition that reached its end is paused, so nothing beyond the snapshot is fetched.
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    nxt = {p: first for p, (first, end) in ranges.items() if first < end}
    ends = {p: ranges[p][1] for p in nxt}
    if not nxt:
        return

    def done(p: int) -> None:
        del nxt[p]
        consumer.pause([TopicPartition(topic, p)])

    consumer.assign([TopicPartition(topic, p, first) for p, first in nxt.items()])
    try:
        last_progress = time.monotonic()
        while nxt:
            msgs = consumer.consume(num_messages=CONSUME_BATCH, timeout=poll_timeout_s)
            if any(map(_error, msgs)):  # rare: checked in C first, handled in Python
                for m in msgs:
                    err = m.error()
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                msgs = [m for m in msgs if m.error() is None]
            parts = list(map(_partition, msgs))
            if parts and parts.count(parts[0]) == len(parts):  # usual: librdkafka hands over one message set
                by_tp = {parts[0]: msgs}
            else:
                by_tp = {}
                for p, m in zip(parts, msgs):
                    by_tp.setdefault(p, []).append(m)
            for p, batch in by_tp.items():
                if p not in nxt:  # prefetched before the pause
                    continue
                end = ends[p]
                if batch[-1].offset() >= end:
                    batch = [m for m in batch if m.offset() < end]
                if batch:
                    nxt[p] = batch[-1].offset() + 1
                    last_progress = time.monotonic()
                    yield p, batch
                if nxt[p] >= end:
                    done(p)
            if not msgs:
                for p in list(nxt):
                    # the offsets left up to the snapshot were control records or compacted away
                    if consumer.position([TopicPartition(topic, p)])[0].offset >= ends[p]:
                        done(p)
                if nxt and time.monotonic() - last_progress > stall_timeout_s:
                    raise TimeoutError(f"no progress reading {topic} partitions {sorted(nxt)} at offsets {nxt} "
                                       f"(targets {ends}) for {stall_timeout_s:.0f}s")
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

    def see(self, p: int, times: pa.Array, offsets: pa.Array) -> None:
        """Count the records (event times, Kafka offsets in topic-partition ``p``) of earlier partitions."""
        import pyarrow.compute as pc

        if not len(times):
            return
        unit = "hour" if self.pipeline.partition == "hourly" else "day"
        buckets = pc.floor_temporal(times, unit=unit)
        for bucket in pc.unique(buckets).to_pylist():
            part = Partition.parse(bucket.strftime("%Y-%m-%dT%H" if unit == "hour" else "%Y-%m-%d"),
                                   self.pipeline.partition)
            if part.path not in self.manifests:
                try:
                    self.manifests[part.path] = self.lake.read_manifest("raw", self.pipeline.name, part)
                except ManifestError:  # not landed yet: it will read these records itself
                    self.manifests[part.path] = None
            m = self.manifests[part.path]
            rng = m and m.kafka_offsets.get(self.pipeline.topic, {}).get(str(p))
            if rng:
                here = pc.filter(offsets, pc.equal(buckets, pa.scalar(bucket, buckets.type)))
                n = pc.sum(pc.greater_equal(here, rng[1])).as_py() or 0
                if n:
                    self.late[part.path] = self.late.get(part.path, 0) + n


class _TpLanding:
    """Lands the messages of one topic-partition: routes each to the partition's rows, to quarantine or
    past it, and keeps that topic-partition's figures."""

    def __init__(self, run: "_Landing", p: int, first: int, end: int):
        self.run, self.p = run, p
        self.stats = _TpStats(first=first, end=end)
        self.seen_before = run.prev_end.get(str(p), [0, 0])[1] if run.previous else None
        self.data = _FileStream(run.lake, run.data_prefix, p, run.schema, run.spec, run.writer, run.plain)
        self.quarantine = _FileStream(run.lake, run.quarantine_prefix, p, QUARANTINE_SCHEMA, run.spec, run.writer,
                                      {"raw", "detail"})

    def process(self, msgs: list) -> None:
        import pyarrow.compute as pc

        r = self.run
        values = [m.value() for m in msgs]
        offsets = [m.offset() for m in msgs]
        stamps = [m.timestamp()[1] for m in msgs]
        batch = r.parser.parse(values)
        if batch.rejected:
            self._quarantine(batch.rejected, values, offsets, stamps)
        if not batch.index:
            return
        idx = pa.array(batch.index, pa.int64())
        ts = pc.take(pa.array(stamps, pa.int64()), idx)
        offs = pc.take(pa.array(offsets, pa.int64()), idx)
        kafka_ts = ts.cast(pa.timestamp("ms", tz="UTC"))
        if r.by_field:
            t = batch.table[r.tfield].combine_chunks()
            # how far each record's Kafka stamp precedes its event time: the start-offset hint is safe
            # only while this stays within max_timestamp_skew_s
            lead = pc.max(pc.subtract(pc.divide(t.cast(pa.int64()), 1000), ts)).as_py()
            if lead is not None and lead > r.max_lead_ms:
                r.max_lead_ms = lead
                if lead > r.skew_ms:
                    raise TimestampSkewError(
                        f"a record's Kafka timestamp precedes its {r.tfield} by {lead / 1000:.0f}s > "
                        f"max_timestamp_skew_s={r.spec.max_timestamp_skew_s}: records of {r.partition.path} may sit "
                        "before the start offset. Raise ingest.max_timestamp_skew_s in the pipeline YAML "
                        "(nothing was published).")
        else:
            t = kafka_ts
        inside = pc.and_(pc.greater_equal(t, r.start_scalar(t.type)), pc.less(t, r.end_scalar(t.type)))
        n_in = pc.sum(inside).as_py() or 0
        if n_in:
            everything = n_in == len(batch.index)  # the usual case: no copy of the texts by a filter

            def keep(data):
                return data if everything else data.filter(inside)

            landed, l_offs, l_ts, l_sizes = keep(batch.table), keep(offs), keep(kafka_ts), keep(batch.sizes)
            n = landed.num_rows
            cols = [*landed.columns, pa.array([r.topic] * n, pa.string()), pa.array([self.p] * n, pa.int32()),
                    l_offs, l_ts]
            self.data.add(pa.Table.from_arrays(cols, schema=r.schema), l_sizes.to_numpy(zero_copy_only=False))
            st = self.stats
            st.landed += n
            st.bytes += pc.sum(l_sizes).as_py()
            st.max_ts_ms = max(st.max_ts_ms, pc.max(keep(ts)).as_py())
            if self.seen_before is not None:
                r.late_rows += pc.sum(pc.greater_equal(l_offs, self.seen_before)).as_py() or 0
        n_out = len(batch.index) - n_in
        if n_out:
            r.outside += n_out
            before = pc.less(t, r.start_scalar(t.type))
            if pc.any(before).as_py():
                r.late.see(self.p, t.filter(before), offs.filter(before))

    def _quarantine(self, rejected, values, offsets, stamps) -> None:
        """Unparseable records, assigned to partitions by their Kafka timestamp."""
        r = self.run
        rows = [(i, rej) for i, rej in rejected if r.start_ms <= stamps[i] < r.end_ms]
        if not rows:
            return
        for _, rej in rows:
            r.quarantined[rej.reason] = r.quarantined.get(rej.reason, 0) + 1
        self.stats.quarantined += len(rows)
        n = len(rows)
        raw = [values[i] or b"" for i, _ in rows]
        self.quarantine.add(pa.Table.from_arrays([
            pa.array(raw, pa.binary()),
            pa.array([rej.reason for _, rej in rows], pa.string()),
            pa.array([rej.detail for _, rej in rows], pa.string()),
            pa.array([r.topic] * n, pa.string()), pa.array([self.p] * n, pa.int32()),
            pa.array([offsets[i] for i, _ in rows], pa.int64()),
            pa.array([stamps[i] for i, _ in rows], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        ], schema=QUARANTINE_SCHEMA), np.fromiter(map(len, raw), np.int64, count=n))

    def close(self) -> None:
        self.data.close()
        self.quarantine.close()


class _Landing:
    """One run of one partition: what every topic-partition's landing shares."""

    def __init__(self, config: IngestConfig, pipeline: PipelineConfig, partition: Partition, lake: Lake,
                 run_id: str, previous: Manifest | None):
        self.config, self.pipeline, self.partition, self.lake = config, pipeline, partition, lake
        self.spec = pipeline.ingest
        self.topic = pipeline.topic
        self.tfield = pipeline.event_time_field
        self.by_field = self.spec.time_source == "field"
        self.start_ms = int(partition.start.timestamp() * 1000)
        self.end_ms = int(partition.end.timestamp() * 1000)
        self.skew_ms = self.spec.max_timestamp_skew_s * 1000
        self.previous = previous
        self.prev_end = previous.kafka_offsets.get(self.topic, {}) if previous else {}
        self.parser = BatchParser(pipeline, self.spec.max_record_bytes)
        self.schema = raw_schema(pipeline)
        self.plain = {pipeline.id_field} | {f.name for f in pipeline.fields if f.type == "string" and f.max_bytes}
        self.data_prefix = lake.run_key("raw", pipeline.name, partition, run_id)
        self.quarantine_prefix = lake.run_key("quarantine", pipeline.name, partition, run_id)
        self.writer = _BackgroundWriter()
        self.late = _LateTracker(lake, pipeline)
        self.quarantined: dict[str, int] = {}
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


def run(config: IngestConfig, settings: Settings | None = None,
        progress: Callable[[str], None] | None = None) -> Manifest:
    """Land one partition; return the published manifest."""
    from lakeforge.locks import partition_lock

    settings = settings or Settings.load()
    pipeline = PipelineConfig.load(config.pipeline)
    partition = Partition.parse(config.partition, pipeline.partition)
    lake = Lake(settings)
    # the Airflow run id, made path-safe: a retry of the same run writes under the same prefix
    run_id = path_safe(config.run_id) if config.run_id else new_run_id()
    with partition_lock(settings, lake.partition_key("raw", pipeline.name, partition), run_id):
        return _land(config, settings, pipeline, partition, lake, run_id, progress or (lambda s: log.info("%s", s)))


def _land(config: IngestConfig, settings: Settings, pipeline: PipelineConfig, partition: Partition, lake: Lake,
          run_id: str, progress: Callable[[str], None]) -> Manifest:
    spec = pipeline.ingest
    t0 = time.monotonic()
    try:
        previous = lake.read_manifest("raw", pipeline.name, partition)
    except ManifestError:  # first landing of this partition
        previous = None
    r = _Landing(config, pipeline, partition, lake, run_id, previous)
    topic = pipeline.topic
    consumer = _consumer(settings, spec.connect_retries)
    try:
        snap = snapshot(consumer, topic)
        if not config.force:
            done = completeness(consumer, snap, partition, spec.allowed_lateness_s)
            if not all(done.values()):
                _, why = explain_completeness(done, pipeline, partition)
                raise PartitionIncompleteError(f"{partition.path} is not complete: {why}. Wait, or land anyway with "
                                               "force (the DAG's `force_complete` Param).")
        hints = offsets_at(consumer, topic, snap.partitions, r.start_ms - (r.skew_ms if r.by_field else 0))
        ranges = {p: (max(hints[p] if hints[p] >= 0 else snap.high[p], snap.low[p]), snap.high[p])
                  for p in snap.partitions}
        lands = {p: _TpLanding(r, p, first, end) for p, (first, end) in ranges.items()}
        total = sum(end - first for first, end in ranges.values())
        scanned, last_report = 0, time.monotonic()
        todo = [p for p in snap.partitions if ranges[p][0] < ranges[p][1]]
        wave = max(1, spec.max_parallel_partitions)
        with gc_paused():
            for w in range(0, len(todo), wave):
                for p, msgs in read_partitions(consumer, topic, {p: ranges[p] for p in todo[w:w + wave]},
                                               config.poll_timeout_s, config.stall_timeout_s):
                    lands[p].process(msgs)
                    scanned += len(msgs)
                    if time.monotonic() - last_report > 10:
                        last_report = time.monotonic()
                        progress(f"{partition.path}: scanned {scanned:,}/{total:,} records "
                                 f"({scanned / max(1e-9, last_report - t0):,.0f}/s), "
                                 f"landed {sum(tp.stats.landed for tp in lands.values()):,}")
        for tp in lands.values():
            tp.close()
        r.writer.drain()
        high_now = snapshot(consumer, topic).high
    finally:
        r.writer.shutdown()
        consumer.close()

    files = [f for p in sorted(lands) for f in lands[p].data.files]
    qfiles = [f for p in sorted(lands) for f in lands[p].quarantine.files]
    seconds = round(time.monotonic() - t0, 2)
    manifest = Manifest(
        layer="raw", pipeline=pipeline.name, partition=partition.path, interval=(partition.start, partition.end),
        schema_version=pipeline.schema_version, run_id=run_id, files=files, rows=sum(f.rows for f in files),
        kafka_offsets={topic: {str(p): [tp.stats.first, tp.stats.end] for p, tp in sorted(lands.items())}},
        quarantined=dict(sorted(r.quarantined.items())), quarantine_files=qfiles,
        stats={"records_scanned": scanned, "records_scanned_outside_interval": r.outside, "seconds": seconds,
               "msgs_per_s": round(scanned / max(seconds, 1e-9)), "forced": config.force,
               "time_source": spec.time_source, "max_timestamp_lead_s": round(r.max_lead_ms / 1000, 3),
               "late_rows": r.late_rows if previous else 0, "late_partitions": dict(sorted(r.late.late.items())),
               "topic_partitions": {str(p): tp.stats.as_dict(high_now.get(p, tp.stats.end))
                                    for p, tp in sorted(lands.items())}},
    )
    if manifest.rows != sum(tp.stats.landed for tp in lands.values()):  # internal invariant
        raise ManifestError(f"{partition.path}: files hold {manifest.rows} rows, landed "
                            f"{sum(tp.stats.landed for tp in lands.values())}; not publishing")
    lake.publish(manifest)
    export_metrics(manifest, settings)
    progress(f"{partition.path}: landed {manifest.rows:,} rows, quarantined {sum(r.quarantined.values()):,} "
             f"{dict(r.quarantined) or ''} from {scanned:,} records in {seconds}s")
    if r.late.late:
        log.warning("late records for already published partitions %s: they will be re-landed", r.late.late)
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
