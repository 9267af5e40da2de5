"""Kafka access without a broker: completeness in words and figures, the read loop over a fake consumer."""

from __future__ import annotations

from collections import deque
from datetime import timedelta

import pytest
from confluent_kafka import TopicPartition

from lakeforge.config import Partition, PipelineConfig
from lakeforge.ingest.kafka import (TopicSnapshot, completeness, explain_completeness, read_topic_partitions,
                                    retention_gaps)

PIPE = PipelineConfig.load("movie_reviews")
DAY = Partition.parse("2026-11-23")


class Message:
    def __init__(self, tp: int, offset: int):
        self._tp, self._offset = tp, offset

    def error(self):
        return None

    def partition(self):  # confluent-kafka's name for the message's topic-partition
        return self._tp

    def offset(self):
        return self._offset


class Consumer:
    """Hands out ``batches`` in order, then nothing; records what the read loop asked of it."""

    def __init__(self, batches, positions=None, found=None):
        self.batches, self.positions, self.found = deque(batches), positions or {}, found or {}
        self.assigned, self.paused, self.unassigned, self.asked_ts = [], [], False, set()

    def assign(self, tps):
        self.assigned = [(t.partition, t.offset) for t in tps]

    def consume(self, num_messages, timeout):
        return self.batches.popleft() if self.batches else []

    def pause(self, tps):
        self.paused += [t.partition for t in tps]

    def position(self, tps):
        return [TopicPartition(t.topic, t.partition, self.positions[t.partition]) for t in tps]

    def unassign(self):
        self.unassigned = True

    def offsets_for_times(self, tps, timeout):
        self.asked_ts |= {t.offset for t in tps}
        return [TopicPartition(t.topic, t.partition, self.found[t.partition]) for t in tps]


def read(consumer, ranges, stall_timeout_s=60.0):
    return [(tp, [m.offset() for m in batch])
            for tp, batch in read_topic_partitions(consumer, "t", ranges, 0.01, stall_timeout_s)]


def test_read_loop_yields_each_topic_partition_up_to_its_end_then_pauses_it():
    consumer = Consumer([[Message(0, 5), Message(0, 6)],
                         [Message(1, 0), Message(0, 7), Message(0, 8), Message(1, 1)]])  # 0's offset 8: past its end
    got = read(consumer, {0: (5, 8), 1: (0, 2), 2: (3, 3)})  # topic-partition 2 has nothing to read
    assert got == [(0, [5, 6]), (1, [0, 1]), (0, [7])]
    assert consumer.assigned == [(0, 5), (1, 0)] and sorted(consumer.paused) == [0, 1] and consumer.unassigned


def test_read_loop_ends_at_a_position_past_the_end_and_fails_when_stalled():
    # the offsets left up to the snapshot were control records: the position says the end is reached
    consumer = Consumer([[Message(0, 0), Message(0, 1)]], positions={0: 3})
    assert read(consumer, {0: (0, 3)}) == [(0, [0, 1])] and consumer.paused == [0]
    stalled = Consumer([[Message(0, 0)]], positions={0: 1})
    with pytest.raises(TimeoutError, match=r"topic-partitions \[0\] at offsets \{0: 1\}"):
        read(stalled, {0: (0, 3)}, stall_timeout_s=-1)
    assert stalled.unassigned


def test_completeness_per_topic_partition_and_its_explanation():
    snap = TopicSnapshot("t", low={0: 0, 1: 5, 2: 0}, high={0: 10, 1: 5, 2: 4})
    consumer = Consumer([], found={0: 7, 1: -1, 2: -1})
    done = completeness(consumer, snap, DAY, 300)
    assert done == {0: True, 1: True, 2: False}  # 1 is empty (idle); 2 holds nothing stamped after the mark
    assert consumer.asked_ts == {int(DAY.end.timestamp() * 1000) + 300_000}
    complete, why = explain_completeness(done, PIPE, DAY)
    lateness = PIPE.ingest.allowed_lateness_s
    assert not complete and f"{PIPE.topic} topic-partitions [2] hold no record" in why
    assert f"dt=2026-11-23 + {lateness}s allowed lateness" in why
    mark = DAY.end + timedelta(seconds=lateness)
    assert explain_completeness({0: True, 1: True}, PIPE, DAY) == (
        True, f"every topic-partition of {PIPE.topic} has passed {mark:%Y-%m-%d %H:%M} UTC")


def test_retention_gaps_only_where_deleted_records_may_be_the_interval_s():
    snap = TopicSnapshot(topic="t", low={0: 0, 1: 5, 2: 5, 3: 9, 4: 9}, high={0: 9, 1: 9, 2: 9, 3: 9, 4: 12})
    hints = {0: 0,   # nothing ever deleted
             1: 7,   # records 5, 6 remain and predate the interval: so did the deleted 0..4
             2: 5,   # the oldest remaining record is already the interval's: 0..4 may have been too
             3: -1,  # retention emptied the log
             4: -1}  # records remain, all older than the interval
    assert retention_gaps(snap, hints) == {2: 5, 3: 9}
