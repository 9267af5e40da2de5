"""Classification metrics over a label space (lakeforge.metrics): N classes, empty classes, metric names."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from lakeforge.metrics import classification_metrics, confusion_matrix, metric_names, metrics_of

TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


def test_binary_matrix():
    # rows: true negative, positive; columns: predicted
    m = classification_metrics([[3, 1], [2, 4]], ["negative", "positive"])
    assert m.accuracy == pytest.approx(0.7) and m.rows == 10
    assert m.precision == pytest.approx([3 / 5, 4 / 5]) and m.recall == pytest.approx([3 / 4, 4 / 6])
    f1 = [2 * p * r / (p + r) for p, r in zip(m.precision, m.recall)]
    assert m.f1 == pytest.approx(f1) and m.macro_f1 == pytest.approx(sum(f1) / 2)
    assert m.support == [4, 6] and m.predicted == [5, 5]


def test_five_classes_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 200)
    pred = np.where(rng.random(200) < 0.6, truth, rng.integers(0, 5, 200))
    m = metrics_of(truth.tolist(), pred.tolist(), TOPICS)
    assert m.confusion == sk.confusion_matrix(truth, pred, labels=range(5)).tolist()
    assert m.accuracy == pytest.approx(sk.accuracy_score(truth, pred))
    assert m.macro_f1 == pytest.approx(sk.f1_score(truth, pred, average="macro", labels=range(5)))
    p, r, f, s = sk.precision_recall_fscore_support(truth, pred, labels=range(5), zero_division=0)
    assert (m.precision, m.recall, m.f1, m.support) == (pytest.approx(p.tolist()), pytest.approx(r.tolist()),
                                                        pytest.approx(f.tolist()), s.tolist())


def test_classes_without_support_or_predictions_are_zero_without_warnings():
    # "politics" has no rows, "tech" is never predicted, "sports" neither
    confusion = [[5, 0, 0, 0, 0], [1, 3, 0, 0, 0], [0, 0, 0, 0, 0], [0, 2, 0, 0, 0], [1, 0, 0, 0, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(confusion, TOPICS)
    values = [m.accuracy, m.macro_f1, *m.precision, *m.recall, *m.f1]
    assert not any(np.isnan(values))
    assert m.per_class()["politics"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m.per_class()["tech"]["precision"] == 0.0 and m.per_class()["tech"]["support"] == 1
    assert m.accuracy == pytest.approx(8 / 12)
    assert m.macro_f1 == pytest.approx(sum(m.f1) / 5)  # every class of the space counts
    empty = classification_metrics(np.zeros((3, 3)), ["a", "b", "c"])
    assert (empty.accuracy, empty.macro_f1, empty.rows) == (0.0, 0.0, 0)


def test_predictions_outside_the_label_space_count_as_wrong():
    matrix, unmatched = confusion_matrix([0, 0, 1, 1], [0, -1, 1, 7], 2)
    assert matrix.tolist() == [[1, 0], [0, 1]] and unmatched.tolist() == [1, 1]
    m = classification_metrics(matrix, ["negative", "positive"], unmatched)
    assert m.accuracy == 0.5 and m.recall == [0.5, 0.5] and m.precision == [1.0, 1.0] and m.support == [2, 2]
    assert metrics_of([0, 0, 1, 1], [0, -1, 1, 7], ["negative", "positive"]) == m


def test_bad_shapes_and_true_ids_are_errors():
    with pytest.raises(ValueError, match=r"shape \(2, 2\) for 3 labels"):
        classification_metrics([[1, 0], [0, 1]], ["a", "b", "c"])
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="2 true labels but 3 predictions"):
        confusion_matrix([0, 1], [0, 1, 1], 2)


def test_metric_names_and_flat_metrics():
    assert metric_names(["Sci/Tech", "World News", "sci tech", " ", "négatif"]) == \
        ["sci_tech", "world_news", "sci_tech_2", "class3", "n_gatif"]
    m = classification_metrics(np.eye(5, dtype=int) * 2, TOPICS)
    flat = m.as_metrics("test")
    assert flat["test_accuracy"] == 1.0 and flat["test_macro_f1"] == 1.0
    assert {f"test_{k}_{t}" for k in ("precision", "recall", "f1") for t in TOPICS} <= set(flat)
    assert set(m.as_metrics("val", per_class=False)) == {"val_accuracy", "val_macro_f1"}
    assert m.as_dict()["per_class"]["sports"]["support"] == 2 and m.as_dict()["labels"] == TOPICS


def test_importing_it_loads_no_heavy_library():
    code = ("import sys, lakeforge.metrics; "
            "print([m for m in ('torch', 'sklearn', 'pandas', 'mlflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
