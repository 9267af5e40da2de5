"""The lake (lakeforge.lake): paths built in one place, the publish protocol, lineage refs, readers
that read exactly what a manifest lists. On a local lake and on an S3 Lake object that talks to no
server (the S3 round trips run in tests/integration)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeforge.config import Partition, Settings
from lakeforge.errors import ManifestError
from lakeforge.lake import Lake, Manifest, layer_uri, partition_of_key

DAY = Partition.parse("2026-11-23")
HOUR = Partition.parse("2026-11-23T05", "hourly")


def test_keys_of_every_layer_come_from_one_place():
    lake = Lake(Settings(s3_bucket="lake-b"))
    assert lake.partition_key("raw", "p", DAY) == "raw/p/dt=2026-11-23"
    assert lake.run_key("curated", "p", HOUR, "r1") == "curated/p/dt=2026-11-23/hour=05/run=r1"
    assert lake.manifest_key("features", "p", DAY) == "features/p/dt=2026-11-23/_MANIFEST.json"
    assert lake.run_part_key("curated", "p", DAY, "r1", "index") == "curated/p/dt=2026-11-23/run=r1/_index"
    assert lake.report_key("p", DAY, "r1", "quality.html") == "reports/p/dt=2026-11-23/run=r1/quality.html"
    assert lake.checkpoint_key("p", DAY, "dag/run") == "checkpoints/p/dt=2026-11-23/dag/run"
    assert lake.uri("raw/p") == "s3://lake-b/raw/p" and lake.uri("raw/p", scheme="s3a") == "s3a://lake-b/raw/p"
    assert lake.key_of("s3a://lake-b/raw/p/x.parquet") == "raw/p/x.parquet"
    assert lake.arrow_path("s3://lake-b/raw/x") == lake.arrow_path("raw/x") == "lake-b/raw/x"
    with pytest.raises(ManifestError, match="outside the lake bucket 'lake-b'"):
        lake.key_of("s3://other/raw/x")


def test_asset_uris_follow_the_configured_bucket(monkeypatch):
    monkeypatch.delenv("LAKEFORGE_S3_BUCKET", raising=False)
    assert layer_uri("raw", "movie_reviews") == "s3://lakeforge/raw/movie_reviews"
    monkeypatch.setenv("LAKEFORGE_S3_BUCKET", "team-lake")
    assert layer_uri("curated", "movie_reviews") == "s3://team-lake/curated/movie_reviews"
    assert layer_uri("features", "p", bucket="b") == "s3://b/features/p"


@pytest.mark.parametrize("rest, path", [("dt=2026-11-23/_MANIFEST.json", "dt=2026-11-23"),
                                        ("dt=2026-11-23/hour=05/run=x/a.parquet", "dt=2026-11-23/hour=05")])
def test_partition_of_key(rest, path):
    assert partition_of_key(rest).path == path


def write_run(lake, run_id: str, rows: list[dict]) -> Manifest:
    key = lake.run_key("raw", "p", DAY, run_id) + "/part-0.parquet"
    path = lake.root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    files = [lake.describe_file(lake.uri(key))]
    return Manifest(layer="raw", pipeline="p", partition=DAY.path, interval=(DAY.start, DAY.end), schema_version=1,
                    run_id=run_id, files=files, rows=files[0].rows)


def test_a_published_partition_is_exactly_what_its_manifest_lists(local_lake):
    first = write_run(local_lake, "r1", [{"id": "a"}, {"id": "b"}])
    assert first.files[0].rows == 2
    assert first.files[0].sha256 == hashlib.sha256((local_lake.root / local_lake.key_of(first.files[0].path)).read_bytes()).hexdigest()
    with pytest.raises(ManifestError, match="no published raw partition"):
        local_lake.read_manifest("raw", "p", DAY)
    local_lake.publish(first)
    # a second run's files are invisible until its manifest is published, then replace the first's
    second = write_run(local_lake, "r2", [{"id": "c"}])
    assert local_lake.read_table(local_lake.read_manifest("raw", "p", DAY)).to_pylist() == [{"id": "a"}, {"id": "b"}]
    local_lake.publish(second)
    assert local_lake.read_table(local_lake.read_manifest("raw", "p", DAY)).to_pylist() == [{"id": "c"}]
    assert sorted(p.name for p in (local_lake.root / "raw/p/dt=2026-11-23").glob("run=*")) == ["run=r2"]
    assert local_lake.published_partitions("raw", "p") == [DAY]


def test_lineage_ref_is_the_manifests_path_and_digest(local_lake):
    manifest = write_run(local_lake, "r1", [{"id": "a"}])
    local_lake.publish(manifest)
    read, ref = local_lake.read_input("raw", "p", DAY)
    body = (local_lake.root / "raw/p/dt=2026-11-23/_MANIFEST.json").read_bytes()
    assert read == manifest and ref == {"path": local_lake.uri("raw/p/dt=2026-11-23/_MANIFEST.json"),
                                        "sha256": hashlib.sha256(body).hexdigest()}
    assert local_lake.manifest_ref("raw", "p", DAY) == ref and local_lake.read_manifest_at(ref["path"]) == (read, ref)
    assert manifest.lake_partition == DAY


def test_json_and_bytes_round_trip(local_lake):
    uri = local_lake.put_json("reports/p/x.json", {"when": datetime(2026, 11, 23, tzinfo=timezone.utc)})
    assert json.loads(local_lake.get_bytes(uri)) == {"when": "2026-11-23 00:00:00+00:00"}
    assert local_lake.read_bytes(uri) == local_lake.get_bytes("reports/p/x.json")
