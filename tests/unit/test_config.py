from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lakeforge.config import Partition, PipelineConfig, Settings
from lakeforge.errors import ConfigError, MissingSecretError


@pytest.mark.parametrize("value,granularity,path", [
    ("2026-11-23", "daily", "dt=2026-11-23"),
    ("dt=2026-11-23", "daily", "dt=2026-11-23"),
    (" 2026-11-23 ", "daily", "dt=2026-11-23"),
    ("2026-11-23T05", "hourly", "dt=2026-11-23/hour=05"),
    ("dt=2026-11-23/hour=05", "hourly", "dt=2026-11-23/hour=05"),
])
def test_partition_parse(value, granularity, path):
    assert Partition.parse(value, granularity).path == path


@pytest.mark.parametrize("bad,granularity", [
    ("yesterday", "daily"), ("2026-13-01", "daily"), ("", "daily"), ("2026/11/23", "daily"),
    ("2026-11-23T05", "daily"),  # an hour is off a daily pipeline's grid
    ("2026-11-23", "hourly"),  # a day is not one hour
    ("2026-11-23T05:30", "hourly"), ("2026-11-23T25", "hourly"), ("2026-11-23x", "daily"),
])
def test_partition_parse_rejects_with_the_value(bad, granularity):
    with pytest.raises(ConfigError, match=f"bad partition {bad!r}"):
        Partition.parse(bad, granularity)


def test_the_param_pattern_accepts_what_parse_accepts():
    import re

    from lakeforge.config import PARTITION_PATTERNS

    for value, granularity in (("2026-11-23", "daily"), ("dt=2026-11-23/hour=05", "hourly")):
        assert re.fullmatch(PARTITION_PATTERNS[granularity], value)
        Partition.parse(value, granularity)
    for value, granularity in (("2026-11-23T05", "daily"), ("2026-11-23", "hourly"), ("23.11.2026", "daily")):
        assert not re.fullmatch(PARTITION_PATTERNS[granularity], value)


def test_partition_from_interval_prefers_param_then_interval():
    s, e = datetime(2026, 11, 22, tzinfo=timezone.utc), datetime(2026, 11, 23, tzinfo=timezone.utc)
    assert Partition.from_interval(s, e, None).path == "dt=2026-11-22"
    assert Partition.from_interval(s, e, "2026-11-01").path == "dt=2026-11-01"
    assert Partition.from_interval(e, e, "2026-11-01", run_type="manual").path == "dt=2026-11-01"
    with pytest.raises(ConfigError, match="partition"):
        Partition.from_interval(e, e, None)


@pytest.mark.parametrize("run_type", ["backfill", "scheduled"])
def test_a_partition_in_a_backfill_conf_never_replaces_the_runs_own_interval(run_type):
    s, e = datetime(2026, 11, 22, tzinfo=timezone.utc), datetime(2026, 11, 23, tzinfo=timezone.utc)
    assert Partition.from_interval(s, e, "2026-11-01", run_type=run_type).path == "dt=2026-11-22"


def test_a_future_partition_param_is_refused():
    from datetime import timedelta

    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
    with pytest.raises(ConfigError, match="in the future"):
        Partition.from_interval(None, None, tomorrow, run_type="manual")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")  # started already: allowed (landed when complete)
    assert Partition.from_interval(None, None, today, run_type="manual").path == f"dt={today}"


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
