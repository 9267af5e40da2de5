"""Kafka -> lake on the real broker, S3 store and PostgreSQL (the Iceberg catalog): the raw and quarantine
tables' partitions equal the producer's ground truth."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from lakeforge.config import PIPELINES_DIR, Partition
from lakeforge.errors import (ConcurrentRunError, PartitionIncompleteError, PartitionNotPublishedError,
                              RetentionLossError, SourceUnavailableError, TimestampSkewError)
from lakeforge.ingest import IngestOptions, run
from lakeforge.ingest.landing import lock_name
from lakeforge.lake import Commit, Lake
from lakeforge.produce import FaultRates, ProduceConfig, produce
from lakeforge.stage.run import StageRun

pytestmark = pytest.mark.integration

END = datetime(2026, 11, 20, tzinfo=timezone.utc)  # fixed: the tests do not depend on today's date
FAULTS = FaultRates(html=0.05, duplicate=0.05, pii=0.03, empty=0.03, malformed_json=0.04, invalid_utf8=0.03,
                    missing_field=0.03, wrong_type=0.03, oversize=0.02)


def private_pipeline(tmp: Path, tag: str, **ingest) -> tuple[str, str]:
    """A copy of movie_reviews with its own name and topic (and ingest overrides): (yaml path, name)."""
    spec = yaml.safe_load((PIPELINES_DIR / "movie_reviews.yaml").read_text())
    stamp = datetime.now().strftime("%H%M%S%f")
    spec["name"] = f"itest_{tag}_{stamp}"
    spec["topic"] = f"itest.{tag}.{stamp}"
    spec["ingest"] = {**spec.get("ingest", {}), **ingest}
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path), spec["name"]


def read_truth(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def day(d: int) -> str:
    """The day ``d`` days before END."""
    return (END - timedelta(days=d)).strftime("%Y-%m-%d")


def file_digests(lake: Lake, commit: Commit) -> list[str]:
    """sha256 of each data file of the commit's partition at its snapshot, in the lake's fixed order."""
    digests = []
    for path in lake.data_files(commit):
        with lake.fs.open_input_stream(path) as f:
            digests.append(hashlib.sha256(f.read()).hexdigest())
    return digests


def staged_keys(lake: Lake, prefix: str) -> list[str]:
    """Keys of the objects under ``prefix`` in the lake bucket."""
    pages = lake.s3.get_paginator("list_objects_v2").paginate(Bucket=lake.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def partition_data_prefix(lake: Lake, name: str, layer: str, part: Partition) -> str:
    """Where files of ``part`` go in the table's data location (``<location>/data/<partition path>/``)."""
    return f"{lake.key_of(lake.existing_table(name, layer).location())}/data/{part.path}/"


@pytest.fixture(scope="module")
def produced(services, settings, tmp_path_factory):
    """900 events over the 3 days before END, faults injected, plus a day after END so those 3 are complete."""
    tmp = tmp_path_factory.mktemp("ingest")
    path, name = private_pipeline(tmp, "gt")
    produce(ProduceConfig(pipeline=path, records=900, days=3, end=END, seed=11, faults=FAULTS,
                          truth_path=tmp / "truth.jsonl"), settings)
    produce(ProduceConfig(pipeline=path, records=30, days=1, end=END + timedelta(days=1), seed=12,
                          faults=FaultRates(**{k: 0 for k in FaultRates.model_fields}),
                          truth_path=tmp / "after.jsonl"), settings)
    return {"pipeline": path, "name": name, "truth": read_truth(tmp / "truth.jsonl"),
            "after": read_truth(tmp / "after.jsonl")}


def test_partitions_equal_ground_truth(produced, settings):
    lake = Lake(settings)
    landed_total = 0
    for d in (day(3), day(2), day(1)):
        m = run(StageRun.create(produced["pipeline"], d, settings=settings))
        table = lake.read_table(m)
        expected = [t for t in produced["truth"] if t["partition"] == f"dt={d}"]
        want_ids = sorted(t["id"] for t in expected if t["outcome"] == "landed")
        assert sorted(table.column("id").to_pylist()) == want_ids
        want_q = Counter(t["fault"] for t in expected if t["outcome"] == "quarantined")
        assert m.quarantined == dict(want_q)
        # the quarantine partition is its own commit, named by the raw one
        q = lake.read_commit("quarantine", produced["name"], Partition.parse(d))
        assert q.snapshot_id == m.stats["quarantine_snapshot_id"] and q.run_id == m.run_id
        assert q.rows == sum(want_q.values()) == lake.read_table(q, columns=["reason"]).num_rows
        assert Counter(lake.read_table(q, columns=["reason"]).column("reason").to_pylist()) == want_q
        # per-topic-partition volume adds up, and the offsets cover what was read
        tps = m.stats["topic_partitions"]
        assert sum(v["landed"] for v in tps.values()) == m.rows
        assert sum(v["quarantined"] for v in tps.values()) == sum(want_q.values())
        assert set(m.kafka_offsets[next(iter(m.kafka_offsets))]) == set(tps)
        landed_total += m.rows
    assert landed_total == sum(1 for t in produced["truth"] if t["outcome"] == "landed")


def test_topic_size_counts_what_was_produced(produced, settings):
    from lakeforge.config import PipelineConfig
    from lakeforge.ingest import topic_size

    topic = PipelineConfig.load(produced["pipeline"]).topic
    assert topic_size(settings, topic) == len(produced["truth"]) + len(produced["after"])
    assert topic_size(settings, topic + ".never-made") == 0


def test_landing_exports_prometheus_metrics(produced, settings):
    run(StageRun.create(produced["pipeline"], day(1), settings=settings))
    text = (settings.home / "metrics" / f"ingest_{produced['name']}.prom").read_text()
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, s.labels.get("partition"), s.labels.get("outcome")): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    landed = sum(v for (n, _, o), v in samples.items() if n == "lakeforge_ingest_records" and o == "landed")
    want = sum(1 for t in produced["truth"] if t["partition"] == f"dt={day(1)}" and t["outcome"] == "landed")
    assert landed == want
    assert {p for (n, p, _) in samples if n == "lakeforge_ingest_offset_lag"} == {"0", "1", "2"}


def test_rerun_replaces_partition_with_identical_content(produced, settings):
    lake = Lake(settings)
    part = Partition.parse(day(2))
    first = run(StageRun.create(produced["pipeline"], day(2), settings=settings))
    first_q = lake.read_commit("quarantine", produced["name"], part)
    second = run(StageRun.create(produced["pipeline"], day(2), settings=settings))
    second_q = lake.read_commit("quarantine", produced["name"], part)
    # the same offsets make the same bytes: the rerun's files equal the first run's, file by file
    assert file_digests(lake, first) == file_digests(lake, second) and first.files == second.files > 0
    assert file_digests(lake, first_q) == file_digests(lake, second_q) and first_q.files == second_q.files > 0
    assert first.kafka_offsets == second.kafka_offsets
    assert second.stats["late_rows"] == 0
    # the current commit is the rerun's, in a new snapshot; the first run's rows stay readable at its
    # snapshot (time travel), and equal the rerun's
    published = lake.read_commit("raw", produced["name"], part)
    assert published.run_id == second.run_id and published.snapshot_id == second.snapshot_id != first.snapshot_id
    assert lake.read_commit("quarantine", produced["name"], part).snapshot_id == second.stats["quarantine_snapshot_id"]
    assert lake.read_table(first).sort_by("id").equals(lake.read_table(second).sort_by("id"))
    assert not set(lake.data_files(first)) & set(lake.data_files(second))  # the rerun's own files


def test_quarantine_keeps_raw_bytes_and_reason(produced, settings):
    lake = Lake(settings)
    part = Partition.parse(day(3))
    m = run(StageRun.create(produced["pipeline"], day(3), settings=settings))
    quarantine = lake.read_commit("quarantine", produced["name"], part)
    assert quarantine.snapshot_id == m.stats["quarantine_snapshot_id"]
    q = lake.read_table(quarantine).to_pylist()
    assert q, "faults were injected, quarantine must not be empty"
    assert len(q) == quarantine.rows == sum(m.quarantined.values())
    sent = {t["sha256"]: t for t in produced["truth"]}
    for r in q:  # every quarantined row is byte-for-byte a record the producer sent, with its fault as reason
        t = sent[hashlib.sha256(r["raw"]).hexdigest()]
        assert r["reason"] == t["fault"] and r["detail"] and r["kafka_offset"] >= 0
        assert r["partition_start"] == part.start  # the table's partition column: the landed partition
    # the rows are in <pipeline>.quarantine, its files in that table's data location under the partition
    prefix = partition_data_prefix(lake, produced["name"], "quarantine", part)
    assert all(path.removeprefix(f"{lake.bucket}/").startswith(prefix) for path in lake.data_files(quarantine))


def test_incomplete_partition_waits_unless_forced(produced, settings):
    """END's own day: the stream has not passed its end + lateness, so landing refuses; force lands it."""
    last = END.strftime("%Y-%m-%d")
    with pytest.raises(PartitionIncompleteError, match="allowed lateness"):
        run(StageRun.create(produced["pipeline"], last, settings=settings))
    m = run(StageRun.create(produced["pipeline"], last, settings=settings), IngestOptions(force=True))
    assert m.rows == sum(1 for t in produced["after"] if t["partition"] == f"dt={last}") and m.stats["forced"]


def test_concurrent_run_for_the_same_partition_fails_clearly(produced, settings):
    from lakeforge.locks import partition_lock

    lake = Lake(settings)
    stage = StageRun.create(produced["pipeline"], day(1), settings=settings)
    before = lake.read_commit("raw", produced["name"], stage.partition)
    with partition_lock(settings, lock_name(stage), "manual__holder-run"):
        with pytest.raises(ConcurrentRunError, match="manual__holder-run"):
            run(StageRun.create(produced["pipeline"], day(1), settings=settings))
    assert lake.read_commit("raw", produced["name"], stage.partition) == before
    # the lock is released with its holder: the next run goes through
    assert run(StageRun.create(produced["pipeline"], day(1), settings=settings)).rows == before.rows


def test_late_records_are_counted_and_relanded(services, settings, tmp_path):
    """Records of an already landed day that reach Kafka afterwards are reported, then re-landed exactly once."""
    path, name = private_pipeline(tmp_path, "late")
    zero = FaultRates(**{k: 0 for k in FaultRates.model_fields})
    produce(ProduceConfig(pipeline=path, records=300, days=3, end=END, seed=21, faults=zero,
                          truth_path=tmp_path / "ontime.jsonl"), settings)
    first = run(StageRun.create(path, day(3), settings=settings))
    # 25 more events stamped inside day(3), sent after it was landed
    produce(ProduceConfig(pipeline=path, records=25, days=1, end=END - timedelta(days=2), seed=22, faults=zero,
                          truth_path=tmp_path / "late.jsonl"), settings)
    late = read_truth(tmp_path / "late.jsonl")
    assert {t["partition"] for t in late} == {f"dt={day(3)}"}
    nxt = run(StageRun.create(path, day(2), settings=settings))
    assert nxt.stats["late_partitions"] == {f"dt={day(3)}": 25}
    day2_ids = set(Lake(settings).read_table(nxt, columns=["id"]).column("id").to_pylist())
    assert not day2_ids & {t["id"] for t in late}  # late rows belong to their own day, not the reading one
    relanded = run(StageRun.create(path, day(3), settings=settings))
    assert relanded.stats["late_rows"] == 25 and relanded.rows == first.rows + 25
    ontime = [t["id"] for t in read_truth(tmp_path / "ontime.jsonl") if t["partition"] == f"dt={day(3)}"]
    ids = Lake(settings).read_table(relanded, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(ontime + [t["id"] for t in late])
    assert len(ids) == len(set(ids))
    # nothing late is left for the next landing to report
    assert run(StageRun.create(path, day(2), settings=settings)).stats["late_partitions"] == {}


def test_kill_9_mid_partition_then_rerun_publishes_exactly_the_truth(services, settings, tmp_path):
    lake = Lake(settings)
    path, name = private_pipeline(tmp_path, "kill", rows_per_file=2000, row_group_rows=1000)
    faults = FAULTS.model_copy(update={"oversize": 0.0})  # keep the topic small
    produce(ProduceConfig(pipeline=path, records=40_000, days=1, end=END, seed=31, faults=faults,
                          truth_path=tmp_path / "truth.jsonl"), settings)
    d = day(1)
    part = Partition.parse(d)
    env = {**os.environ, "LAKEFORGE_HOME": str(settings.home)}
    proc = subprocess.Popen([sys.executable, "-m", "lakeforge.cli", "ingest", "--pipeline", path, "--partition", d,
                             "--force", "--run-id", "killed"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # the killed run stages its files under <raw location>/data/<partition>/killed-<attempt>/
    deadline = time.monotonic() + 120
    while lake.existing_table(name, "raw") is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    run_prefix = partition_data_prefix(lake, name, "raw", part) + "killed-"
    while time.monotonic() < deadline and proc.poll() is None:
        if len(staged_keys(lake, run_prefix)) >= 2:  # mid-partition: some files written, more to come
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    orphans = staged_keys(lake, run_prefix)
    assert len(orphans) >= 2
    with pytest.raises(PartitionNotPublishedError):  # nothing half-published
        lake.read_commit("raw", name, part)
    assert lake.snapshot_id(name, "raw") is None  # not even a commit of the killed run's files
    m = run(StageRun.create(path, d, settings=settings), IngestOptions(force=True))
    truth = read_truth(tmp_path / "truth.jsonl")
    want = sorted(t["id"] for t in truth if t["partition"] == f"dt={d}" and t["outcome"] == "landed")
    assert sorted(lake.read_table(m, columns=["id"]).column("id").to_pylist()) == want
    assert m.files > 2 and len(lake.data_files(m)) == m.files  # rolled into several files, all committed
    # the killed run's files are orphans no snapshot references (maintenance removes them), never data
    referenced = {path.removeprefix(f"{lake.bucket}/") for path in lake.data_files(m)}
    assert not referenced & set(orphans)
    assert all(not f.startswith(run_prefix) for f in referenced)


def test_broker_unavailable_retries_then_fails_clearly(services, settings, tmp_path):
    import socket

    path, name = private_pipeline(tmp_path, "nobroker", connect_retries=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends
    dead_settings = settings.model_copy(update={"kafka_bootstrap": dead})
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="unreachable after 2 attempts"):
        run(StageRun.create(path, day(1), settings=dead_settings), IngestOptions(force=True))
    assert time.monotonic() - t0 < 60
    lake = Lake(settings)
    part = Partition.parse(day(1))
    with pytest.raises(PartitionNotPublishedError):
        lake.read_commit("raw", name, part)
    for layer in ("raw", "quarantine"):  # no commit, and not a file written
        assert lake.snapshot_id(name, layer) is None
        if lake.existing_table(name, layer) is not None:
            assert staged_keys(lake, partition_data_prefix(lake, name, layer, part)) == []


def test_s3_unavailable_publishes_nothing(produced, settings):
    import socket

    lake = Lake(settings)
    part = Partition.parse(day(2))
    before = {layer: lake.read_commit(layer, produced["name"], part) for layer in ("raw", "quarantine")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(Exception):
        run(StageRun.create(produced["pipeline"], day(2), settings=settings.model_copy(update={"s3_endpoint": dead})))
    assert {layer: lake.read_commit(layer, produced["name"], part) for layer in ("raw", "quarantine")} == before


def test_timestamp_skew_beyond_the_bound_fails_instead_of_missing_records(services, settings, tmp_path):
    """Events whose Kafka timestamp is hours before their event time could sit before the start offset."""
    from confluent_kafka import Producer

    from lakeforge.services.kafka import create_topic

    path, name = private_pipeline(tmp_path, "skew", max_timestamp_skew_s=600)
    topic = yaml.safe_load(Path(path).read_text())["topic"]
    create_topic(settings.kafka_bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    t = END - timedelta(hours=12)
    for i in range(5):
        ev = {"id": f"s{i}", "text": "fine film", "label": 1, "event_time": t.isoformat()}
        p.produce(topic, json.dumps(ev).encode(), timestamp=int((t - timedelta(hours=2)).timestamp() * 1000))
    p.flush(30)
    with pytest.raises(TimestampSkewError, match="max_timestamp_skew_s"):
        run(StageRun.create(path, day(1), settings=settings), IngestOptions(force=True))


def test_records_deleted_by_retention_fail_the_landing_unless_the_loss_is_accepted(services, settings, tmp_path):
    """Kafka retention removed the partition's first records: the landing names the deleted offsets instead
    of starting at the log start silently; accepting the loss lands the rest and records it."""
    from confluent_kafka import Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from lakeforge.services.kafka import create_topic

    path, name = private_pipeline(tmp_path, "retention")
    topic = yaml.safe_load(Path(path).read_text())["topic"]
    create_topic(settings.kafka_bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    start = END - timedelta(days=1)
    for i in range(10):
        t = start + timedelta(hours=2 * i)  # day(1) only; the last ones mark it complete
        ev = {"id": f"k{i}", "text": "a fine film", "label": 1, "event_time": t.isoformat()}
        p.produce(topic, json.dumps(ev).encode(), timestamp=int(t.timestamp() * 1000))
    p.produce(topic, json.dumps({"id": "next", "text": "a fine film", "label": 1,
                                 "event_time": (END + timedelta(hours=3)).isoformat()}).encode(),
              timestamp=int((END + timedelta(hours=3)).timestamp() * 1000))
    p.flush(30)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for fut in admin.delete_records([TopicPartition(topic, 0, 4)]).values():  # what retention does
        fut.result(30)

    stage = StageRun.create(path, day(1), settings=settings)
    with pytest.raises(RetentionLossError, match=r"topic-partition 0: offsets \[0, 4\)"):
        run(stage, IngestOptions(force=True))
    with pytest.raises(PartitionNotPublishedError):
        Lake(settings).read_commit("raw", name, stage.partition)  # nothing was published
    m = run(stage, IngestOptions(force=True, accept_retention_loss=True))
    ids = Lake(settings).read_table(m, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"k{i}" for i in range(4, 10)]
    assert m.stats["retention_loss"] == {"0": [0, 4]} and m.stats["retention_loss_offsets"] == 4
    # a later partition whose records all remain lost nothing
    later = run(StageRun.create(path, day(0), settings=settings), IngestOptions(force=True))
    assert later.stats["retention_loss"] == {} and later.rows == 1


def test_any_dataset_by_yaml_string_labels_and_an_extra_column(services, settings, tmp_path):
    """A dataset of the user's own: a JSON-lines file with other column names, labels given as names
    and an extra column, replayed by `lakeforge produce --from` (the real command) and landed: raw keeps
    the YAML's field names, every event of the file lands with its label name and its extra value, and an
    unknown label is quarantined with reason ``unknown_label``."""
    stamp = datetime.now().strftime("%H%M%S%f")
    topics = ["business", "politics", "science", "sports"]
    data = tmp_path / "articles.jsonl"
    with data.open("w") as f:
        for i in range(60):
            f.write(json.dumps({"headline_and_body": f"Story {i}: a report on {topics[i % 4]} matters this week.",
                                "section": topics[i % 4], "desk": f"desk-{i % 3}"}) + "\n")
    spec = {
        "name": f"itest_news_{stamp}", "topic": f"itest.news.{stamp}",
        "fields": [{"name": "id", "type": "string", "role": "id"},
                   {"name": "body", "type": "string", "role": "text"},
                   {"name": "section", "type": "string", "role": "label"},
                   {"name": "desk", "type": "string"},
                   {"name": "published", "type": "timestamp", "role": "event_time"}],
        "labels": topics,
        "model": {"registered_name": f"itest_news_{stamp}"},
    }
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    truth = tmp_path / "truth.jsonl"  # not compared here: the file's rows are what matters
    lf = os.path.join(os.path.dirname(sys.executable), "lakeforge")
    env = {**os.environ, "LAKEFORGE_HOME": str(settings.home)}
    for end, records, extra in ((END, 200, ["--no-faults", "--fault", "unknown_label=0.1", "--fault", "wrong_type=0.05"]),
                                (END + timedelta(days=1), 20, ["--no-faults"])):  # the day after: END's day completes
        out = subprocess.run([lf, "produce", "--pipeline", str(path), "--from", str(data), "--map", "body=headline_and_body",
                              "--records", str(records), "--days", "1", "--end", end.strftime("%Y-%m-%d"),
                              "--seed", "5", "--truth", str(truth), *extra], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    lake = Lake(settings)
    commit = run(StageRun.create(str(path), day(1), settings=settings))
    # the files the landing wrote, and the table, keep the YAML's field names
    raw = pq.read_table(lake.data_files(commit)[0], filesystem=lake.fs)
    assert raw.column_names[:5] == ["id", "body", "section", "desk", "published"]
    table = lake.read_table(commit)
    assert table.column_names[:5] == ["id", "body", "section", "desk", "published"]
    rows = table.to_pylist()
    assert rows and {r["section"] for r in rows} <= set(topics) and all(r["desk"].startswith("desk-") for r in rows)
    assert all(r["body"].startswith("Story ") for r in rows)
    assert commit.quarantined.get("unknown_label", 0) > 0 and commit.quarantined.get("wrong_type", 0) > 0
    q = lake.read_table(lake.read_commit("quarantine", spec["name"], Partition.parse(day(1)))).to_pylist()
    unknown = [r for r in q if r["reason"] == "unknown_label"]
    assert unknown and all("not in the label space" in r["detail"] for r in unknown)
