"""Record parsing and quarantine reasons, on tiny inline records."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from lakeforge.config import PipelineConfig
from lakeforge.ingest import RecordRejected, parse_record, raw_schema
from lakeforge.produce import FAULT_OUTCOME, FaultRates, ProduceConfig, make_events

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
])
def test_bad_records_are_rejected_with_the_exact_reason(value, reason):
    with pytest.raises(RecordRejected) as rej:
        parse_record(PIPE, value)
    assert rej.value.reason == reason and rej.value.detail


def test_raw_schema_has_fields_then_kafka_coordinates():
    names = raw_schema(PIPE).names
    assert names[:5] == ["id", "text", "label", "source", "event_time"]
    assert names[5:] == ["kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp"]


def _events(**kw):
    reviews = [{"text": f"review number {i} is fine", "label": i % 2, "source": "imdb"} for i in range(50)]
    cfg = ProduceConfig(records=400, days=4, end=datetime(2026, 11, 20, tzinfo=timezone.utc), **kw)
    return make_events(cfg, PIPE, reviews)


def test_producer_is_deterministic_and_spreads_days():
    a, b = _events(seed=3), _events(seed=3)
    assert [e.payload for e in a] == [e.payload for e in b]
    days = {e.truth["partition"] for e in a}
    assert days == {"dt=2026-11-16", "dt=2026-11-17", "dt=2026-11-18", "dt=2026-11-19"}
    assert [e.event_time for e in a] == sorted(e.event_time for e in a)


def test_injected_faults_are_rejected_by_ingest_as_the_truth_says():
    rates = FaultRates(malformed_json=0.1, invalid_utf8=0.1, missing_field=0.1, wrong_type=0.1, oversize=0.05)
    events = _events(seed=5, faults=rates)
    seen = set()
    for ev in events:
        try:
            parse_record(PIPE, ev.payload)
            outcome, reason = "landed", None
        except RecordRejected as rej:
            outcome, reason = "quarantined", rej.reason
        assert outcome == FAULT_OUTCOME[ev.fault], ev.fault
        if reason:
            assert reason == ev.fault
        seen.add(ev.fault)
    assert {"malformed_json", "invalid_utf8", "missing_field", "wrong_type", "oversize"} <= seen
