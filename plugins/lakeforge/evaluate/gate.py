"""The promotion decision: a candidate model version becomes ``champion`` only if it really is better.

:class:`ModelPromoter` evaluates the candidate and the current champion (if any) on the *same* eval
table, loading both as MLflow pyfuncs (any model that honours the lakeforge pyfunc contract: a
``text`` column in, ``label``/``score`` out — the fine-tuned MiniLM and the TF-IDF baseline alike).
It moves the ``champion`` alias to the candidate when there is no champion yet, or when the
candidate's accuracy is >= the champion's and >= ``min_accuracy``. The decision, the reason and
both accuracies are written as tags on the candidate version, so the registry UI shows why every
version was or was not promoted.
"""

from __future__ import annotations

import logging
from functools import cached_property
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from lakeforge.errors import ConfigError, DataQualityError
from lakeforge.registry import CHAMPION, LABELS_METADATA_KEY, champion_version, mlflow_client

log = logging.getLogger(__name__)

TAG_PREFIX = "lakeforge.promotion."


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of one gate evaluation."""

    promoted: bool  # the alias now points at the candidate
    candidate_version: str  # version evaluated
    champion_version_before: str | None  # version the alias pointed at before (None: no champion)
    candidate_accuracy: float  # accuracy of the candidate on the eval table
    champion_accuracy: float | None  # accuracy of the previous champion on the same table
    reason: str  # snake_case reason: first_champion | beats_champion | below_champion | below_min_accuracy | already_champion

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _eval_frame(eval_table):
    """``(texts, labels)`` of an Arrow table or pandas DataFrame with ``text`` and ``label`` columns."""
    import pandas as pd

    frame = eval_table if isinstance(eval_table, pd.DataFrame) else eval_table.to_pandas()
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise DataQualityError(f"eval table lacks columns {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise DataQualityError("eval table is empty: the gate needs labelled rows to compare models")
    return frame["text"].astype(str).tolist(), frame["label"].tolist()


class ModelPromoter:
    """Compares a candidate with the champion on one eval table and moves the alias if it wins."""

    def __init__(self, tracking_uri: str, model_name: str, min_accuracy: float,
                 labels: Sequence[str] | None = None):
        """
        Args:
            tracking_uri: MLflow tracking/registry server.
            model_name: registered model name (``pipeline.model.registered_name``).
            min_accuracy: floor in [0, 1]; a candidate below it is never promoted, not even as the
                first champion.
            labels: id -> label names, to compare integer ``label`` columns with the models'
                string predictions; None reads them from the candidate's model metadata
                (``lakeforge.labels``), falling back to ``["negative", "positive"]``.
        """
        if not 0.0 <= min_accuracy <= 1.0:
            raise ConfigError(f"min_accuracy must be in [0, 1], got {min_accuracy}")
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.min_accuracy = min_accuracy
        self.labels = list(labels) if labels is not None else None

    @cached_property
    def client(self):
        return mlflow_client(self.tracking_uri)  # created on first use: constructing touches no server

    def accuracy(self, model_uri: str, eval_table) -> float:
        """Accuracy of the pyfunc at ``model_uri`` on ``eval_table``."""
        import mlflow
        import pandas as pd

        texts, truth = _eval_frame(eval_table)
        mlflow.set_tracking_uri(self.tracking_uri)  # models:/ URIs resolve against the global registry uri
        model = mlflow.pyfunc.load_model(model_uri)
        labels = self.labels or (model.metadata.metadata or {}).get(LABELS_METADATA_KEY) or ["negative", "positive"]
        truth = [labels[int(y)] if not isinstance(y, str) else y for y in truth]
        pred = model.predict(pd.DataFrame({"text": texts}))
        pred_labels = pred["label"].astype(str).tolist() if isinstance(pred, pd.DataFrame) else [str(p) for p in pred]
        if len(pred_labels) != len(truth):
            raise DataQualityError(f"{model_uri} returned {len(pred_labels)} predictions for {len(truth)} rows")
        return sum(p == t for p, t in zip(pred_labels, truth)) / len(truth)

    def promote(self, version: str | int, eval_table) -> PromotionDecision:
        """Evaluate candidate ``version`` and the champion on ``eval_table``; move the alias if it wins.

        Args:
            version: candidate model version of ``model_name``.
            eval_table: Arrow table or DataFrame with ``text`` and ``label`` (int id or label name):
                the frozen eval set (the test split); every row is used.
        """
        version = str(version)
        self.client.get_model_version(self.model_name, version)  # fail early on an unknown version
        before = champion_version(self.client, self.model_name)
        cand_acc = self.accuracy(f"models:/{self.model_name}/{version}", eval_table)
        champ_acc = None
        if before is not None and before != version:
            champ_acc = self.accuracy(f"models:/{self.model_name}/{before}", eval_table)

        if before == version:
            promoted, reason = False, "already_champion"
        elif cand_acc < self.min_accuracy:
            promoted, reason = False, "below_min_accuracy"
        elif before is None:
            promoted, reason = True, "first_champion"
        elif cand_acc >= champ_acc:  # ties go to the newer model (the order of candidates: see candidates.py)
            promoted, reason = True, "beats_champion"
        else:
            promoted, reason = False, "below_champion"

        decision = PromotionDecision(promoted=promoted, candidate_version=version, champion_version_before=before,
                                     candidate_accuracy=cand_acc, champion_accuracy=champ_acc, reason=reason)
        if promoted:
            self.client.set_registered_model_alias(self.model_name, CHAMPION, version)
        tags = {
            "decision": "promoted" if promoted else "rejected",
            "reason": reason,
            "candidate_accuracy": f"{cand_acc:.6f}",
            "champion_accuracy": "" if champ_acc is None else f"{champ_acc:.6f}",
            "champion_version_before": before or "",
            "min_accuracy": str(self.min_accuracy),
            "eval_rows": str(len(eval_table)),
        }
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, TAG_PREFIX + key, value)
        log.info("%s v%s: %s (%s) candidate=%.4f champion(v%s)=%s", self.model_name, version,
                 tags["decision"], reason, cand_acc, before, tags["champion_accuracy"] or "-")
        return decision
