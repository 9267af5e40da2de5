"""Evaluate: decide whether the models one training run registered replace the ``champion``.

* :mod:`~lakeforge.evaluate.eval_set` — the rows every candidate is scored on;
* :mod:`~lakeforge.evaluate.gate` — :class:`ModelPromoter`: candidate vs champion on the same rows
  (accuracy, macro-F1, per-class precision/recall over the pipeline's labels), the alias moved only if
  the candidate is at least as accurate, the decision as version tags;
* :mod:`~lakeforge.evaluate.candidates` — the order candidates are gated in, and the tie rule.

:func:`run` is what the DAG's ``promote_model`` task calls.
"""

from __future__ import annotations

from typing import Any

from lakeforge.stage.run import StageRun


def run(stage: StageRun, train_summary: str | dict | None, dag_id: str | None = None,
        airflow_run_id: str | None = None) -> dict[str, Any]:
    """Gate every candidate of the run's training against the champion on the evaluation set.

    Args:
        stage: pipeline, partition and lake of the run.
        train_summary: the training task's summary (its XCom: a dict or the JSON line); when it is
            unusable, the training's recorded result for ``dag_id``/``airflow_run_id`` is read instead.
    Returns:
        ``{"decisions": [one per candidate, in gating order], "champion": version or None}``.
    """
    from lakeforge.evaluate.candidates import candidates_of, gate_candidates
    from lakeforge.evaluate.eval_set import eval_table
    from lakeforge.evaluate.gate import ModelPromoter
    from lakeforge.train.summary import summary_of

    summary = summary_of(stage, train_summary, dag_id, airflow_run_id)
    spec = stage.pipeline.model
    # the eval table's integer labels are ids in the pipeline's label space: score every model over it
    promoter = ModelPromoter(stage.settings.require("mlflow_uri"), spec.registered_name, spec.min_accuracy,
                             labels=stage.pipeline.labels)
    return gate_candidates(promoter, candidates_of(summary), eval_table(stage))


__all__ = ["run"]
