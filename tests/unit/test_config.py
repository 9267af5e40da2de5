from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lakeforge.config import Partition, PipelineConfig, Settings
from lakeforge.errors import ConfigError, MissingSecretError


@pytest.mark.parametrize("value,path", [
    ("2026-11-23", "dt=2026-11-23"),
    ("dt=2026-11-23", "dt=2026-11-23"),
    ("2026-11-23T05", "dt=2026-11-23/hour=05"),
    ("dt=2026-11-23/hour=05", "dt=2026-11-23/hour=05"),
])
def test_partition_parse(value, path):
    assert Partition.parse(value).path == path


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "", "2026/11/23"])
def test_partition_parse_rejects_with_the_value(bad):
    with pytest.raises(ConfigError, match="bad partition"):
        Partition.parse(bad)


def test_partition_from_interval_prefers_param_then_interval():
    s, e = datetime(2026, 11, 22, tzinfo=timezone.utc), datetime(2026, 11, 23, tzinfo=timezone.utc)
    assert Partition.from_interval(s, e, None).path == "dt=2026-11-22"
    assert Partition.from_interval(s, e, "2026-11-01").path == "dt=2026-11-01"
    with pytest.raises(ConfigError, match="partition"):
        Partition.from_interval(e, e, None)


def test_pipeline_loads_and_unknown_names_are_listed():
    p = PipelineConfig.load("movie_reviews")
    assert p.topic and p.model.registered_name and {f.name for f in p.fields} >= {"id", "text", "label"}
    with pytest.raises(ConfigError, match="movie_reviews"):
        PipelineConfig.load("no_such_pipeline")


def test_bad_split_is_rejected(tmp_path):
    import yaml

    spec = yaml.safe_load(PipelineConfig.load("movie_reviews").model_dump_json())
    spec["split"] = {"train": 0.9, "validation": 0.2, "test": 0.1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="split"):
        PipelineConfig.load(path)


def test_env_wins_over_state_files_and_missing_secret_fails_loudly(tmp_path, monkeypatch):
    (tmp_path / "endpoints.json").write_text('{"s3_endpoint": "http://from-state:1"}')
    monkeypatch.setenv("LAKEFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("LAKEFORGE_S3_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("LAKEFORGE_S3_ENDPOINT", raising=False)
    assert Settings.load().s3_endpoint == "http://from-state:1"
    monkeypatch.setenv("LAKEFORGE_S3_ENDPOINT", "http://from-env:2")
    assert Settings.load().s3_endpoint == "http://from-env:2"
    with pytest.raises(MissingSecretError, match="LAKEFORGE_S3_ACCESS_KEY_ID"):
        Settings.load().require("s3_access_key_id")


def test_ingest_reads_the_old_name_of_the_topic_partition_parallelism():
    from lakeforge.config import IngestSpec

    assert IngestSpec(max_parallel_partitions=3).max_parallel_topic_partitions == 3  # pipelines written before
    assert IngestSpec(max_parallel_topic_partitions=4).max_parallel_topic_partitions == 4
    with pytest.raises(ValueError):
        IngestSpec(max_parallel_topic_partitions=0)


@pytest.mark.parametrize("moment, granularity, path", [
    ("2026-11-23T23:59:59+00:00", "daily", "dt=2026-11-23"),
    ("2026-11-24T01:30:00+02:00", "daily", "dt=2026-11-23"),  # 23:30 UTC
    ("2026-11-23T05:59:00+00:00", "hourly", "dt=2026-11-23/hour=05"),
])
def test_partition_containing_an_instant(moment, granularity, path):
    from datetime import datetime

    assert Partition.containing(datetime.fromisoformat(moment), granularity).path == path
