"""Kafka -> lake on the real broker and S3 store: contents equal the producer's ground truth."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from lakeforge.config import PIPELINES_DIR, Partition
from lakeforge.ingest import IngestConfig, run
from lakeforge.lake import Lake
from lakeforge.produce import FaultRates, ProduceConfig, produce

pytestmark = pytest.mark.integration

END = datetime(2026, 11, 20, tzinfo=timezone.utc)  # fixed: the test does not depend on today's date
FAULTS = FaultRates(html=0.05, duplicate=0.05, pii=0.03, empty=0.03, malformed_json=0.04, invalid_utf8=0.03,
                    missing_field=0.03, wrong_type=0.03, oversize=0.02)


@pytest.fixture(scope="module")
def produced(services, settings, tmp_path_factory):
    """A private pipeline (own topic) with 900 events over 3 days, faults injected."""
    tmp = tmp_path_factory.mktemp("ingest")
    spec = yaml.safe_load((PIPELINES_DIR / "movie_reviews.yaml").read_text())
    stamp = datetime.now().strftime("%H%M%S%f")
    spec["name"] = f"itest_{stamp}"
    spec["topic"] = f"itest.{stamp}.events"
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = produce(ProduceConfig(pipeline=str(path), records=900, days=3, end=END, seed=11, faults=FAULTS,
                                    truth_path=tmp / "truth.jsonl"), settings)
    truth = [json.loads(line) for line in (tmp / "truth.jsonl").read_text().splitlines()]
    return {"pipeline": str(path), "name": spec["name"], "truth": truth, "summary": summary}


def _partitions():
    return [(END - timedelta(days=d)).strftime("%Y-%m-%d") for d in (3, 2, 1)]


def test_partitions_equal_ground_truth(produced, settings):
    lake = Lake(settings)
    landed_total = 0
    for day in _partitions():
        m = run(IngestConfig(pipeline=produced["pipeline"], partition=day), settings)
        table = lake.read_table(m)
        expected = [t for t in produced["truth"] if t["partition"] == f"dt={day}"]
        want_ids = sorted(t["id"] for t in expected if t["outcome"] == "landed")
        assert sorted(table.column("id").to_pylist()) == want_ids
        want_q = Counter(t["fault"] for t in expected if t["outcome"] == "quarantined")
        assert m.quarantined == dict(want_q)
        assert sum(f.rows for f in m.quarantine_files) == sum(want_q.values())
        landed_total += m.rows
    assert landed_total == sum(1 for t in produced["truth"] if t["outcome"] == "landed")


def test_rerun_replaces_partition_with_identical_content(produced, settings):
    lake = Lake(settings)
    day = _partitions()[1]
    first = run(IngestConfig(pipeline=produced["pipeline"], partition=day), settings)
    second = run(IngestConfig(pipeline=produced["pipeline"], partition=day), settings)
    assert [f.sha256 for f in first.files] == [f.sha256 for f in second.files]
    assert first.kafka_offsets == second.kafka_offsets
    published = lake.read_manifest("raw", produced["name"], Partition.parse(day))
    assert published.run_id == second.run_id
    # the superseded run's files are gone; only the published run's remain
    prefix = lake.partition_key("raw", produced["name"], Partition.parse(day))
    keys = [o["Key"] for o in lake.s3.list_objects_v2(Bucket=lake.bucket, Prefix=prefix).get("Contents", [])]
    assert all(f"run={second.run_id}/" in k or k.endswith("_MANIFEST.json") for k in keys), keys


def test_quarantine_keeps_raw_bytes_and_reason(produced, settings):
    import pyarrow.parquet as pq

    lake = Lake(settings)
    day = _partitions()[0]
    m = lake.read_manifest("raw", produced["name"], Partition.parse(day))
    assert m.quarantine_files, "faults were injected, quarantine must not be empty"
    q = pq.read_table(lake.arrow_path(m.quarantine_files[0].path), filesystem=lake.fs).to_pylist()
    by_reason = {r["reason"]: r for r in q}
    assert set(by_reason) <= {"malformed_json", "invalid_utf8", "missing_field", "wrong_type", "oversize"}
    if "invalid_utf8" in by_reason:
        with pytest.raises(UnicodeDecodeError):
            by_reason["invalid_utf8"]["raw"].decode("utf-8")
    assert all(r["kafka_offset"] >= 0 and r["detail"] for r in q)


def test_manual_run_without_partition_is_a_clear_error():
    from lakeforge.errors import ConfigError

    now = datetime(2026, 11, 23, tzinfo=timezone.utc)
    with pytest.raises(ConfigError, match="partition"):
        Partition.from_interval(now, now, None)
