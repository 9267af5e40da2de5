"""The producer: deterministic events, faults that ingest and curate must handle, ground truth."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from lakeforge.config import PipelineConfig
from lakeforge.errors import LakeforgeError
from lakeforge.ingest import RecordRejected, parse_record
from lakeforge.produce import (FAULT_OUTCOME, PII_KINDS, FaultRates, ProduceConfig, iter_events, make_events,
                               near_duplicate, parse_fault_overrides, plant_pii)

PIPE = PipelineConfig.load("movie_reviews")
LONG = " ".join(f"word{i}" for i in range(200))


def _events(n: int = 400, **kw):
    # half short, half long enough (>= 60 distinct words) to be copied as near duplicates
    reviews = [{"text": " ".join(f"r{i}w{k}" for k in range(5 + 100 * (i % 2))), "label": i % 2, "source": "imdb"}
               for i in range(50)]
    cfg = ProduceConfig(records=n, days=4, end=datetime(2026, 11, 20, tzinfo=timezone.utc), **kw)
    return make_events(cfg, PIPE, reviews)


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_producer_is_deterministic_and_spreads_days():
    a, b = _events(seed=3), _events(seed=3)
    assert [e.payload for e in a] == [e.payload for e in b]
    assert [e.payload for e in a] != [e.payload for e in _events(seed=4)]
    days = {e.truth["partition"] for e in a}
    assert days == {"dt=2026-11-16", "dt=2026-11-17", "dt=2026-11-18", "dt=2026-11-19"}
    assert [e.event_time for e in a] == sorted(e.event_time for e in a)
    assert len({e.id for e in a}) == len(a)


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


def test_duplicates_name_the_event_they_copy():
    events = _events(n=600, seed=8, faults=FaultRates.none().model_copy(update={"duplicate": 0.2,
                                                                                "near_duplicate": 0.2}))
    texts = {e.id: parse_record(PIPE, e.payload)["text"] for e in events}
    dups = [e for e in events if e.fault == "duplicate"]
    nears = [e for e in events if e.fault == "near_duplicate"]
    assert dups and nears
    for e in dups:
        assert texts[e.id] == texts[e.truth["duplicate_of"]] and e.truth["duplicate_of"] < e.id
    for e in nears:
        original = texts[e.truth["duplicate_of"]]
        assert texts[e.id] != original and jaccard(texts[e.id], original) >= 0.8


@pytest.mark.parametrize("seed", range(5))
def test_near_duplicate_keeps_word_5gram_jaccard_high(seed):
    import random

    edited = near_duplicate(LONG, random.Random(seed))
    assert edited != LONG and 0.8 <= jaccard(edited, LONG) < 1.0


def test_planted_pii_is_in_the_text_and_the_truth():
    events = _events(n=300, seed=9, faults=FaultRates.none().model_copy(update={"pii": 0.5}))
    pii = [e for e in events if e.fault == "pii"]
    assert {e.truth["pii"]["kind"] for e in pii} == set(PII_KINDS)
    for e in pii:
        assert e.truth["pii"]["value"] in parse_record(PIPE, e.payload)["text"]


def luhn_ok(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)][::-1]
    return sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits)) % 10 == 0


@pytest.mark.parametrize("i", [0, 7, 12345, 99_999_999])
def test_planted_card_numbers_are_luhn_valid_16_digits(i):
    _, value = plant_pii("x", "card", i)
    assert len(re.sub(r"\D", "", value)) == 16 and luhn_ok(value)
    assert not luhn_ok(value[:-1] + str((int(value[-1]) + 1) % 10))


def test_events_are_generated_lazily():
    cfg = ProduceConfig(records=10**9, days=1, end=datetime(2026, 11, 20, tzinfo=timezone.utc))
    stream = iter_events(cfg, PIPE, [{"text": "fine", "label": 1, "source": "imdb"}])
    first = [next(stream) for _ in range(3)]  # a billion events would not fit in memory as a list
    assert [e.id for e in first] == ["movie_reviews-7-00000000", "movie_reviews-7-00000001", "movie_reviews-7-00000002"]


def test_fault_overrides_are_checked():
    assert parse_fault_overrides(["html=0.1", "pii=0"]) == {"html": 0.1, "pii": 0.0}
    for bad in ["html", "nope=0.1", "html=x", "html=2"]:
        with pytest.raises(LakeforgeError, match="--fault"):
            parse_fault_overrides([bad])
