"""Records: a Kafka value parsed and validated against the pipeline's event schema, or rejected.

What a landing writes and how it decides:

* :func:`raw_schema` — the Arrow schema of the raw layer: the event fields, then the Kafka
  coordinates (:data:`KAFKA_COLUMNS`); :data:`QUARANTINE_SCHEMA` — the quarantine layer's: the raw
  bytes, a snake_case reason, a detail, the Kafka coordinates;
* :func:`parse_record` — the plain-Python reference: decodes and validates one value, or raises
  :class:`RecordRejected` with the quarantine reason (``malformed_json``, ``invalid_utf8``,
  ``missing_field``, ``wrong_type``, ``oversize``, ``unknown_label``: a label outside the pipeline's
  label space);
* :class:`BatchParser` — the fast path over a batch. A typed msgspec decoder validates a record in
  one pass in C; only records it rejects go through :func:`parse_record`, which decides the
  quarantine reason (or accepts what the fast path was too strict for). Routing, the skew check and
  the statistics are then computed on Arrow columns of each batch. So the fast path changes speed,
  never outcomes.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Literal

import pyarrow as pa

from lakeforge.config import FieldSpec, PipelineConfig

_ARROW_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                "timestamp": pa.timestamp("us", tz="UTC")}
KAFKA_COLUMNS = [("kafka_topic", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
                 ("kafka_timestamp", pa.timestamp("us", tz="UTC"))]  # Iceberg's timestamp unit
#: The quarantine table's rows: the record's bytes, why, where in Kafka, and the lake partition whose
#: landing quarantined it (the table's partition column).
QUARANTINE_SCHEMA = pa.schema([("raw", pa.binary()), ("reason", pa.string()), ("detail", pa.string()),
                               *KAFKA_COLUMNS, ("partition_start", pa.timestamp("us", tz="UTC"))])
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def raw_schema(pipeline: PipelineConfig) -> pa.Schema:
    """Arrow schema of the raw layer: the event fields, then the Kafka coordinates."""
    return pa.schema([pa.field(f.name, _ARROW_TYPES[f.type], nullable=not f.required) for f in pipeline.fields]
                     + [pa.field(n, t, nullable=False) for n, t in KAFKA_COLUMNS])


class RecordRejected(Exception):
    """A record that goes to quarantine: ``reason`` (snake_case, the quarantine's ``reason`` column)
    and ``detail`` (what was wrong, for a person)."""

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


def _check_label(pipeline: PipelineConfig, spec: FieldSpec, value):
    """A label that is not in the pipeline's label space (an index out of range, an unknown name)."""
    known = value in pipeline.labels if spec.type == "string" else 0 <= value < len(pipeline.labels)
    if not known:
        raise RecordRejected("unknown_label", f"{spec.name}={value!r} is not in the label space "
                                              f"{pipeline.labels}"[:200])
    return value


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
        if spec.role == "label":
            _check_label(pipeline, spec, row[spec.name])
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
    (``tests/unit/ingest/test_records.py`` checks both agree on every kind of bad input).

    Hand-written rather than ``pyarrow.json``: Arrow's reader parses a whole block or fails it, and at
    realistic fault rates every block holds a bad record, so it would always fall back to this loop.
    """

    def __init__(self, pipeline: PipelineConfig, max_record_bytes: int):
        import msgspec

        self.pipeline, self.max_record_bytes = pipeline, max_record_bytes
        # int64 bounds, so an integer Arrow cannot hold is rejected like any wrong type
        i64 = Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]
        py = {"string": str, "int": i64, "float": float, "bool": bool, "timestamp": datetime}
        # the label space in the decoder too: an unknown label leaves the fast path like any invalid value
        label = pipeline.field("label")
        py_label = (Literal[tuple(pipeline.labels)] if label.type == "string"
                    else Annotated[int, msgspec.Meta(ge=0, lt=len(pipeline.labels))])
        fields = [(f.name, py_label if f.role == "label" else py[f.type]) if f.required
                  else (f.name, py[f.type] | None, None) for f in pipeline.fields]
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
