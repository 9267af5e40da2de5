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
    raw = lake.read_commit("raw", "movie_reviews", part)
    curated = lake.read_commit("curated", "movie_reviews", part)
    features = lake.read_commit("features", "movie_reviews", part)
    assert raw.rows > 0 and raw.kafka_offsets["movie_reviews.events"]
    assert curated.inputs == [raw.ref]  # the raw table's snapshot curate read
    assert features.inputs == [curated.ref]
    assert 0 < features.rows <= curated.rows <= raw.rows

    client = mlflow.MlflowClient(settings.mlflow_uri)
    version = client.get_model_version_by_alias("movie_reviews_sentiment", "champion")
    run = client.get_run(version.run_id)
    inputs = json.loads(run.data.tags["lakeforge.inputs"])
    assert features.ref in inputs
    # and back: the snapshots the refs name are readable, down to the Kafka offsets
    trained_on = lake.commit_of(features.ref)
    (curated_ref,) = trained_on.inputs
    (raw_ref,) = lake.commit_of(curated_ref).inputs
    assert lake.commit_of(raw_ref).kafka_offsets == raw.kafka_offsets
    assert run.data.tags.get("airflow.dag_id") == "movie_reviews"
    assert "test_accuracy" in run.data.metrics


@pytest.mark.slow  # (~6 min on 2 cores) the second bundled pipeline through the same DAG and server
def test_a_second_pipeline_by_yaml_alone_end_to_end(services, settings):
    """bbc_news is only a YAML: five topics given as names, its own cleaning, gate and model section. It
    runs land -> curate -> features -> train -> promote through Airflow and is served beside
    movie_reviews, answering with one of its own class names (from the model's metadata)."""
    import httpx

    from lakeforge.config import PipelineConfig
    from lakeforge.demo import run_demo

    pipeline = PipelineConfig.load("bbc_news")
    res = run_demo("bbc_news", records=2200, days=3, say=print, home=services.state.home)
    preds = res.prediction["predictions"]
    assert len(preds) == len(pipeline.examples) and all(p["label"] in pipeline.labels for p in preds)
    assert res.prediction["model"] == "bbc_news_topic"
    # one server, every pipeline's champion: the reviews model still answers on its own route
    served = {m["pipeline"]: m for m in httpx.get(f"{settings.serve_url}/v1/models", timeout=10).json()["models"]}
    assert served["bbc_news"]["loaded"] and served["bbc_news"]["labels"] == pipeline.labels
    assert served["bbc_news"]["labels_from"] == "model" and served["movie_reviews"]["loaded"]
    review = httpx.post(f"{settings.serve_url}/v1/models/movie_reviews/predict",
                        json={"texts": ["A moving, beautifully acted film."]}, timeout=30)
    assert review.status_code == 200 and review.json()["predictions"][0]["label"] in {"negative", "positive"}

    import mlflow

    run = mlflow.MlflowClient(settings.mlflow_uri).get_run(
        mlflow.MlflowClient(settings.mlflow_uri).get_model_version_by_alias("bbc_news_topic", "champion").run_id)
    metrics = run.data.metrics
    assert {"test_accuracy", "test_macro_f1"} <= set(metrics)


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
