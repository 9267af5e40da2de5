"""The whole chain through Airflow on real services: what `make demo` does, checked end to end."""

from __future__ import annotations

import json

import psutil
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(services):
    from lakeforge.demo import run_demo

    return run_demo("movie_reviews", records=3000, days=3, say=print, home=services.state.home)


def test_demo_ends_with_a_real_prediction(demo):
    preds = demo.prediction["predictions"]
    assert len(preds) == 2
    assert all(p["label"] in {"negative", "positive"} and 0.0 <= p["score"] <= 1.0 for p in preds)
    assert demo.prediction["model"] == "movie_reviews_sentiment"
    assert demo.time_to_first_prediction_s > 0 and demo.peak_rss_mb > 0


def test_champion_alias_points_at_the_served_version(demo, settings):
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_uri)
    champion = client.get_model_version_by_alias("movie_reviews_sentiment", "champion")
    assert str(champion.version) == str(demo.prediction["version"])


def test_lineage_from_model_back_to_kafka_offsets(demo, settings):
    import mlflow

    from lakeforge.config import Partition
    from lakeforge.lake import Lake

    lake = Lake(settings)
    part = Partition.parse(demo.partition)
    raw = lake.read_manifest("raw", "movie_reviews", part)
    curated = lake.read_manifest("curated", "movie_reviews", part)
    features = lake.read_manifest("features", "movie_reviews", part)
    assert raw.rows > 0 and raw.kafka_offsets["movie_reviews.events"]
    assert curated.inputs == [lake.manifest_ref("raw", "movie_reviews", part)]
    assert features.inputs == [lake.manifest_ref("curated", "movie_reviews", part)]
    assert 0 < features.rows <= curated.rows <= raw.rows

    client = mlflow.MlflowClient(settings.mlflow_uri)
    version = client.get_model_version_by_alias("movie_reviews_sentiment", "champion")
    run = client.get_run(version.run_id)
    inputs = json.loads(run.data.tags["lakeforge.inputs"])
    assert lake.manifest_ref("features", "movie_reviews", part) in inputs
    assert run.data.tags.get("airflow.dag_id") == "movie_reviews"
    assert "test_accuracy" in run.data.metrics


def test_down_leaves_nothing_behind(services):
    home = str(services.state.home)
    still = services.down(progress=print)
    assert still == [], f"ports still listening: {still}"
    leftovers = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if home in cmd and p.pid != psutil.Process().pid:
            leftovers.append((p.pid, cmd[:120]))
    assert not leftovers, leftovers
