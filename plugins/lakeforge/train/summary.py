"""What a finished training run leaves for the stages after it, readable without torch.

A training run of an Airflow task is keyed by :func:`run_key` (``<dag_id>/<run_id>``, path-safe);
its checkpoint prefix in the lake (:mod:`lakeforge.train.checkpoint`) ends with ``DONE.json``, the
run's :class:`~lakeforge.train.config.TrainResult`. The evaluate stage reads the training task's
summary from its XCom (the last stdout line of ``jobs/train.py``) and, when that is unusable, from
``DONE.json`` (:func:`summary_of`). Nothing here imports torch, transformers or mlflow.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lakeforge.errors import LakeforgeError
from lakeforge.stage.run import safe_run_id

if TYPE_CHECKING:
    from lakeforge.stage.run import StageRun

#: Files of a run's checkpoint prefix: the commit point, the finished run's result, its MLflow run.
LATEST, DONE, RUN = "LATEST.json", "DONE.json", "RUN.json"


def run_key(dag_id: str | None, run_id: str | None) -> str | None:
    """Path-safe key of one Airflow task's training (``<dag_id>/<run_id>``); None outside Airflow."""
    if not dag_id or not run_id:
        return None
    return f"{safe_run_id(dag_id)}/{safe_run_id(run_id)}"


def recorded_result(stage: StageRun, dag_id: str | None, run_id: str | None) -> dict[str, Any] | None:
    """The recorded result (``DONE.json``) of the training task of Airflow run ``dag_id``/``run_id``
    on the stage's pipeline and partition, with ``"partition": stage.partition.path`` added; None if
    that training has not finished (or outside Airflow)."""
    from lakeforge.train.checkpoint import store_for  # torch-free at import (it loads torch lazily)

    key = run_key(dag_id, run_id)
    if key is None:
        return None
    done = store_for(stage.lake, stage.pipeline.name, stage.partition, key).read_json(DONE)
    return {**done, "partition": stage.partition.path} if done else None


def summary_of(stage: StageRun, xcom_value: str | dict | None, dag_id: str | None, run_id: str | None) -> dict[str, Any]:
    """The training task's summary: its XCom (a dict, or the JSON line with a ``version``), else the
    run's ``DONE.json`` in the lake (:func:`recorded_result`).

    Raises:
        LakeforgeError: neither is there (the training task must be rerun).
    """
    if isinstance(xcom_value, dict):
        return xcom_value
    try:
        summary = json.loads(xcom_value or "")
        if isinstance(summary, dict) and summary.get("version"):
            return summary
    except json.JSONDecodeError:
        pass
    done = recorded_result(stage, dag_id, run_id)
    if not done:
        raise LakeforgeError(f"train_model left no summary (XCom {str(xcom_value)[:200]!r}) and no DONE.json "
                             f"for {run_id}: rerun train_model")
    return done
