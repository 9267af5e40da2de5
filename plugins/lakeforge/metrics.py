"""Classification metrics over a pipeline's label space, shared by training, the baseline and the gate.

One function, :func:`classification_metrics`, turns a confusion matrix (rows: true class, columns:
predicted class, ``len(labels)`` x ``len(labels)``, in the pipeline's label order) into accuracy,
macro-F1 and per-class precision, recall, F1 and support. A class without predictions has precision
0, one without rows has recall 0 (and F1 0): no NaN and no warning, like scikit-learn's
``zero_division=0``. Macro-F1 averages over *every* class of the label space, so a class the model
never predicts counts against it.

Names of logged metrics come from :meth:`ClassificationMetrics.as_metrics`:
``<prefix>_accuracy``, ``<prefix>_macro_f1`` and, per class, ``<prefix>_precision_<label>``,
``<prefix>_recall_<label>``, ``<prefix>_f1_<label>`` with the label made metric-safe
(:func:`metric_names`). Only numpy is imported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


def metric_names(labels: Sequence[str]) -> list[str]:
    """Metric-safe names of ``labels``, in order: lower case, runs of anything but ``[a-z0-9_]``
    become ``_``; an empty result becomes ``class<i>``, a repeated one gets ``_<i>`` appended."""
    names: list[str] = []
    for i, label in enumerate(labels):
        name = re.sub(r"[^0-9a-z_]+", "_", str(label).strip().lower()).strip("_") or f"class{i}"
        if name in names:
            name = f"{name}_{i}"
        names.append(name)
    return names


def confusion_matrix(truth: Sequence[int], pred: Sequence[int], num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, unmatched)`` of class ids: ``matrix[t, p]`` counts rows of true class ``t`` predicted
    ``p``; ``unmatched[t]`` counts rows of true class ``t`` whose prediction is outside ``0..num_labels-1``
    (e.g. a name the label space does not have, given as -1).

    Raises:
        ValueError: lengths differ, or a true id is outside the label space.
    """
    t = np.asarray(truth, dtype=np.int64).reshape(-1)
    p = np.asarray(pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true labels but {p.size} predictions")
    bad = (t < 0) | (t >= num_labels)
    if bad.any():
        raise ValueError(f"true class ids {sorted(set(t[bad].tolist()))[:10]} are outside 0..{num_labels - 1}")
    inside = (p >= 0) & (p < num_labels)
    matrix = np.bincount(t[inside] * num_labels + p[inside], minlength=num_labels * num_labels)
    unmatched = np.bincount(t[~inside], minlength=num_labels)
    return matrix.reshape(num_labels, num_labels).astype(np.int64), unmatched.astype(np.int64)


@dataclass(frozen=True)
class ClassificationMetrics:
    """The metrics of one confusion matrix; per-class lists follow ``labels``."""

    labels: list[str]
    confusion: list[list[int]]  # rows: true, columns: predicted
    rows: int  # rows scored (unmatched predictions included)
    accuracy: float
    macro_f1: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]  # true rows per class
    predicted: list[int] = field(default_factory=list)  # predictions per class

    def per_class(self) -> dict[str, dict[str, float]]:
        """``{label: {precision, recall, f1, support}}``."""
        return {label: {"precision": p, "recall": r, "f1": f, "support": s}
                for label, p, r, f, s in zip(self.labels, self.precision, self.recall, self.f1, self.support)}

    def as_metrics(self, prefix: str, per_class: bool = True) -> dict[str, float]:
        """Flat MLflow metrics: ``<prefix>_accuracy``, ``<prefix>_macro_f1`` and, when ``per_class``,
        ``<prefix>_{precision,recall,f1}_<metric-safe label>``."""
        out = {f"{prefix}_accuracy": self.accuracy, f"{prefix}_macro_f1": self.macro_f1}
        if per_class:
            for name, p, r, f in zip(metric_names(self.labels), self.precision, self.recall, self.f1):
                out[f"{prefix}_precision_{name}"] = p
                out[f"{prefix}_recall_{name}"] = r
                out[f"{prefix}_f1_{name}"] = f
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: labels, matrix, accuracy, macro-F1 and the per-class figures."""
        return {"labels": list(self.labels), "matrix": self.confusion, "rows": self.rows,
                "accuracy": self.accuracy, "macro_f1": self.macro_f1, "per_class": self.per_class()}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_metrics(confusion: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[str],
                           unmatched: Sequence[int] | np.ndarray | None = None) -> ClassificationMetrics:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support of a confusion matrix.

    Args:
        confusion: ``len(labels)`` x ``len(labels)`` counts, rows = true class, columns = predicted.
        labels: the label space, in id order (the matrix's order).
        unmatched: per true class, rows whose prediction lies outside the label space; they count as
            wrong (in the accuracy's and the recall's denominators) but in no column.
    Raises:
        ValueError: the matrix is not square of ``len(labels)``.
    """
    n = len(labels)
    m = np.asarray(confusion, dtype=np.float64)
    if m.size == 0 and n == 0:
        m = m.reshape(0, 0)
    if m.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {m.shape} for {n} labels {list(labels)}: expected ({n}, {n})")
    extra = np.zeros(n) if unmatched is None else np.asarray(unmatched, dtype=np.float64).reshape(-1)
    if extra.shape != (n,):
        raise ValueError(f"unmatched has {extra.size} entries for {n} labels")
    tp = np.diag(m)
    predicted = m.sum(axis=0)
    support = m.sum(axis=1) + extra
    rows = float(support.sum())
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return ClassificationMetrics(
        labels=[str(x) for x in labels], confusion=m.astype(np.int64).tolist(), rows=int(rows),
        accuracy=float(tp.sum() / rows) if rows > 0 else 0.0, macro_f1=float(f1.mean()) if n else 0.0,
        precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
        support=support.astype(np.int64).tolist(), predicted=predicted.astype(np.int64).tolist())


def metrics_of(truth: Sequence[int], pred: Sequence[int], labels: Sequence[str]) -> ClassificationMetrics:
    """:func:`classification_metrics` of class ids (a prediction outside the label space is wrong)."""
    matrix, unmatched = confusion_matrix(truth, pred, len(labels))
    return classification_metrics(matrix, labels, unmatched)
