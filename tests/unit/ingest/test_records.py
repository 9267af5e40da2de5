"""Record parsing and quarantine reasons, on tiny inline records: the reference parser and the batch parser."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from lakeforge.config import PipelineConfig
from lakeforge.ingest.records import RecordRejected, parse_record, raw_schema

PIPE = PipelineConfig.load("movie_reviews")
GOOD = {"id": "a1", "text": "Great film.", "label": 1, "source": "imdb", "event_time": "2026-11-23T10:00:00Z"}


def enc(obj) -> bytes:
    return json.dumps(obj).encode()


def test_good_record_parses_with_utc_time():
    row = parse_record(PIPE, enc(GOOD))
    assert row["id"] == "a1" and row["label"] == 1
    assert row["event_time"] == datetime(2026, 11, 23, 10, tzinfo=timezone.utc)


def test_optional_field_may_be_missing():
    row = parse_record(PIPE, enc({k: v for k, v in GOOD.items() if k != "source"}))
    assert row["source"] is None


@pytest.mark.parametrize("value,reason", [
    (b'{"id": "a1", "text": "trunc', "malformed_json"),
    (b"[1, 2, 3]", "malformed_json"),
    (None, "malformed_json"),
    (b'{"id": "a1", "text": "caf\xff"}', "invalid_utf8"),
    (enc({k: v for k, v in GOOD.items() if k != "label"}), "missing_field"),
    (enc({**GOOD, "label": "positive"}), "wrong_type"),
    (enc({**GOOD, "label": True}), "wrong_type"),
    (enc({**GOOD, "text": 42}), "wrong_type"),
    (enc({**GOOD, "event_time": "yesterday"}), "wrong_type"),
    (enc({**GOOD, "text": "x" * 70_000}), "oversize"),
    (enc({**GOOD, "label": 2}), "unknown_label"),  # an index past the label space [negative, positive]
    (enc({**GOOD, "label": -1}), "unknown_label"),
])
def test_bad_records_are_rejected_with_the_exact_reason(value, reason):
    with pytest.raises(RecordRejected) as rej:
        parse_record(PIPE, value)
    assert rej.value.reason == reason and rej.value.detail


def test_raw_schema_has_fields_then_kafka_coordinates():
    names = raw_schema(PIPE).names
    assert names[:5] == ["id", "text", "label", "source", "event_time"]
    assert names[5:] == ["kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp"]


# -- the batch parser: the fast path changes speed, never outcomes ------------------------------

TRICKY = [
    enc(GOOD),
    enc({**GOOD, "event_time": "2026-11-23T10:00:00"}),  # naive: UTC
    enc({**GOOD, "event_time": "2026-11-23T10:00:00z"}),
    enc({**GOOD, "event_time": "2026-11-23 10:00:00+02:00"}),
    enc({**GOOD, "event_time": "2026-11-23T10:00Z"}),  # not RFC 3339: the reference accepts it
    enc({**GOOD, "event_time": "2026-11-23T10:00:00.123456789Z"}),
    enc({**GOOD, "event_time": "20261123T100000Z"}),
    enc({**GOOD, "event_time": "2026-11-23T24:00:00Z"}),
    enc({**GOOD, "label": 2**63}),
    enc({**GOOD, "label": -(2**63)}),
    enc({**GOOD, "label": 1.0}),
    enc({**GOOD, "label": 2}),
    enc({**GOOD, "label": -1}),
    b'{"id": "a1", "text": "t", "label": NaN, "event_time": "2026-11-23T10:00:00Z"}',
    b'{"id": "a1", "text": "\\ud800", "label": 1, "event_time": "2026-11-23T10:00:00Z"}',
    b'{"id": "a1", "text": "x\\u0000y", "label": 1, "event_time": "2026-11-23T10:00:00Z"}',
    b'{"id": "a1", "id": "a2", "text": "t", "label": 1, "event_time": "2026-11-23T10:00:00Z"}',
    enc({**GOOD, "source": None}),
    enc({**GOOD, "text": None}),
    enc({**GOOD, "extra": {"nested": [1, 2]}}),
    enc({**GOOD, "text": "é" * 32_768}),  # 65,536 bytes: at the limit
    enc({**GOOD, "text": "é" * 32_769}),  # 65,538 bytes: over it, though only 32,769 characters
    b"",
    b"null",
    b'"just a string"',
    b'{"id": "a1", "text": "t", "label": 1, "event_time": "2026-11-23T10:00:00Z"} trailing',
    None,
]


def reference(value):
    try:
        return "landed", parse_record(PIPE, value)
    except RecordRejected as rej:
        return "quarantined", rej.reason


def test_batch_parser_agrees_with_the_reference_on_every_input():
    from lakeforge.ingest.records import BatchParser

    batch = BatchParser(PIPE, 1 << 20).parse(TRICKY)
    rows = batch.table.to_pylist()
    got = {i: ("landed", row) for i, row in zip(batch.index, rows)}
    got.update({i: ("quarantined", rej.reason) for i, rej in batch.rejected})
    assert sorted(got) == list(range(len(TRICKY)))
    for i, value in enumerate(TRICKY):
        assert got[i] == reference(value), (i, value[:80] if value else value)


def test_batch_parser_keeps_positions_in_order():
    from lakeforge.ingest.records import BatchParser

    values = [enc({**GOOD, "id": f"e{i}"}) if i % 3 else b"{broken" for i in range(30)]
    batch = BatchParser(PIPE, 1 << 20).parse(values)
    assert batch.index == [i for i in range(30) if i % 3]
    assert batch.table.column("id").to_pylist() == [f"e{i}" for i in batch.index]
    assert [i for i, _ in batch.rejected] == list(range(0, 30, 3))


def test_rejections_hold_no_cycle_so_a_batch_is_freed_without_the_collector():
    import gc
    import weakref

    from lakeforge.ingest.records import BatchParser

    parser = BatchParser(PIPE, 64)  # the 64-byte record limit also sends GOOD through the size check
    gc.collect()
    gc.disable()
    try:
        batch = parser.parse([enc(GOOD), *TRICKY] * 20)
        assert batch.rejected and all(r.__traceback__ is None and r.__context__ is None for _, r in batch.rejected)
        # weak references, not gc.collect()'s count: other threads of the test process (Kafka
        # clients, Spark's gateway) may leave unrelated garbage while the collector is off
        refs = [weakref.ref(batch)] + [weakref.ref(r) for _, r in batch.rejected]
        del batch
        alive = [r() for r in refs if r() is not None]
        assert not alive, f"{len(alive)} objects outlived the batch: held by a reference cycle"
    finally:
        gc.enable()



NEWS = PipelineConfig.load("bbc_news")  # a label field of type string: names from `labels`
NEWS_GOOD = {"id": "n1", "text": "Shares rose sharply on Monday.", "topic": "business",
             "event_time": "2026-11-23T10:00:00Z"}


@pytest.mark.parametrize("value,outcome", [
    (enc(NEWS_GOOD), ("landed", "business")),
    (enc({**NEWS_GOOD, "topic": "tech"}), ("landed", "tech")),
    (enc({**NEWS_GOOD, "topic": "weather"}), ("quarantined", "unknown_label")),
    (enc({**NEWS_GOOD, "topic": "Business"}), ("quarantined", "unknown_label")),  # names are exact
    (enc({**NEWS_GOOD, "topic": 0}), ("quarantined", "wrong_type")),  # a string label field takes names only
    (enc({k: v for k, v in NEWS_GOOD.items() if k != "topic"}), ("quarantined", "missing_field")),
])
def test_string_labels_are_checked_against_the_label_space_on_both_paths(value, outcome):
    from lakeforge.ingest.records import BatchParser

    try:
        ref = ("landed", parse_record(NEWS, value)["topic"])
    except RecordRejected as rej:
        ref = ("quarantined", rej.reason)
    batch = BatchParser(NEWS, 1 << 20).parse([value])
    fast = (("landed", batch.table.column("topic")[0].as_py()) if batch.index
            else ("quarantined", batch.rejected[0][1].reason))
    assert ref == fast == outcome
