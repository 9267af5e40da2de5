"""The MLflow model registry as lakeforge uses it: one client per tracking URI and the ``champion``
alias that serving follows and the promotion gate moves (:mod:`lakeforge.evaluate`).
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
