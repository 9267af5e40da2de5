"""The MLflow model registry as lakeforge uses it: one client per tracking URI and the ``champion``
alias that serving follows and the promotion gate moves (:mod:`lakeforge.evaluate`), and the label
space a registered model carries in its metadata (:data:`LABELS_METADATA_KEY`, :func:`model_labels`).
"""

from __future__ import annotations

CHAMPION = "champion"
LABELS_METADATA_KEY = "lakeforge.labels"  # model metadata key holding the id -> label list


def mlflow_client(tracking_uri: str):
    """An MLflow client whose tracking and registry are both ``tracking_uri``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def champion_version(client, name: str) -> str | None:
    """Version the ``champion`` alias of ``name`` points at, or None (no alias, or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def model_labels(model) -> list[str] | None:
    """The label space (class names in id order) a loaded MLflow pyfunc carries in its metadata under
    :data:`LABELS_METADATA_KEY` (lakeforge's training and baseline always write it); None without it."""
    meta = getattr(getattr(model, "metadata", None), "metadata", None) or {}
    labels = meta.get(LABELS_METADATA_KEY)
    if not labels or not isinstance(labels, (list, tuple)):
        return None
    return [str(x) for x in labels]
