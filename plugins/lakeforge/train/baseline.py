"""The classical baseline: TF-IDF + logistic regression (scikit-learn), on the same split as the fine-tune.

It is trained in the same task as the fine-tune, on the same features partition's ``train`` rows,
its ``C`` chosen on ``validation``, scored on ``test``, logged as a child MLflow run of the training
run (same lineage tags) and registered as a version of the same model — a candidate like any other,
so the promotion gate crowns whichever really is better on the frozen eval set (:func:`train_baseline`).

It logs the fine-tune's metrics (:mod:`lakeforge.metrics`): ``val_accuracy``, ``val_macro_f1``,
``test_accuracy``, ``test_macro_f1`` and per class ``test_precision_<label>``, ``test_recall_<label>``,
``test_f1_<label>``; the parent run gets ``baseline_test_accuracy`` and ``baseline_test_macro_f1``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import mlflow
import pandas as pd

from lakeforge.metrics import ClassificationMetrics, metrics_of
from lakeforge.registry import LABELS_METADATA_KEY
from lakeforge.train.model import prediction_frame, texts_of

if TYPE_CHECKING:
    from lakeforge.config import ModelSpec, TrainProfile
    from lakeforge.train.data import FeatureSource

log = logging.getLogger(__name__)

C_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # inverse regularisation strengths tried on validation


class TfidfBaselinePyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc over a fitted sklearn ``Pipeline`` (TF-IDF -> logistic regression): the lakeforge contract."""

    def __init__(self, pipeline, labels: Sequence[str]):
        self.pipeline = pipeline
        self.labels = list(labels)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = texts_of(model_input)
        if not texts:
            return prediction_frame([], [])
        probs = self.pipeline.predict_proba(texts)
        classes = list(self.pipeline.classes_)
        best = probs.argmax(axis=1)
        return prediction_frame([self.labels[int(classes[i])] for i in best], probs.max(axis=1).tolist())


@dataclass
class BaselineResult:
    pipeline: object  # the fitted sklearn Pipeline
    params: dict  # vectorizer + classifier settings, C chosen
    metrics: dict  # fit_seconds, val_accuracy, val_macro_f1, test_accuracy, test_macro_f1, per-class test figures
    confusion: list[list[int]]  # test confusion matrix (rows: true, columns: predicted), in label-id order


def make_vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_df=0.95, sublinear_tf=True, strip_accents="unicode",
                           max_features=200_000)


def _scores(truth: Sequence[int], pred, labels: Sequence[str]) -> ClassificationMetrics:
    """The metrics of class-id predictions over ``labels`` (:func:`lakeforge.metrics.metrics_of`)."""
    return metrics_of([int(y) for y in truth], [int(p) for p in pred], labels)


def fit_baseline(train: tuple[list[str], list[int]], val: tuple[list[str], list[int]],
                 test: tuple[list[str], list[int]], num_labels: int | None = None, seed: int = 42, *,
                 labels: Sequence[str] | None = None) -> BaselineResult:
    """Fit TF-IDF on train once, pick the classifier's ``C`` on validation (by accuracy), score test.

    Args:
        num_labels: size of the label space (the metrics name classes by id); ignored with ``labels``.
        labels: the label space (class names in id order): the per-class metrics carry these names.
    """
    import time

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    if labels is None:
        if num_labels is None:
            raise ValueError("fit_baseline needs the label space: labels=[...] (or num_labels=N)")
        labels = [str(i) for i in range(num_labels)]
    labels = list(labels)

    t0 = time.perf_counter()
    x_tr, y_tr = train
    if len(set(y_tr)) < 2:
        raise ValueError(f"the baseline needs at least two classes in train, got {sorted(set(y_tr))}")
    vectorizer = make_vectorizer().fit(x_tr)
    m_tr = vectorizer.transform(x_tr)
    m_val = vectorizer.transform(val[0]) if val[0] else None
    best = None
    for c in C_GRID if m_val is not None else (1.0,):
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(m_tr, y_tr)
        acc = float(np.mean(clf.predict(m_val) == np.asarray(val[1]))) if m_val is not None else 0.0
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    val_acc, c, clf = best  # type: ignore[misc]
    pipe = Pipeline([("tfidf", vectorizer), ("clf", clf)])
    metrics = {"fit_seconds": time.perf_counter() - t0}
    if m_val is not None:
        metrics["val_accuracy"] = val_acc
        metrics["val_macro_f1"] = _scores(val[1], clf.predict(m_val), labels).macro_f1
    confusion: list[list[int]] = []
    if test[0]:
        scores = _scores(test[1], pipe.predict(test[0]), labels)
        metrics.update(scores.as_metrics("test"))
        confusion = scores.confusion
    params = {"vectorizer": "tfidf word 1-2 grams, min_df=2, max_df=0.95, sublinear_tf",
              "classifier": "LogisticRegression", "C": c, "C_grid": list(C_GRID),
              "n_train": len(x_tr), "vocabulary": len(vectorizer.vocabulary_)}
    return BaselineResult(pipeline=pipe, params=params, metrics=metrics, confusion=confusion)


def log_baseline(result: BaselineResult, *, name: str, labels: Sequence[str], tags: dict[str, str],
                 run_id: str) -> str:
    """Log the fitted baseline as the pyfunc of the active run and register it (once per run)."""
    import sklearn

    from lakeforge.train.tracking import INPUT_EXAMPLE, existing_version, register, signature

    done = existing_version(name, run_id, "baseline")
    if done:
        return done
    info = mlflow.pyfunc.log_model(
        name="model", python_model=TfidfBaselinePyfunc(result.pipeline, labels), signature=signature(),
        input_example=INPUT_EXAMPLE, metadata={LABELS_METADATA_KEY: list(labels)},
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"mlflow=={mlflow.__version__}", "pandas",
                          "lakeforge"],
    )
    return register(info.model_uri, name, {**tags, "lakeforge.candidate": "baseline"})


def train_baseline(source: FeatureSource, spec: ModelSpec, profile: TrainProfile, tags: dict[str, str],
                   parent_run_id: str, register: bool) -> dict[str, Any]:
    """TF-IDF + logistic regression on the same split, in a child run of the active one (found again by
    a retry); registered when ``register``. ``{kind: "baseline", version, run_id, test_accuracy, test_macro_f1}``."""
    from lakeforge.train import tracking

    splits = {s: source.read_split(s, ("text", "label")) for s in ("train", "validation", "test")}
    fitted = fit_baseline(*((splits[s]["text"], [int(y) for y in splits[s]["label"]])
                            for s in ("train", "validation", "test")),
                          labels=spec.labels, seed=profile.seed)
    client = mlflow.MlflowClient()
    child = [r for r in client.search_runs([mlflow.active_run().info.experiment_id],
                                           f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`lakeforge.candidate` = 'baseline'")]
    with mlflow.start_run(run_id=child[0].info.run_id if child else None,
                          run_name=None if child else "tfidf-logreg-baseline", nested=True,
                          tags={**tags, "lakeforge.candidate": "baseline"}) as run:
        if not child:
            mlflow.log_params({f"baseline.{k}": v for k, v in fitted.params.items()})
        mlflow.log_metrics(fitted.metrics)
        if fitted.confusion:
            tracking.log_confusion(fitted.confusion, spec.labels, "test")
        version = log_baseline(fitted, name=spec.registered_name, labels=spec.labels,
                               tags={**tags, "lakeforge.parent_run_id": parent_run_id},
                               run_id=run.info.run_id) if register else ""
    log.info("baseline (TF-IDF + logistic regression, C=%s): %s", fitted.params["C"],
             ", ".join(f"{k}={fitted.metrics[k]:.4f}" for k in ("fit_seconds", "val_accuracy", "val_macro_f1",
                                                               "test_accuracy", "test_macro_f1") if k in fitted.metrics))
    return {"kind": "baseline", "version": version, "run_id": run.info.run_id,
            "test_accuracy": fitted.metrics.get("test_accuracy"), "test_macro_f1": fitted.metrics.get("test_macro_f1")}
