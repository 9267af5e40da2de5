"""The model server's HTTP app: answers with the version the :class:`~lakeforge.serve.watcher.ChampionWatcher`
holds. A request takes the watcher's reference once, so it is answered wholly by the old or wholly by
the new model, never by a half-loaded one.

Endpoints: ``GET /healthz``, ``GET /v1/model``, ``POST /v1/predict``, ``GET /metrics`` (Prometheus:
requests and latency by outcome, texts scored, model swaps, served version). ``lakeforge serve`` calls
:func:`main`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lakeforge.registry import CHAMPION
from lakeforge.serve.watcher import ChampionWatcher

log = logging.getLogger(__name__)

MAX_TEXTS = 256  # texts per request


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
        self.version = Gauge("lakeforge_served_model_version", "registered version being served (0: none)",
                             registry=self.registry)


def create_app(model_name: str, tracking_uri: str, poll_seconds: float = 5.0) -> FastAPI:
    """The FastAPI app serving ``models:/<model_name>@champion`` from ``tracking_uri``.

    Args:
        model_name: registered model name.
        tracking_uri: MLflow tracking/registry server.
        poll_seconds: how often the alias is resolved (hot-swap latency).
    """
    from contextlib import asynccontextmanager

    watcher = ChampionWatcher(model_name, tracking_uri, poll_seconds)
    not_ready = f"no champion model for {model_name} yet: train and promote one (alias '{CHAMPION}')"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher.start()  # loading happens in the background: the server answers /healthz at once
        try:
            yield
        finally:
            watcher.stop()

    app = FastAPI(title="lakeforge model server", lifespan=lifespan)
    app.state.watcher = watcher
    metrics = _Metrics()

    @app.get("/metrics")
    def prometheus_metrics():
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        current = watcher.current
        metrics.version.set(float(current.version) if current and str(current.version).isdigit() else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        current = watcher.current
        return {"status": "ok", "model_loaded": current is not None, "version": current.version if current else None}

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        current = watcher.current
        if current is None:
            raise HTTPException(status_code=503, detail=not_ready)
        return {"name": current.name, "version": current.version, "run_id": current.run_id,
                "loaded_at": current.loaded_at.isoformat()}

    @app.post("/v1/predict")
    def predict(request: PredictRequest) -> dict[str, Any]:
        # sync endpoint: FastAPI runs it in a worker thread, so inference does not block the event loop
        import pandas as pd

        current = watcher.current  # one read: this request is answered by this version only
        if current is None:
            metrics.requests.labels(outcome="no_model").inc()
            raise HTTPException(status_code=503, detail=not_ready)
        texts = request.items
        t0 = time.perf_counter()
        out = current.model.predict(pd.DataFrame({"text": texts}))
        metrics.latency.observe(time.perf_counter() - t0)
        metrics.requests.labels(outcome="ok").inc()
        metrics.texts.inc(len(texts))
        if isinstance(out, pd.DataFrame):
            preds = [{"label": str(label), "score": float(score)} for label, score in zip(out["label"], out["score"])]
        else:  # a model that returns bare labels breaks the contract's score, not the request
            preds = [{"label": str(label), "score": None} for label in list(out)]
        if len(preds) != len(texts):
            raise HTTPException(status_code=500, detail=f"model returned {len(preds)} predictions for {len(texts)} texts")
        return {"model": current.name, "version": current.version, "predictions": preds}

    return app


def main(host: str, port: int, model_name: str, tracking_uri: str, poll_seconds: float = 5.0) -> None:
    """Run the server with uvicorn until interrupted (``lakeforge serve``)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("serving %s@%s from %s on http://%s:%d", model_name, CHAMPION, tracking_uri, host, port)
    uvicorn.run(create_app(model_name, tracking_uri, poll_seconds), host=host, port=port, log_level="info")
