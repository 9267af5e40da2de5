"""The model server (lakeforge.serve): 503 before a champion, predictions, 422s, hot swap."""

from __future__ import annotations

import threading
import time

import mlflow
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from lakeforge.serve import create_app


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

    def register(name: str, model: KeywordModel, champion: bool = False) -> str:
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=[])
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
        assert health.json() == {"status": "ok", "model_loaded": False, "version": None}
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
