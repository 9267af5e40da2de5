"""The landing of one partition without a broker: routing of one topic-partition's messages, late records,
the collector pause around the read loop."""

from __future__ import annotations

import gc
import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeforge.config import Partition, PipelineConfig
from lakeforge.ingest.landing import Landing, LateRecordTracker, TopicPartitionLanding, gc_paused
from lakeforge.lake import Commit
from lakeforge.stage.run import StageRun

PIPE = PipelineConfig.load("movie_reviews")


class Message:
    """What the landing reads of a confluent-kafka message: value, offset, (type, timestamp in ms)."""

    def __init__(self, value: bytes | None, offset: int, at: datetime):
        self._value, self._offset, self._ts = value, offset, int(at.timestamp() * 1000)

    def value(self):
        return self._value

    def offset(self):
        return self._offset

    def timestamp(self):
        return 1, self._ts  # TIMESTAMP_CREATE_TIME


def event(id_: str, at: datetime) -> bytes:
    return json.dumps({"id": id_, "text": "Great film.", "label": 1, "event_time": at.isoformat()}).encode()


def publish(lake, pipeline: PipelineConfig, partition: Partition, offsets: dict[str, list[int]]) -> Commit:
    """A published raw partition (no rows) whose landing read ``offsets`` of the pipeline's topic."""
    commit = Commit(layer="raw", pipeline=pipeline.name, partition=partition.path,
                    interval=(partition.start, partition.end), schema_version=1, run_id="earlier", rows=0,
                    kafka_offsets={pipeline.topic: offsets})
    return lake.publish_files(pipeline, commit, [], started_from=None)


def utc(day: int, hour: int) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=timezone.utc)


def test_a_topic_partition_landing_routes_rows_quarantine_and_late_records(local_lake):
    stage = StageRun.create(PIPE, "2026-11-23", "r1", lake=local_lake)
    publish(local_lake, PIPE, Partition.parse("2026-11-22"), {"0": [0, 5]})  # read offsets 0..4 of topic-partition 0
    previous = publish(local_lake, PIPE, stage.partition, {"0": [0, 10]})  # this partition's last landing
    landing = Landing(stage, previous)
    for prefix in (landing.data_prefix, landing.quarantine_prefix):  # a LocalLake makes its staging folders
        assert (local_lake.root / prefix).is_dir()
    tp_landing = TopicPartitionLanding(landing, 0, 10, 16)
    tp_landing.process([
        Message(event("a", utc(23, 10)), 10, utc(23, 10)),  # lands: its event time is inside
        Message(b"{broken", 11, utc(23, 11)),  # quarantined here: its Kafka timestamp is inside
        Message(event("b", utc(22, 8)), 12, utc(23, 9)),  # of dt=2026-11-22, beyond its landing's end offset: late
        Message(event("c", utc(21, 8)), 13, utc(23, 9)),  # of dt=2026-11-21, never landed: not late
        Message(event("d", utc(24, 1)), 14, utc(24, 1)),  # of the next day
        Message(b"{broken", 15, utc(22, 23)),  # quarantine of another partition
    ])
    tp_landing.close()
    try:
        landing.writer.drain()
    finally:
        landing.writer.shutdown()
    assert (tp_landing.stats.landed, tp_landing.stats.quarantined) == (1, 1)
    assert landing.quarantined == {"malformed_json": 1} and landing.outside == 3
    assert landing.late.late == {"dt=2026-11-22": 1}
    assert landing.late.commits["dt=2026-11-21"] is None
    assert landing.late_rows == 1  # offset 10 was not in the previous landing, which ended at 10
    [data] = tp_landing.data.files
    rows = pq.read_table(local_lake.arrow_path(data.key)).to_pylist()
    assert [(r["id"], r["kafka_partition"], r["kafka_offset"]) for r in rows] == [("a", 0, 10)]
    [quarantine] = tp_landing.quarantine.files
    quarantined = pq.read_table(local_lake.arrow_path(quarantine.key)).to_pylist()
    assert [(r["kafka_offset"], r["partition_start"]) for r in quarantined] == [(11, stage.partition.start)]
    assert tp_landing.stats.as_dict(high_now=20)["offset_lag"] == 4


def test_late_records_of_an_hourly_pipeline_are_counted_per_hour(local_lake):
    hourly = PIPE.model_copy(update={"partition": "hourly"})
    publish(local_lake, hourly, Partition.parse("2026-11-23T05", "hourly"), {"2": [0, 3]})
    tracker = LateRecordTracker(local_lake, hourly)
    times = pa.array([utc(23, 5).replace(minute=m) for m in (1, 30, 59)] + [utc(23, 6)], pa.timestamp("us", tz="UTC"))
    tracker.see(2, times, pa.array([1, 3, 4, 9], pa.int64()))  # offsets 3 and 4 of hour 05 are beyond its landing
    assert tracker.late == {"dt=2026-11-23/hour=05": 2}
    assert tracker.commits["dt=2026-11-23/hour=06"] is None
    tracker.see(1, times, pa.array([7, 8, 9, 10], pa.int64()))  # another topic-partition: that landing read none of it
    assert tracker.late == {"dt=2026-11-23/hour=05": 2}


def test_gc_paused_restores_the_collector_even_on_error():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_paused():
            assert not gc.isenabled()
            raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.enable()
