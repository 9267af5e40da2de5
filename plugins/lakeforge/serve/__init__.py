"""Serve: the model server (``lakeforge serve``) answering with each pipeline's MLflow ``champion``, hot-swapped.

* :mod:`~lakeforge.serve.watcher` — :class:`ChampionWatcher`: follows one alias, loads beside, swaps;
* :mod:`~lakeforge.serve.app` — the FastAPI app (``/v1/models/{pipeline}/predict``, ``/v1/models``,
  the default pipeline's ``/v1/predict`` and ``/v1/model``, ``/healthz``, ``/metrics``), one watcher
  per pipeline, and :func:`main`.
"""

from lakeforge.serve.app import MAX_TEXTS, PredictRequest, ServedPipeline, create_app, main
from lakeforge.serve.watcher import ChampionWatcher, LoadedModel

__all__ = ["ChampionWatcher", "LoadedModel", "MAX_TEXTS", "PredictRequest", "ServedPipeline", "create_app", "main"]
