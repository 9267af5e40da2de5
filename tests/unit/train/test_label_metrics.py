"""Training's classification metrics over N classes: final metrics, the baseline, the confusion plots."""

from __future__ import annotations

import json
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lakeforge.config import PipelineConfig, TrainProfile

TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


def test_final_metrics_carry_macro_f1_and_per_class_figures():
    from lakeforge.train.job import final_metrics
    from lakeforge.train.loop import LoopState

    stage = SimpleNamespace(pipeline=PipelineConfig.load("bbc_news"), where="bbc_news dt=2026-11-23")
    assert stage.pipeline.model.labels == TOPICS
    # test: tech always predicted as business, everything else right; validation: perfect
    test = [[2, 0, 0, 0, 0], [0, 2, 0, 0, 0], [0, 0, 2, 0, 0], [0, 0, 0, 2, 0], [2, 0, 0, 0, 0]]
    val = [[1 if i == j else 0 for j in range(5)] for i in range(5)]

    def measure(split):
        matrix = test if split == "test" else val
        return {"loss": 0.5, "accuracy": sum(matrix[i][i] for i in range(5)) / sum(map(sum, matrix)), "rows": 10,
                "macro_f1": 0.0, "confusion": matrix}

    state = LoopState(step=4)
    state.record["history"] = [{"loss": 0.7}]
    data = SimpleNamespace(rows={"train": 20, "validation": 5, "test": 10})
    metrics, confusion, reused = final_metrics(state, None, measure, data, stage, TrainProfile())
    assert not reused and confusion == {"validation": val, "test": test}
    assert (metrics["val_accuracy"], metrics["val_macro_f1"]) == (1.0, 1.0)
    assert metrics["test_accuracy"] == 0.8
    assert metrics["test_macro_f1"] == pytest.approx((2 / 3 + 1 + 1 + 1 + 0) / 5)
    assert (metrics["test_precision_business"], metrics["test_recall_business"]) == (0.5, 1.0)
    assert (metrics["test_precision_tech"], metrics["test_recall_tech"], metrics["test_f1_tech"]) == (0.0, 0.0, 0.0)
    assert not any(k.startswith("val_precision") for k in metrics)  # per class: test only
    assert {"val_loss", "test_loss", "train_loss", "steps_trained"} <= set(metrics)


def test_baseline_scores_every_class():
    from lakeforge.train.baseline import fit_baseline

    words = {"business": "shares market profit bank", "politics": "minister election vote party",
             "tech": "software phone internet chip"}
    labels = list(words)

    def rows(n, offset):
        texts, ys = [], []
        for y, (_, w) in enumerate(words.items()):
            for i in range(n):
                texts.append(f"{w} item{(i + offset) % 4} {w.split()[i % 4]}")
                ys.append(y)
        return texts, ys

    res = fit_baseline(rows(8, 0), rows(3, 1), rows(3, 2), labels=labels)
    m = res.metrics
    assert {"val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1", "fit_seconds"} <= set(m)
    assert {f"test_{k}_{t}" for k in ("precision", "recall", "f1") for t in labels} <= set(m)
    assert m["test_accuracy"] == 1.0 and m["test_macro_f1"] == 1.0
    assert res.confusion == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    by_count = fit_baseline(rows(8, 0), rows(3, 1), rows(3, 2), 3)  # the older call: the size of the space
    assert by_count.metrics["test_precision_0"] == 1.0


def test_a_five_class_confusion_matrix_renders_with_its_labels(tmp_path):
    from lakeforge.train.tracking import log_confusion

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("confusion", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    matrix = [[9, 1, 0, 0, 0], [0, 8, 1, 1, 0], [0, 0, 10, 0, 0], [0, 0, 0, 0, 0], [3, 0, 0, 0, 7]]
    with mlflow.start_run(experiment_id=exp) as run:
        log_confusion(matrix, TOPICS, "test")
        with pytest.raises(ValueError, match=r"shape \(5, 5\) for 2 labels"):
            log_confusion(matrix, ["negative", "positive"], "validation")
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/confusion_matrix_test.png", "plots/confusion_matrix_test.json"} <= paths
    assert "plots/confusion_matrix_validation.png" not in paths
    local = client.download_artifacts(run.info.run_id, "plots/confusion_matrix_test.json", str(tmp_path))
    saved = json.loads(open(local).read())
    assert saved["labels"] == TOPICS and saved["matrix"] == matrix
    assert saved["per_class"]["sports"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    png = client.download_artifacts(run.info.run_id, "plots/confusion_matrix_test.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_confusion_figure_is_sized_to_the_label_space():
    import matplotlib.pyplot as plt

    from lakeforge.train.tracking import confusion_figure

    small = confusion_figure([[1, 0], [0, 1]], ["negative", "positive"], "two")
    big = confusion_figure([[1] * 5] * 5, TOPICS, "five")
    try:
        assert big.get_size_inches()[0] > small.get_size_inches()[0]
        ax = big.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == TOPICS
        assert [t.get_text() for t in ax.get_yticklabels()] == TOPICS
        assert ax.get_title() == "five"
    finally:
        plt.close(small)
        plt.close(big)
