"""The model server (lakeforge.serve): 503 before a champion, predictions, 422s, hot swap."""

from __future__ import annotations

import threading
import time

import mlflow
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from lakeforge.registry import LABELS_METADATA_KEY
from lakeforge.serve import ServedPipeline, create_app


class KeywordModel(mlflow.pyfunc.PythonModel):
    """positive iff "good" occurs; ``constant`` answers one label for everything."""

    def __init__(self, constant: str | None = None):
        self.constant = constant

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = model_input.iloc[:, 0].astype(str)
        labels = [self.constant or ("positive" if "good" in t else "negative") for t in texts]
        return pd.DataFrame({"label": labels, "score": [0.75] * len(labels)})


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A SQLite MLflow in the session's base temp dir (shared with the other test modules)."""
    base = tmp_path_factory.getbasetemp()
    uri = f"sqlite:///{base}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("serve-tests", artifact_location=(base / "serve-artifacts").as_uri())

    def register(name: str, model: mlflow.pyfunc.PythonModel, champion: bool = False,
                 labels: list[str] | None = None) -> str:
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=[],
                                           metadata={LABELS_METADATA_KEY: labels} if labels else None)
        version = str(mlflow.register_model(info.model_uri, name).version)
        if champion:
            client.set_registered_model_alias(name, "champion", version)
        return version

    return uri, register


def wait_for_version(client: TestClient, version: str | None, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = client.get("/healthz").json()
        if health["version"] == version:
            return health
        time.sleep(0.05)
    raise AssertionError(f"server never reached version {version}: {health}")


def test_503_until_a_champion_exists_then_predicts(registry):
    uri, register = registry
    with TestClient(create_app("serve_a", uri, poll_seconds=0.1)) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "model_loaded": False, "version": None, "default": "serve_a",
                                 "pipelines": {"serve_a": {"model": "serve_a", "model_loaded": False, "version": None}}}
        r = client.post("/v1/predict", json={"texts": ["a good film"]})
        assert r.status_code == 503
        assert r.json()["detail"] == "no champion model for serve_a yet: train and promote one (alias 'champion')"
        assert client.get("/v1/model").status_code == 503

        register("serve_a", KeywordModel(), champion=False)  # registered but not promoted: still 503
        time.sleep(0.3)
        assert client.post("/v1/predict", json={"texts": ["a good film"]}).status_code == 503

        v2 = register("serve_a", KeywordModel(), champion=True)
        assert wait_for_version(client, v2)["model_loaded"] is True
        r = client.post("/v1/predict", json={"texts": ["a good film", "a dull film"]})
        assert r.status_code == 200
        assert r.json() == {"model": "serve_a", "version": v2, "predictions": [
            {"label": "positive", "score": 0.75}, {"label": "negative", "score": 0.75}]}
        r = client.post("/v1/predict", json={"inputs": ["good"]})  # MLflow-style key
        assert r.json()["predictions"] == [{"label": "positive", "score": 0.75}]
        info = client.get("/v1/model").json()
        assert info["name"] == "serve_a" and info["version"] == v2
        assert info["run_id"] == MlflowClient(uri).get_model_version("serve_a", v2).run_id
        assert info["loaded_at"]


@pytest.mark.parametrize("body, message", [
    ({"texts": []}, "expected 1..256 texts, got 0"),
    ({"texts": ["x"] * 257}, "expected 1..256 texts, got 257"),
    ({"texts": ["fine", "  "]}, "non-empty: empty at positions [1]"),
    ({}, "exactly one of `texts` or `inputs`"),
    ({"texts": ["a"], "inputs": ["b"]}, "exactly one of `texts` or `inputs`"),
    ({"texts": "not a list"}, "valid list"),
    ({"text": ["a"]}, "Extra inputs are not permitted"),
])
def test_bad_requests_get_422_with_a_clear_message(registry, body, message):
    uri, _ = registry
    with TestClient(create_app("serve_unused", uri, poll_seconds=60)) as client:
        r = client.post("/v1/predict", json=body)
        assert r.status_code == 422
        assert message in str(r.json()["detail"])


def test_hot_swap_when_the_alias_moves(registry):
    uri, register = registry
    v1 = register("serve_b", KeywordModel(constant="positive"), champion=True)
    with TestClient(create_app("serve_b", uri, poll_seconds=0.05)) as client:
        wait_for_version(client, v1)

        # hammer the server while the alias moves: every answer comes wholly from one version
        answers: list[dict] = []
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                answers.append(client.post("/v1/predict", json={"texts": ["a", "b", "c"]}).json())

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            v2 = register("serve_b", KeywordModel(constant="negative"), champion=True)
            wait_for_version(client, v2)
            time.sleep(0.1)
        finally:
            stop.set()
            worker.join()

        expected = {v1: "positive", v2: "negative"}
        assert {a["version"] for a in answers} <= {v1, v2}
        for a in answers:
            assert {p["label"] for p in a["predictions"]} == {expected[a["version"]]}
        assert answers[-1]["version"] == v2
        assert client.get("/v1/model").json()["version"] == v2


def test_metrics_count_requests_by_outcome():
    from fastapi.testclient import TestClient

    from lakeforge.serve import create_app

    app = create_app("no_such_model_for_metrics", "sqlite:///:memory:", poll_seconds=3600)
    with TestClient(app) as client:
        assert client.post("/v1/predict", json={"texts": ["hello"]}).status_code == 503
        body = client.get("/metrics").text
    assert 'lakeforge_predict_requests_total{outcome="no_model"} 1.0' in body
    assert "lakeforge_served_model_version 0.0" in body


BINARY = ["negative", "positive"]
TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


class TopicIdModel(mlflow.pyfunc.PythonModel):
    """Answers the class *id* of the topic a text starts with: the server names it by the model's labels."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = model_input.iloc[:, 0].astype(str)
        ids = [TOPICS.index(t.split()[0]) if t.split()[0] in TOPICS else 0 for t in texts]
        return pd.DataFrame({"label": ids, "score": [0.5] * len(ids)})


def wait_for_pipeline(client: TestClient, pipeline: str, version: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = client.get("/healthz").json()
        if health["pipelines"][pipeline]["version"] == version:
            return health
        time.sleep(0.05)
    raise AssertionError(f"{pipeline} never reached version {version}: {health}")


def test_one_server_serves_pipelines_with_different_label_spaces(registry):
    uri, register = registry
    movies = register("serve_movies", KeywordModel(), champion=True, labels=BINARY)
    pipelines = [ServedPipeline("movies", "serve_movies", tuple(BINARY)),
                 ServedPipeline("topics", "serve_topics", tuple(TOPICS))]
    with TestClient(create_app(None, uri, poll_seconds=0.05, pipelines=pipelines)) as client:
        wait_for_pipeline(client, "movies", movies)
        listing = client.get("/v1/models").json()
        assert listing["default"] is None
        assert [(m["pipeline"], m["model"], m["loaded"], m["version"], m["labels"], m["labels_from"])
                for m in listing["models"]] == [("movies", "serve_movies", True, movies, BINARY, "model"),
                                                ("topics", "serve_topics", False, None, TOPICS, "pipeline")]
        assert listing["models"][0]["champion_version"] == movies
        assert "no serve_topics@champion yet" in listing["models"][1]["problem"]
        r = client.post("/v1/models/topics/predict", json={"texts": ["sports news"]})
        assert r.status_code == 503 and "no champion model for serve_topics" in r.json()["detail"]

        topics = register("serve_topics", TopicIdModel(), champion=True, labels=TOPICS)
        health = wait_for_pipeline(client, "topics", topics)
        assert health["pipelines"] == {"movies": {"model": "serve_movies", "model_loaded": True, "version": movies},
                                       "topics": {"model": "serve_topics", "model_loaded": True, "version": topics}}
        assert (health["default"], health["model_loaded"], health["version"]) == (None, True, None)

        r = client.post("/v1/models/movies/predict", json={"texts": ["a good film", "a dull film"]})
        assert r.json() == {"model": "serve_movies", "version": movies, "predictions": [
            {"label": "positive", "score": 0.75}, {"label": "negative", "score": 0.75}]}
        r = client.post("/v1/models/topics/predict", json={"inputs": ["tech giant", "politics today", "sports"]})
        assert r.json() == {"model": "serve_topics", "version": topics, "predictions": [
            {"label": "tech", "score": 0.5}, {"label": "politics", "score": 0.5}, {"label": "sports", "score": 0.5}]}
        info = client.get("/v1/models/topics").json()
        assert (info["name"], info["version"], info["pipeline"], info["labels"]) == ("serve_topics", topics, "topics",
                                                                                     TOPICS)
        assert client.get("/v1/models").json()["models"][1]["labels_from"] == "model"

        # several pipelines and no default: the old routes name the per-pipeline ones
        r = client.post("/v1/predict", json={"texts": ["a good film"]})
        assert r.status_code == 400
        assert "POST /v1/models/movies/predict, POST /v1/models/topics/predict" in r.json()["detail"]
        r = client.get("/v1/model")
        assert r.status_code == 400 and "GET /v1/models/movies" in r.json()["detail"]
        assert client.post("/v1/predict", json={"texts": []}).status_code == 422  # the body is checked first

        for route in ("/v1/models/nope/predict",):
            r = client.post(route, json={"texts": ["x"]})
            assert r.status_code == 404
            assert r.json()["detail"] == "unknown pipeline 'nope'; served pipelines: ['movies', 'topics']"
        assert client.get("/v1/models/nope").status_code == 404

        body = client.get("/metrics").text
        assert 'lakeforge_pipeline_predict_requests_total{outcome="ok",pipeline="topics"} 1.0' in body
        assert 'lakeforge_pipeline_predict_requests_total{outcome="no_model",pipeline="topics"} 1.0' in body
        assert 'lakeforge_predict_requests_total{outcome="unknown_pipeline"} 1.0' in body
        assert 'lakeforge_predict_requests_total{outcome="no_default"} 1.0' in body
        assert f'lakeforge_pipeline_model_version{{pipeline="topics"}} {float(topics)}' in body
        assert "lakeforge_served_model_version 0.0" in body  # no default pipeline


def test_the_old_routes_answer_for_the_only_pipeline(registry):
    uri, register = registry
    version = register("serve_solo", KeywordModel(), champion=True, labels=BINARY)
    with TestClient(create_app(None, uri, poll_seconds=0.05,
                               pipelines=[ServedPipeline("solo", "serve_solo", tuple(BINARY))])) as client:
        health = wait_for_pipeline(client, "solo", version)
        assert (health["default"], health["model_loaded"], health["version"]) == ("solo", True, version)
        r = client.post("/v1/predict", json={"texts": ["good"]})
        assert r.json() == {"model": "serve_solo", "version": version,
                            "predictions": [{"label": "positive", "score": 0.75}]}
        assert r.json() == client.post("/v1/models/solo/predict", json={"texts": ["good"]}).json()
        assert client.get("/v1/model").json()["version"] == version
        assert f"lakeforge_served_model_version {float(version)}" in client.get("/metrics").text


def test_the_default_pipeline_is_named_by_pipeline_or_model_name(registry):
    uri, register = registry
    movies = register("serve_dm", KeywordModel(constant="positive"), champion=True, labels=BINARY)
    topics = register("serve_dt", TopicIdModel(), champion=True, labels=TOPICS)
    pipelines = [ServedPipeline("dm", "serve_dm"), ServedPipeline("dt", "serve_dt")]
    for default in ("dt", "serve_dt"):
        with TestClient(create_app(default, uri, poll_seconds=0.05, pipelines=pipelines)) as client:
            wait_for_pipeline(client, "dt", topics)
            assert client.get("/healthz").json()["default"] == "dt"
            r = client.post("/v1/predict", json={"texts": ["business as usual"]})
            assert r.json() == {"model": "serve_dt", "version": topics,
                                "predictions": [{"label": "business", "score": 0.5}]}
            wait_for_pipeline(client, "dm", movies)
            assert client.post("/v1/models/dm/predict", json={"texts": ["x"]}).json()["predictions"] == [
                {"label": "positive", "score": 0.75}]


def test_served_pipelines_come_from_the_pipeline_files():
    from lakeforge.config import PipelineConfig
    from lakeforge.serve.app import served_pipelines

    bbc, movies = PipelineConfig.load("bbc_news"), PipelineConfig.load("movie_reviews")
    assert ServedPipeline.of(bbc) == ServedPipeline("bbc_news", "bbc_news_topic", tuple(TOPICS))
    assert served_pipelines([bbc, movies], None)[1] is None
    assert served_pipelines([movies], None) == ([ServedPipeline.of(movies)], "movie_reviews")
    assert served_pipelines([bbc, movies], "movie_reviews_sentiment")[1] == "movie_reviews"
    served, default = served_pipelines([bbc], "other_model")  # a registered model outside the files is served too
    assert default == "other_model" and [s.name for s in served] == ["bbc_news", "other_model"]

    app = create_app(None, "sqlite:///:memory:")  # no pipelines given: every pipeline file (watchers not started)
    assert set(app.state.watchers) >= {"bbc_news", "movie_reviews"} and app.state.default_pipeline is None
    assert app.state.watchers["bbc_news"].model_name == "bbc_news_topic"
    assert app.state.watchers["bbc_news"].labels == TOPICS
