"""The model server's HTTP app: one process serves the ``champion`` of every pipeline.

Each served pipeline has its own :class:`~lakeforge.serve.watcher.ChampionWatcher` following
``models:/<registered model>@champion``. A request takes its watcher's reference once, so it is
answered wholly by the old or wholly by the new model, never by a half-loaded one. The labels of an
answer are the model's (its ``lakeforge.labels`` metadata names integer outputs).

Endpoints:

* ``POST /v1/models/{pipeline}/predict`` — ``{"texts": [...]}`` (or ``{"inputs": [...]}``) ->
  ``{"model", "version", "predictions": [{"label", "score"}, ...]}``; 404 for an unknown pipeline
  (naming the served ones), 503 while it has no champion;
* ``GET /v1/models`` — every pipeline: registered model, champion version, loaded version, labels;
* ``GET /v1/models/{pipeline}`` — the loaded version of one pipeline (503 before one is loaded);
* ``POST /v1/predict``, ``GET /v1/model`` — the same for the *default* pipeline: the one named at the
  start (``lakeforge serve --model``, ``LAKEFORGE_SERVE_MODEL``: a pipeline or registered model name),
  else the only one; with several and no default they answer 400 naming the per-pipeline routes;
* ``GET /healthz`` — liveness, and per pipeline whether a model is loaded and which version;
* ``GET /metrics`` — Prometheus: requests and latency by outcome, texts scored, served versions (in
  total and per pipeline).

``lakeforge serve`` calls :func:`main`, which serves every pipeline of the pipeline dirs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lakeforge.errors import ConfigError
from lakeforge.registry import CHAMPION
from lakeforge.serve.watcher import ChampionWatcher, LoadedModel

log = logging.getLogger(__name__)

MAX_TEXTS = 256  # texts per request
#: Names the default pipeline of the unversioned routes (a pipeline or registered model name).
DEFAULT_ENV = "LAKEFORGE_SERVE_MODEL"


class PredictRequest(BaseModel):
    """``{"texts": [...]}`` or, as MLflow's scoring server takes it, ``{"inputs": [...]}``."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] | None = Field(default=None, description=f"1..{MAX_TEXTS} non-empty texts")
    inputs: list[str] | None = Field(default=None, description="alias of `texts`")

    @model_validator(mode="after")
    def _one_non_empty_list(self) -> "PredictRequest":
        if (self.texts is None) == (self.inputs is None):
            raise ValueError("give exactly one of `texts` or `inputs`: a list of 1..256 non-empty strings")
        items = self.items
        if not 1 <= len(items) <= MAX_TEXTS:
            raise ValueError(f"expected 1..{MAX_TEXTS} texts, got {len(items)}")
        empty = [i for i, t in enumerate(items) if not t.strip()]
        if empty:
            raise ValueError(f"texts must be non-empty: empty at positions {empty[:10]}")
        return self

    @property
    def items(self) -> list[str]:
        return self.texts if self.texts is not None else self.inputs  # type: ignore[return-value]


@dataclass(frozen=True)
class ServedPipeline:
    """One pipeline the server answers for: its name (the route's), registered model and label space."""

    name: str  # pipeline name: /v1/models/<name>/predict
    registered_name: str  # MLflow registered model whose champion is served
    labels: tuple[str, ...] | None = None  # the pipeline's label space (shown until a model is loaded)

    @classmethod
    def of(cls, pipeline: Any) -> "ServedPipeline":
        """From a :class:`~lakeforge.config.PipelineConfig`, a ``ServedPipeline`` or a registered model name."""
        if isinstance(pipeline, ServedPipeline):
            return pipeline
        if isinstance(pipeline, str):
            return cls(pipeline, pipeline)
        labels = getattr(pipeline, "labels", None) or getattr(pipeline.model, "labels", None)
        return cls(pipeline.name, pipeline.model.registered_name, tuple(labels) if labels else None)


def served_pipelines(pipelines: Sequence[Any], default: str | None) -> tuple[list[ServedPipeline], str | None]:
    """``(pipelines to serve, name of the default one or None)``.

    ``default`` names a pipeline or its registered model; a name that neither is gets served too, as a
    pipeline of that name (a registered model outside the pipeline files). Without ``default`` the only
    pipeline is the default; with several there is none.
    """
    served: dict[str, ServedPipeline] = {}
    for p in pipelines:
        entry = ServedPipeline.of(p)
        if entry.name in served:
            log.warning("pipeline %s is configured twice: serving the first (%s)", entry.name,
                        served[entry.name].registered_name)
            continue
        served[entry.name] = entry
    if default:
        match = served.get(default) or next((e for e in served.values() if e.registered_name == default), None)
        if match is None:
            match = served[default] = ServedPipeline(default, default)
        return list(served.values()), match.name
    return list(served.values()), (next(iter(served)) if len(served) == 1 else None)


class _Metrics:
    """Prometheus metrics of one app (own registry, so several apps in one process do not clash)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("lakeforge_predict_requests", "predict requests by outcome", ["outcome"],
                                registry=self.registry)
        self.texts = Counter("lakeforge_predict_texts", "texts scored", registry=self.registry)
        self.latency = Histogram("lakeforge_predict_seconds", "model inference time per request",
                                 registry=self.registry)
        self.version = Gauge("lakeforge_served_model_version",
                             "registered version the default pipeline serves (0: none, or no default)",
                             registry=self.registry)
        self.pipeline_requests = Counter("lakeforge_pipeline_predict_requests",
                                         "predict requests by pipeline and outcome", ["pipeline", "outcome"],
                                         registry=self.registry)
        self.pipeline_version = Gauge("lakeforge_pipeline_model_version",
                                      "registered version each pipeline serves (0: none)", ["pipeline"],
                                      registry=self.registry)

    def count(self, pipeline: str | None, outcome: str) -> None:
        self.requests.labels(outcome=outcome).inc()
        if pipeline is not None:
            self.pipeline_requests.labels(pipeline=pipeline, outcome=outcome).inc()


def _version_number(current: LoadedModel | None) -> float:
    return float(current.version) if current and str(current.version).isdigit() else 0.0


def _label_names(labels: Sequence[Any], names: list[str] | None) -> list[str]:
    """Model outputs as label names: integer class ids are looked up in the model's label space."""
    import numbers

    out = []
    for label in labels:
        if names and isinstance(label, numbers.Integral) and not isinstance(label, bool) and 0 <= int(label) < len(names):
            out.append(names[int(label)])
        else:
            out.append(str(label))
    return out


def create_app(model_name: str | None = None, tracking_uri: str | None = None, poll_seconds: float = 5.0, *,
               pipelines: Sequence[Any] | None = None) -> FastAPI:
    """The FastAPI app serving ``models:/<registered model>@champion`` of each pipeline from ``tracking_uri``.

    Args:
        model_name: the default pipeline of ``/v1/predict`` and ``/v1/model`` (a pipeline name or its
            registered model name; another name is served too, under its own name). With
            ``pipelines`` None it is the only model served (``create_app("my_model", uri)``).
        tracking_uri: MLflow tracking/registry server.
        poll_seconds: how often each alias is resolved (hot-swap latency).
        pipelines: what to serve: :class:`~lakeforge.config.PipelineConfig`s, :class:`ServedPipeline`s
            or registered model names; None: only ``model_name``, or, without it, every pipeline of
            the pipeline dirs (:func:`lakeforge.config.all_pipelines`).
    Raises:
        ConfigError: no tracking URI, or nothing to serve.
    """
    from contextlib import asynccontextmanager

    if not tracking_uri:
        raise ConfigError("the model server needs an MLflow tracking URI (LAKEFORGE_MLFLOW_URI or --tracking-uri)")
    if pipelines is None:
        if model_name:
            pipelines = []
        else:
            from lakeforge.config import all_pipelines

            pipelines = all_pipelines()
    entries, default = served_pipelines(pipelines, model_name)
    if not entries:
        raise ConfigError("nothing to serve: no pipeline files and no --model; add pipelines/<name>.yaml")
    by_name = {e.name: e for e in entries}
    watchers = {e.name: ChampionWatcher(e.registered_name, tracking_uri, poll_seconds,
                                        labels=list(e.labels) if e.labels else None) for e in entries}
    names = sorted(by_name)

    def not_ready(entry: ServedPipeline) -> str:
        return f"no champion model for {entry.registered_name} yet: train and promote one (alias '{CHAMPION}')"

    def lookup(pipeline: str, predict: bool = False) -> ServedPipeline:
        entry = by_name.get(pipeline)
        if entry is None:
            if predict:  # the request counters count predict requests only
                metrics.count(None, "unknown_pipeline")
            raise HTTPException(status_code=404, detail=f"unknown pipeline {pipeline!r}; served pipelines: {names}")
        return entry

    def default_entry(route: str) -> ServedPipeline:
        if default is None:
            if route == "predict":
                metrics.count(None, "no_default")
            routes = ", ".join(f"{'POST' if route == 'predict' else 'GET'} /v1/models/{n}"
                               f"{'/predict' if route == 'predict' else ''}" for n in names)
            raise HTTPException(status_code=400, detail=(
                f"this server serves several pipelines ({', '.join(names)}) and none is the default: use {routes} "
                f"(GET /v1/models lists them), or start it with `lakeforge serve --model <pipeline>` / {DEFAULT_ENV}"))
        return by_name[default]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for watcher in watchers.values():
            watcher.start()  # loading happens in the background: the server answers /healthz at once
        try:
            yield
        finally:
            for watcher in watchers.values():
                watcher.stop()

    app = FastAPI(title="lakeforge model server", lifespan=lifespan)
    app.state.watchers = watchers  # pipeline name -> ChampionWatcher
    app.state.watcher = watchers[default] if default is not None else None  # the default pipeline's
    app.state.default_pipeline = default
    metrics = _Metrics()

    def model_info(entry: ServedPipeline) -> dict[str, Any]:
        current = watchers[entry.name].current
        if current is None:
            raise HTTPException(status_code=503, detail=not_ready(entry))
        return {"name": current.name, "version": current.version, "run_id": current.run_id,
                "loaded_at": current.loaded_at.isoformat(), "pipeline": entry.name,
                "labels": current.labels if current.labels is not None else
                (list(entry.labels) if entry.labels else None)}

    def predict_with(entry: ServedPipeline, request: PredictRequest) -> dict[str, Any]:
        import pandas as pd

        current = watchers[entry.name].current  # one read: this request is answered by this version only
        if current is None:
            metrics.count(entry.name, "no_model")
            raise HTTPException(status_code=503, detail=not_ready(entry))
        texts = request.items
        t0 = time.perf_counter()
        out = current.model.predict(pd.DataFrame({"text": texts}))
        metrics.latency.observe(time.perf_counter() - t0)
        if isinstance(out, pd.DataFrame):
            labels = _label_names(out["label"].tolist(), current.labels)
            preds = [{"label": label, "score": float(score)} for label, score in zip(labels, out["score"])]
        else:  # a model that returns bare labels breaks the contract's score, not the request
            preds = [{"label": label, "score": None} for label in _label_names(list(out), current.labels)]
        if len(preds) != len(texts):
            metrics.count(entry.name, "error")
            raise HTTPException(status_code=500, detail=f"model returned {len(preds)} predictions for {len(texts)} texts")
        metrics.count(entry.name, "ok")
        metrics.texts.inc(len(texts))
        return {"model": current.name, "version": current.version, "predictions": preds}

    @app.get("/metrics")
    def prometheus_metrics():
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for name, watcher in watchers.items():
            metrics.pipeline_version.labels(pipeline=name).set(_version_number(watcher.current))
        metrics.version.set(_version_number(watchers[default].current) if default is not None else 0.0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        per = {}
        for name in names:
            current = watchers[name].current
            per[name] = {"model": by_name[name].registered_name, "model_loaded": current is not None,
                         "version": current.version if current else None}
        top = per[default] if default is not None else {"model_loaded": all(p["model_loaded"] for p in per.values()),
                                                        "version": None}
        return {"status": "ok", "model_loaded": top["model_loaded"], "version": top["version"],
                "default": default, "pipelines": per}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        out = []
        for name in names:
            entry, watcher = by_name[name], watchers[name]
            current = watcher.current
            labels, source = (current.labels, "model") if current is not None and current.labels is not None else \
                ((list(entry.labels), "pipeline") if entry.labels else (None, None))
            out.append({"pipeline": name, "model": entry.registered_name, "champion_version": watcher.champion,
                        "loaded": current is not None, "version": current.version if current else None,
                        "run_id": current.run_id if current else None,
                        "loaded_at": current.loaded_at.isoformat() if current else None,
                        "labels": labels, "labels_from": source, "problem": watcher.problem})
        return {"default": default, "models": out}

    @app.get("/v1/models/{pipeline}")
    def pipeline_model(pipeline: str) -> dict[str, Any]:
        return model_info(lookup(pipeline))

    @app.post("/v1/models/{pipeline}/predict")
    def pipeline_predict(pipeline: str, request: PredictRequest) -> dict[str, Any]:
        # sync endpoint: FastAPI runs it in a worker thread, so inference does not block the event loop
        return predict_with(lookup(pipeline, predict=True), request)

    @app.get("/v1/model")
    def default_model() -> dict[str, Any]:
        return model_info(default_entry("model"))

    @app.post("/v1/predict")
    def predict(request: PredictRequest) -> dict[str, Any]:
        return predict_with(default_entry("predict"), request)

    return app


def main(host: str, port: int, model_name: str | None = None, tracking_uri: str | None = None,
         poll_seconds: float = 5.0, pipelines: Sequence[Any] | None = None) -> None:
    """Serve every pipeline (``pipelines``, default: all of the pipeline dirs) with uvicorn until
    interrupted (``lakeforge serve``). ``model_name`` (else ``LAKEFORGE_SERVE_MODEL``) names the default
    pipeline of ``/v1/predict``; without either, a single pipeline is the default and several have none."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if pipelines is None:
        from lakeforge.config import all_pipelines

        pipelines = all_pipelines()
    default = model_name or os.environ.get(DEFAULT_ENV) or None
    app = create_app(default, tracking_uri, poll_seconds, pipelines=pipelines)
    served = ", ".join(f"{name} ({w.model_name}@{CHAMPION})" for name, w in app.state.watchers.items())
    log.info("serving %s from %s on http://%s:%d (default: %s)", served, tracking_uri, host, port,
             app.state.default_pipeline or "none")
    uvicorn.run(app, host=host, port=port, log_level="info")
