"""The classical baseline: TF-IDF + logistic regression (scikit-learn), on the same split as the fine-tune.

It is trained in the same task as the fine-tune, on the same features partition's ``train`` rows,
its ``C`` chosen on ``validation``, scored on ``test``, logged as a child MLflow run of the training
run (same lineage tags) and registered as a version of the same model — a candidate like any other,
so the promotion gate crowns whichever really is better on the frozen eval set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import mlflow
import pandas as pd

from lakeforge.train.model import prediction_frame, texts_of

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
    metrics: dict  # val_accuracy, test_accuracy, fit_seconds
    confusion: list[list[int]]  # test confusion matrix


def make_vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_df=0.95, sublinear_tf=True, strip_accents="unicode",
                           max_features=200_000)


def fit_baseline(train: tuple[list[str], list[int]], val: tuple[list[str], list[int]],
                 test: tuple[list[str], list[int]], num_labels: int, seed: int = 42) -> BaselineResult:
    """Fit TF-IDF on train once, pick the classifier's ``C`` on validation, score test."""
    import time

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.pipeline import Pipeline

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
    confusion: list[list[int]] = []
    if test[0]:
        pred = pipe.predict(test[0])
        metrics["test_accuracy"] = float(np.mean(pred == np.asarray(test[1])))
        confusion = confusion_matrix(test[1], pred, labels=list(range(num_labels))).tolist()
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
        input_example=INPUT_EXAMPLE, metadata={"lakeforge.labels": list(labels)},
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"mlflow=={mlflow.__version__}", "pandas",
                          "lakeforge"],
    )
    return register(info.model_uri, name, {**tags, "lakeforge.candidate": "baseline"})
