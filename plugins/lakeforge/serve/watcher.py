"""Following the ``champion`` alias: load the version it points at beside the served one, then swap.

A background thread (:class:`ChampionWatcher`) resolves ``models:/<name>@champion`` every
``poll_seconds``; when the alias points at a version other than the one being served, it loads that
version as an MLflow pyfunc *beside* the current one and then swaps a single reference, so requests
keep being served while a new version loads. A version that fails to load is retried after
:data:`RETRY_FAILED_LOAD_S`, and the old one keeps serving. The model server runs one watcher per
pipeline (:mod:`lakeforge.serve.app`); each loaded model carries the label space of its metadata.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from lakeforge.registry import CHAMPION, champion_version, mlflow_client, model_labels

log = logging.getLogger(__name__)

RETRY_FAILED_LOAD_S = 60.0  # a version that failed to load is retried after this long, not every poll


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model version; replaced whole, never mutated."""

    name: str  # registered model name
    version: str  # registered version
    run_id: str | None  # MLflow run that produced it
    loaded_at: datetime  # when this server finished loading it (UTC)
    model: Any  # mlflow.pyfunc.PyFuncModel
    labels: list[str] | None = None  # its label space (``lakeforge.labels`` metadata); None: it has none


class ChampionWatcher:
    """Keeps the newest ``champion`` loaded; ``current`` is swapped atomically (one reference)."""

    def __init__(self, model_name: str, tracking_uri: str, poll_seconds: float = 5.0,
                 labels: list[str] | None = None):
        """
        Args:
            model_name: registered model name.
            tracking_uri: MLflow tracking/registry server.
            poll_seconds: how often the alias is resolved.
            labels: the label space the model should have (its pipeline's ``labels``): a loaded
                version whose metadata says otherwise is served, with a warning.
        """
        self.model_name = model_name
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        self.labels = list(labels) if labels is not None else None
        self.current: LoadedModel | None = None
        self.champion: str | None = None  # the version the alias pointed at when last resolved
        self._failed: dict[str, float] = {}  # version -> monotonic time of its last failed load
        self._last_problem: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @cached_property
    def client(self):
        return mlflow_client(self.tracking_uri)  # created on first use: constructing touches no server

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"champion-watcher-{self.model_name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except Exception as exc:  # a registry outage must not kill the watcher: report, retry next poll
                self._report(f"cannot check {self.model_name}@{CHAMPION}: {exc}")
            self._stop.wait(self.poll_seconds)

    def check_once(self) -> bool:
        """Resolve the alias; load and swap in its version if it is new. True when a swap happened."""
        version = champion_version(self.client, self.model_name)
        self.champion = version
        current = self.current
        if version is None:
            if current is not None:
                self._report(f"alias {self.model_name}@{CHAMPION} is gone; still serving version {current.version}")
            else:
                self._report(f"no {self.model_name}@{CHAMPION} yet; polling every {self.poll_seconds}s")
            return False
        if current is not None and current.version == version:
            return False
        failed_at = self._failed.get(version)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_LOAD_S:
            return False

        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        t0 = time.perf_counter()
        try:
            # load by version number, not by alias: the alias may move again while we load
            model = mlflow.pyfunc.load_model(f"models:/{self.model_name}/{version}")
            run_id = self.client.get_model_version(self.model_name, version).run_id
        except Exception as exc:
            self._failed[version] = time.monotonic()
            log.error("failed to load %s version %s (keeping %s; retry in %.0fs): %s", self.model_name, version,
                      current.version if current else "nothing", RETRY_FAILED_LOAD_S, exc)
            self._last_problem = f"failed to load {self.model_name} version {version}: {str(exc)[:300]}"
            return False
        labels = model_labels(model)
        if self.labels is not None and labels is not None and labels != self.labels:
            log.warning("%s version %s has labels %s, its pipeline declares %s: serving the model's", self.model_name,
                        version, labels, self.labels)
        self.current = LoadedModel(self.model_name, version, run_id, datetime.now(timezone.utc), model,
                                   labels)  # the swap
        self._failed.pop(version, None)
        self._last_problem = None
        if current is None:
            log.info("loaded %s version %s (run %s) in %.1fs", self.model_name, version, run_id, time.perf_counter() - t0)
        else:
            log.info("hot-swapped %s from version %s to %s (run %s) in %.1fs", self.model_name, current.version,
                     version, run_id, time.perf_counter() - t0)
        return True

    @property
    def problem(self) -> str | None:
        """The lasting condition last reported (no champion yet, a registry outage), or None."""
        return self._last_problem

    def _report(self, problem: str) -> None:
        # log a lasting condition once, not every poll
        if problem != self._last_problem:
            log.warning(problem)
            self._last_problem = problem
