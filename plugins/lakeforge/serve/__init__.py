"""Serve: the model server (``lakeforge serve``) answering with the MLflow ``champion``, hot-swapped.

* :mod:`~lakeforge.serve.watcher` — :class:`ChampionWatcher`: follows the alias, loads beside, swaps;
* :mod:`~lakeforge.serve.app` — the FastAPI app (``/v1/predict``, ``/v1/model``, ``/healthz``,
  ``/metrics``) and :func:`main`.
"""

from lakeforge.serve.app import MAX_TEXTS, PredictRequest, create_app, main
from lakeforge.serve.watcher import ChampionWatcher, LoadedModel

__all__ = ["ChampionWatcher", "LoadedModel", "MAX_TEXTS", "PredictRequest", "create_app", "main"]
