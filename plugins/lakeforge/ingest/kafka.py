"""Kafka access of a landing: the consumer, topic snapshots, offsets by time, completeness, the read loop.

Offsets. Every topic-partition's high watermark is snapshotted at the start of a landing: the end
bound of the run, so a rerun over unchanged data reads the same offsets. Each topic-partition's
start is found with ``offsets_for_times`` (:func:`offsets_at`): Kafka returns the earliest offset
stamped at or after a time.

Completeness. A lake partition is complete once every non-empty topic-partition holds a record
stamped at or after ``end + allowed_lateness`` (:func:`completeness`, :func:`check_complete`: the
DAG's sensor; an empty topic-partition is idle, so complete).

Reading. :func:`read_topic_partitions` reads every record from the start to the snapshot, all
assigned topic-partitions at once (librdkafka fetches them in parallel), each in offset order.

Naming: a Kafka topic-partition is a *topic-partition* (``tp``) here; a *partition* is always a lake
:class:`~lakeforge.config.Partition`. ``partition()`` on a message and ``.partition`` on a
``TopicPartition`` are confluent-kafka's names for the topic-partition number.
"""

from __future__ import annotations

import logging
import operator
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Iterator

from lakeforge.config import Partition, PipelineConfig, Settings
from lakeforge.errors import SourceUnavailableError

if TYPE_CHECKING:
    from lakeforge.stage.run import StageRun

log = logging.getLogger(__name__)

CONSUME_BATCH = 10_000  # messages per consume() call


def open_consumer(settings: Settings, retries: int):
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
    low: dict[int, int]  # topic-partition -> low watermark
    high: dict[int, int]  # topic-partition -> high watermark (the next offset to be written)

    @property
    def topic_partitions(self) -> list[int]:
        return sorted(self.high)


def snapshot(consumer, topic: str) -> TopicSnapshot:
    """The watermarks of every topic-partition of ``topic`` now; fails when the topic does not exist."""
    md = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None or not md.partitions:
        raise SourceUnavailableError(f"topic {topic!r} does not exist: run `lakeforge produce` (or your producer) first")
    from confluent_kafka import TopicPartition

    low, high = {}, {}
    for tp in sorted(md.partitions):  # confluent-kafka's metadata: topic-partition number -> its metadata
        low[tp], high[tp] = consumer.get_watermark_offsets(TopicPartition(topic, tp), timeout=10, cached=False)
    return TopicSnapshot(topic, low, high)


def topic_size(settings: Settings, topic: str) -> int:
    """Records ever written to ``topic`` (its high watermarks summed); 0 while it does not exist."""
    consumer = open_consumer(settings, 1)
    try:
        return sum(snapshot(consumer, topic).high.values())
    except SourceUnavailableError:  # no such topic yet
        return 0
    finally:
        consumer.close()


def offsets_at(consumer, topic: str, topic_partitions: list[int], ts_ms: int) -> dict[int, int]:
    """Earliest offset stamped at or after ``ts_ms`` per topic-partition (-1: none yet)."""
    from confluent_kafka import TopicPartition

    found = consumer.offsets_for_times([TopicPartition(topic, tp, ts_ms) for tp in topic_partitions], timeout=10)
    return {position.partition: position.offset for position in found}


def retention_gaps(snap: TopicSnapshot, hints: dict[int, int]) -> dict[int, int]:
    """Topic-partitions whose deleted records (offsets below the log start, removed by retention) may
    belong to the interval whose start offsets are ``hints`` (:func:`offsets_at`): topic-partition ->
    log start offset, so offsets ``[0, log start)`` are gone.

    A log that starts at 0 lost nothing. When the first record stamped at or after the interval's
    start is *later* than the log start, the records between are older than the interval and so are
    the deleted ones (Kafka timestamps grow with offsets, within the allowed skew): nothing of the
    interval was lost. When it *is* the log start, or the log is empty after a deletion, the deleted
    records may have been the interval's first ones: that is a gap.
    """
    gaps = {}
    for tp in snap.topic_partitions:
        low, high, hint = snap.low[tp], snap.high[tp], hints.get(tp, -1)
        if low > 0 and (hint == low or (hint < 0 and low == high)):
            gaps[tp] = low
    return gaps


def completeness(consumer, snap: TopicSnapshot, partition: Partition, lateness_s: int) -> dict[int, bool]:
    """Whether each topic-partition has passed ``end + lateness`` (an empty one is idle, so complete)."""
    mark = int((partition.end.timestamp() + lateness_s) * 1000)
    at = offsets_at(consumer, snap.topic, snap.topic_partitions, mark)
    return {tp: snap.high[tp] == snap.low[tp] or 0 <= at[tp] < snap.high[tp] for tp in snap.topic_partitions}


def check_complete(stage: StageRun) -> tuple[bool, str]:
    """(complete, explanation) of the stage's partition, for the DAG's completeness sensor."""
    pipeline = stage.pipeline
    consumer = open_consumer(stage.settings, pipeline.ingest.connect_retries)
    try:
        snap = snapshot(consumer, pipeline.topic)
        done = completeness(consumer, snap, stage.partition, pipeline.ingest.allowed_lateness_s)
    finally:
        consumer.close()
    return explain_completeness(done, pipeline, stage.partition)


def explain_completeness(done: dict[int, bool], pipeline: PipelineConfig, partition: Partition) -> tuple[bool, str]:
    """(complete, why) from :func:`completeness`'s answer, in words for logs and errors."""
    waiting = [tp for tp, ok in done.items() if not ok]
    mark = partition.end + timedelta(seconds=pipeline.ingest.allowed_lateness_s)
    if waiting:
        return False, (f"{pipeline.topic} topic-partitions {waiting} hold no record stamped at or after "
                       f"{mark:%Y-%m-%d %H:%M} UTC (end of {partition.path} + {pipeline.ingest.allowed_lateness_s}s "
                       "allowed lateness)")
    return True, f"every topic-partition of {pipeline.topic} has passed {mark:%Y-%m-%d %H:%M} UTC"


_error = operator.methodcaller("error")
_topic_partition_of = operator.methodcaller("partition")  # a message's topic-partition (confluent-kafka's name)


def read_topic_partitions(consumer, topic: str, ranges: dict[int, tuple[int, int]], poll_timeout_s: float,
                    stall_timeout_s: float) -> Iterator[tuple[int, list]]:
    """``(topic-partition, messages)`` batches from ``[first, end)`` of every topic-partition of ``ranges``.

    All of them are assigned at once, so librdkafka fetches them in parallel (one after another was
    3x slower here); each batch is in offset order, batches of different topic-partitions interleave.
    A topic-partition that reached its end is paused, so nothing beyond the snapshot is fetched.
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    nxt = {tp: first for tp, (first, end) in ranges.items() if first < end}
    ends = {tp: ranges[tp][1] for tp in nxt}
    if not nxt:
        return

    def done(tp: int) -> None:
        del nxt[tp]
        consumer.pause([TopicPartition(topic, tp)])

    consumer.assign([TopicPartition(topic, tp, first) for tp, first in nxt.items()])
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
            tps = list(map(_topic_partition_of, msgs))
            if tps and tps.count(tps[0]) == len(tps):  # usual: librdkafka hands over one message set
                by_tp = {tps[0]: msgs}
            else:
                by_tp = {}
                for tp, m in zip(tps, msgs):
                    by_tp.setdefault(tp, []).append(m)
            for tp, batch in by_tp.items():
                if tp not in nxt:  # prefetched before the pause
                    continue
                end = ends[tp]
                if batch[-1].offset() >= end:
                    batch = [m for m in batch if m.offset() < end]
                if batch:
                    nxt[tp] = batch[-1].offset() + 1
                    last_progress = time.monotonic()
                    yield tp, batch
                if nxt[tp] >= end:
                    done(tp)
            if not msgs:
                for tp in list(nxt):
                    # the offsets left up to the snapshot were control records or compacted away
                    if consumer.position([TopicPartition(topic, tp)])[0].offset >= ends[tp]:
                        done(tp)
                if nxt and time.monotonic() - last_progress > stall_timeout_s:
                    raise TimeoutError(f"no progress reading {topic} topic-partitions {sorted(nxt)} at offsets {nxt} "
                                       f"(targets {ends}) for {stall_timeout_s:.0f}s")
    finally:
        consumer.unassign()

