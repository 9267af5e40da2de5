"""Curate and features on the real S3 store (SeaweedFS) through s3a: a 3-day backfill with
cross-partition duplicates, the report and excluded rows in the lake, and the spark-submit entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lakeforge.config import PIPELINES_DIR, REPO_ROOT, Partition
from lakeforge.lake import Lake, Manifest

pytestmark = pytest.mark.integration

BASE = [
    "A slow burn of a thriller that pays off in its last act, with a performance that will stay with me for weeks.",
    "The jokes land more often than not and the cast clearly had fun making it, which is infectious to watch.",
    "An overlong mess with a script that never decides what it wants to be, and a score that drowns every scene.",
    "Gorgeous to look at, but the story is thin and the characters are sketches rather than people I cared about.",
]
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.int64()), ("source", pa.string()),
                    ("event_time", pa.timestamp("us", tz="UTC")), ("kafka_topic", pa.string()),
                    ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64())])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    spec = yaml.safe_load((PIPELINES_DIR / "movie_reviews.yaml").read_text())
    spec["name"] = f"itest_curate_{datetime.now():%H%M%S%f}"
    spec["quality_gate"] = {"min_rows": 1}
    path = tmp_path_factory.mktemp("curate") / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path), spec["name"]


def publish_raw(lake: Lake, name: str, day: str, rows: list[tuple[str, str]]) -> None:
    part = Partition.parse(day)
    key = lake.run_key("raw", name, part, "ingest") + "/part-00000.parquet"
    table = pa.Table.from_pylist([{"id": i, "text": t, "label": 1, "source": "imdb", "event_time": part.start + timedelta(hours=1),
                                   "kafka_topic": "t", "kafka_partition": 0, "kafka_offset": n}
                                  for n, (i, t) in enumerate(rows)], schema=SCHEMA)
    pq.write_table(table, lake.arrow_path(key), filesystem=lake.fs)
    lake.publish(Manifest(layer="raw", pipeline=name, partition=part.path, interval=(part.start, part.end),
                          schema_version=1, run_id="ingest", files=[lake.describe_file(lake.uri(key))], rows=len(rows)))


def test_backfill_on_s3_and_the_spark_submit_entry_point(settings, pipeline):
    from lakeforge.curate import run
    from lakeforge.spark import spark_session, submit_kwargs
    from lakeforge.stage.run import StageRun

    path, name = pipeline
    lake = Lake(settings)
    publish_raw(lake, name, "2026-11-20", [("a1", BASE[0]), ("a2", BASE[1])])
    publish_raw(lake, name, "2026-11-21", [("b1", BASE[0].lower()), ("b2", BASE[1] + " Really."), ("b3", BASE[2])])
    publish_raw(lake, name, "2026-11-22", [("c1", BASE[2]), ("c2", BASE[3]), ("c3", "meh")])

    spark = spark_session("itest-curate", settings)
    try:
        day1 = run(StageRun.create(path, "2026-11-20", "d1", settings=settings, lake=lake), spark=spark)
        day2 = run(StageRun.create(path, "2026-11-21", "d2", settings=settings, lake=lake), spark=spark)
    finally:
        spark.stop()
    assert day1.rows == 2 and day2.rows == 1
    assert day2.dropped["exact_duplicate_cross_partition"] == 1 and day2.dropped["near_duplicate_cross_partition"] == 1
    assert all(f.path.startswith(f"s3://{lake.bucket}/curated/{name}/") for f in day2.files)
    report = json.loads(lake.get_bytes(day2.stats["report"]["json"]))
    assert report["drops_by_reason"]["near_duplicate_cross_partition"] == 1
    assert b"<svg" in lake.get_bytes(day2.stats["report"]["html"])
    excluded = pq.read_table(lake.arrow_path(day2.stats["excluded"]["files"][0]["path"]), filesystem=lake.fs).to_pylist()
    assert sorted((r["id"], r["duplicate_of"]) for r in excluded) == [("b1", "a1"), ("b2", "a2")]

    # day 3 through spark-submit, as Airflow runs it
    kw = submit_kwargs(settings)
    args = [os.path.join(os.path.dirname(sys.executable), "spark-submit")]
    for key, value in kw["conf"].items():
        args += ["--conf", f"{key}={value}"]
    if "driver_class_path" in kw:
        args += ["--driver-class-path", kw["driver_class_path"]]
    if "jars" in kw:
        args += ["--jars", kw["jars"]]
    for job, extra in (("curate", []), ("features", [])):
        out = subprocess.run([*args, str(REPO_ROOT / "jobs" / f"{job}.py"), "--pipeline", path, "--partition", "2026-11-22",
                              "--run-id", "scheduled__2026-11-22", *extra],
                             env={**os.environ, **kw["env_vars"]}, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        if job == "curate":
            assert summary["rows"] == 1 and summary["dropped"]["exact_duplicate_cross_partition"] == 1
            assert summary["report"]["html"].endswith("quality.html")
    features = lake.read_manifest("features", name, Partition.parse("2026-11-22"))
    table = lake.read_table(features)
    # the features columns, then the pipeline's extra field (source), kept through the layers
    assert table.column_names == ["id", "text", "label", "split", "input_ids", "num_tokens", "cluster_id", "source"]
    assert table.column("id").to_pylist() == ["c2"] and table.column("input_ids").to_pylist()[0][0] == 101
    assert table.column("source").to_pylist() == ["imdb"]


@pytest.mark.slow  # (45 s) the exit status mapping is a unit test; this is spark-submit passing it on
def test_gate_failure_exits_3_through_spark_submit(settings, pipeline, tmp_path):
    from lakeforge.spark import submit_kwargs

    path, name = pipeline
    spec = yaml.safe_load(open(path).read())
    spec["quality_gate"] = {"min_rows": 50}
    strict = tmp_path / f"{name}.yaml"
    strict.write_text(yaml.safe_dump(spec))
    lake = Lake(settings)
    # a text unlike every other partition's (a near-duplicate of one would be dropped, leaving 0 rows)
    publish_raw(lake, name, "2026-11-25", [("z1", "Nothing here resembles the other reviews: a documentary about "
                                                  "bees, patiently shot, oddly moving, a little too long.")])
    kw = submit_kwargs(settings)
    args = [os.path.join(os.path.dirname(sys.executable), "spark-submit")]
    for key, value in kw["conf"].items():
        args += ["--conf", f"{key}={value}"]
    args += ["--driver-class-path", kw["driver_class_path"]] if "driver_class_path" in kw else ["--jars", kw["jars"]]
    out = subprocess.run([*args, str(REPO_ROOT / "jobs" / "curate.py"), "--pipeline", str(strict), "--partition",
                          "2026-11-25"], env={**os.environ, **kw["env_vars"]}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "min_rows: 1 curated rows, at least 50 required" in out.stdout.strip().splitlines()[-1]
