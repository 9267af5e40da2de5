"""The promotion decision: a candidate model version becomes ``champion`` only if it really is better.

:class:`ModelPromoter` evaluates the candidate and the current champion (if any) on the *same* eval
table, loading both as MLflow pyfuncs (any model that honours the lakeforge pyfunc contract: a
``text`` column in, ``label``/``score`` out — the fine-tuned MiniLM and the TF-IDF baseline alike).
Both are scored over the label space (:mod:`lakeforge.metrics`): accuracy, macro-F1 and per-class
precision/recall/F1. It moves the ``champion`` alias to the candidate when there is no champion yet,
or when the candidate's accuracy is >= the champion's and >= ``min_accuracy``. The decision, the
reason, both accuracies and macro-F1s and the per-class figures are written as tags on the candidate
version, so the registry UI shows why every version was or was not promoted.

The label space (class names in id order: an integer ``label`` of the eval table is an index into it)
is the caller's (the pipeline's ``labels``), else the candidate's model metadata
(:data:`~lakeforge.registry.LABELS_METADATA_KEY`); there is no default.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Sequence

from lakeforge.errors import ConfigError, DataQualityError
from lakeforge.metrics import ClassificationMetrics, metric_names, metrics_of
from lakeforge.registry import CHAMPION, LABELS_METADATA_KEY, champion_version, mlflow_client, model_labels

log = logging.getLogger(__name__)

TAG_PREFIX = "lakeforge.promotion."
MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value: a longer per-class JSON is not written (the decision has it)


@dataclass(frozen=True)
class PromotionDecision:
    """Outcome of one gate evaluation."""

    promoted: bool  # the alias now points at the candidate
    candidate_version: str  # version evaluated
    champion_version_before: str | None  # version the alias pointed at before (None: no champion)
    candidate_accuracy: float  # accuracy of the candidate on the eval table
    champion_accuracy: float | None  # accuracy of the previous champion on the same table
    reason: str  # snake_case reason: first_champion | beats_champion | below_champion | below_min_accuracy | already_champion
    candidate_macro_f1: float = 0.0  # macro-F1 of the candidate over the label space
    champion_macro_f1: float | None = None  # macro-F1 of the previous champion on the same table
    labels: list[str] = field(default_factory=list)  # the label space both were scored over
    candidate_per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> precision/recall/f1/support
    champion_per_class: dict[str, dict[str, float]] | None = None

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


def truth_ids(truth: Sequence[Any], labels: Sequence[str]) -> list[int]:
    """The eval table's ``label`` values as class ids: an integer is an index into ``labels``, a string
    a class name of it.

    Raises:
        DataQualityError: a value is neither (names the first few and the label space).
    """
    index = {name: i for i, name in enumerate(labels)}
    ids, bad = [], []
    for y in truth:
        if isinstance(y, str):
            i = index.get(y)
            if i is None and y.strip().lstrip("-").isdigit():
                i = int(y)
        else:
            try:
                i = int(y)
            except (TypeError, ValueError):
                i = None
        if i is None or not 0 <= i < len(labels):
            bad.append(y)
            i = -1
        ids.append(i)
    if bad:
        raise DataQualityError(f"eval table labels {sorted(set(map(str, bad)))[:10]} ({len(bad)} rows) are not in the "
                               f"label space {list(labels)} (ids 0..{len(labels) - 1} or these names)")
    return ids


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
            labels: the label space (class names in id order), to read integer ``label`` columns and
                to score per class; None reads it from the candidate's model metadata
                (``lakeforge.labels``). A candidate without that metadata then is an error.
        """
        if not 0.0 <= min_accuracy <= 1.0:
            raise ConfigError(f"min_accuracy must be in [0, 1], got {min_accuracy}")
        if labels is not None and len(labels) < 2:
            raise ConfigError(f"labels must name at least 2 classes, got {list(labels)}")
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.min_accuracy = min_accuracy
        self.labels = [str(x) for x in labels] if labels is not None else None

    @cached_property
    def client(self):
        return mlflow_client(self.tracking_uri)  # created on first use: constructing touches no server

    def _load(self, model_uri: str):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)  # models:/ URIs resolve against the global registry uri
        return mlflow.pyfunc.load_model(model_uri)

    def label_space(self, model, model_uri: str) -> list[str]:
        """The caller's labels, else the ``lakeforge.labels`` metadata of ``model`` (loaded from ``model_uri``).

        Raises:
            ConfigError: neither is there.
        """
        if self.labels is not None:
            own = model_labels(model)
            if own is not None and own != self.labels:
                log.warning("%s carries labels %s but is scored over %s: predictions outside those count as wrong",
                            model_uri, own, self.labels)
            return self.labels
        own = model_labels(model)
        if own is None:
            raise ConfigError(
                f"{model_uri} has no label metadata ('{LABELS_METADATA_KEY}') and no labels were given: log the model "
                f"with metadata={{'{LABELS_METADATA_KEY}': [class names in id order]}} (lakeforge training does), or "
                f"pass labels= (the pipeline's `labels`) to ModelPromoter")
        return own

    def score(self, model_uri: str, eval_table, labels: Sequence[str] | None = None, model=None) -> ClassificationMetrics:
        """Accuracy, macro-F1 and per-class figures of the pyfunc at ``model_uri`` on ``eval_table``, over
        ``labels`` (None: :meth:`label_space`). A predicted name outside the label space counts as wrong."""
        import pandas as pd

        texts, truth = _eval_frame(eval_table)
        model = model if model is not None else self._load(model_uri)
        labels = list(labels) if labels is not None else self.label_space(model, model_uri)
        ids = truth_ids(truth, labels)
        pred = model.predict(pd.DataFrame({"text": texts}))
        pred_labels = pred["label"].tolist() if isinstance(pred, pd.DataFrame) else list(pred)
        if len(pred_labels) != len(ids):
            raise DataQualityError(f"{model_uri} returned {len(pred_labels)} predictions for {len(ids)} rows")
        index = {name: i for i, name in enumerate(labels)}
        pred_ids = [index.get(str(p), -1) for p in pred_labels]
        outside = sorted({str(p) for p, i in zip(pred_labels, pred_ids) if i < 0})
        if outside:
            log.warning("%s predicted labels %s outside the label space %s: counted as wrong", model_uri, outside[:10],
                        labels)
        return metrics_of(ids, pred_ids, labels)

    def accuracy(self, model_uri: str, eval_table) -> float:
        """Accuracy of the pyfunc at ``model_uri`` on ``eval_table`` (see :meth:`score`)."""
        return self.score(model_uri, eval_table).accuracy

    def promote(self, version: str | int, eval_table) -> PromotionDecision:
        """Evaluate candidate ``version`` and the champion on ``eval_table``; move the alias if it wins.

        The rule is on accuracy; macro-F1 and the per-class figures are recorded beside it.

        Args:
            version: candidate model version of ``model_name``.
            eval_table: Arrow table or DataFrame with ``text`` and ``label`` (int id or label name):
                the frozen eval set (the test split); every row is used.
        Raises:
            ConfigError: no labels were given and the candidate has no label metadata.
        """
        version = str(version)
        self.client.get_model_version(self.model_name, version)  # fail early on an unknown version
        before = champion_version(self.client, self.model_name)
        cand_uri = f"models:/{self.model_name}/{version}"
        cand_model = self._load(cand_uri)
        labels = self.label_space(cand_model, cand_uri)
        cand = self.score(cand_uri, eval_table, labels, model=cand_model)
        champ = None
        if before is not None and before != version:
            champ_uri = f"models:/{self.model_name}/{before}"
            champ_model = self._load(champ_uri)
            own = model_labels(champ_model)
            if own is not None and own != labels:
                log.warning("champion %s carries labels %s, the candidate's label space is %s: the champion's "
                            "predictions outside it count as wrong", champ_uri, own, labels)
            champ = self.score(champ_uri, eval_table, labels, model=champ_model)
        cand_acc = cand.accuracy
        champ_acc = champ.accuracy if champ is not None else None

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

        decision = PromotionDecision(
            promoted=promoted, candidate_version=version, champion_version_before=before,
            candidate_accuracy=cand_acc, champion_accuracy=champ_acc, reason=reason,
            candidate_macro_f1=cand.macro_f1, champion_macro_f1=champ.macro_f1 if champ is not None else None,
            labels=list(labels), candidate_per_class=cand.per_class(),
            champion_per_class=champ.per_class() if champ is not None else None)
        if promoted:
            self.client.set_registered_model_alias(self.model_name, CHAMPION, version)
        tags = decision_tags(decision, self.min_accuracy, len(eval_table))
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, TAG_PREFIX + key, value)
        log.info("%s v%s: %s (%s) candidate accuracy=%.4f macro_f1=%.4f champion(v%s) accuracy=%s macro_f1=%s",
                 self.model_name, version, tags["decision"], reason, cand_acc, cand.macro_f1, before,
                 tags["champion_accuracy"] or "-", tags["champion_macro_f1"] or "-")
        return decision


def decision_tags(decision: PromotionDecision, min_accuracy: float, eval_rows: int) -> dict[str, str]:
    """The tags (without :data:`TAG_PREFIX`) a decision writes on its candidate version: decision, reason,
    accuracies, macro-F1s, per class ``candidate_precision_<label>``/``candidate_recall_<label>`` (labels
    metric-safe), the per-class figures of both models as JSON (``per_class``) and the label space."""
    def fmt(x: float | None) -> str:
        return "" if x is None else f"{x:.6f}"

    tags = {
        "decision": "promoted" if decision.promoted else "rejected",
        "reason": decision.reason,
        "candidate_accuracy": fmt(decision.candidate_accuracy),
        "champion_accuracy": fmt(decision.champion_accuracy),
        "candidate_macro_f1": fmt(decision.candidate_macro_f1),
        "champion_macro_f1": fmt(decision.champion_macro_f1),
        "champion_version_before": decision.champion_version_before or "",
        "min_accuracy": str(min_accuracy),
        "eval_rows": str(eval_rows),
        "labels": json.dumps(decision.labels),
    }
    for name, label in zip(metric_names(decision.labels), decision.labels):
        figures = decision.candidate_per_class.get(label, {})
        tags[f"candidate_precision_{name}"] = fmt(figures.get("precision"))
        tags[f"candidate_recall_{name}"] = fmt(figures.get("recall"))
    def rounded(figures: dict[str, float] | None) -> dict[str, float] | None:
        return None if figures is None else {k: round(v, 4) for k, v in figures.items()}

    per_class = json.dumps({label: {"candidate": rounded(decision.candidate_per_class.get(label)),
                                    "champion": rounded((decision.champion_per_class or {}).get(label))}
                            for label in decision.labels}, separators=(",", ":"))
    if len(per_class) <= MAX_TAG_CHARS:
        tags["per_class"] = per_class
    return tags
