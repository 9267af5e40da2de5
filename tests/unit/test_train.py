"""A 2-step CPU training smoke run of lakeforge.train on inline texts, tracked in a SQLite MLflow."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pyarrow as pa
import pytest
import torch
from mlflow.tracking import MlflowClient

from lakeforge.config import PipelineConfig, TrainProfile
from lakeforge.train import (HEAD_FILE, MeanPooledClassifier, TrainConfig, configure_optimizer, get_lr,
                             iterate_batches, run, split_rows)
from lakeforge.errors import DataQualityError

POSITIVE = [
    "A wonderful film with brilliant acting.", "I loved every minute of this movie.",
    "A moving and beautiful story, superbly told.", "The best comedy I have seen in years.",
    "Charming, funny and full of heart.", "An excellent cast and a gripping plot.",
    "A masterpiece: stunning from start to finish.", "Delightful, warm and very entertaining.",
    "Great direction and a terrific soundtrack.", "I would happily watch it again tomorrow.",
    "Smart writing and wonderful performances.", "A joyful, uplifting experience.",
    "Beautifully shot and deeply touching.", "Fantastic fun for the whole family.",
    "The lead actor gives a superb performance.", "A clever, satisfying thriller.",
    "Heartfelt and genuinely hilarious.", "One of the finest films of the decade.",
    "An inspiring and memorable movie.", "Gorgeous visuals and a great script.",
]
NEGATIVE = [
    "A boring film with terrible acting.", "I hated every minute of this movie.",
    "A dull and ugly story, badly told.", "The worst comedy I have seen in years.",
    "Tedious, unfunny and completely lifeless.", "A weak cast and a nonsensical plot.",
    "A disaster: awful from start to finish.", "Irritating, cold and very boring.",
    "Clumsy direction and an annoying soundtrack.", "I would never watch it again.",
    "Lazy writing and wooden performances.", "A miserable, depressing waste of time.",
    "Poorly shot and deeply tiresome.", "Painful to sit through for anyone.",
    "The lead actor gives a dreadful performance.", "A stupid, predictable thriller.",
    "Shallow and embarrassingly bad.", "One of the worst films of the decade.",
    "A forgettable and pointless movie.", "Ugly visuals and a horrible script.",
]


def features_table() -> pa.Table:
    """40 rows: 12+12 train, 4+4 validation, 4+4 test."""
    rows = []
    for label, texts in ((1, POSITIVE), (0, NEGATIVE)):
        for i, text in enumerate(texts):
            split = "train" if i < 12 else "validation" if i < 16 else "test"
            rows.append({"id": f"{label}-{i}", "text": text, "label": label, "split": split})
    return pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("text", pa.string()),
                                                          ("label", pa.int64()), ("split", pa.string())]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # a SQLite MLflow in the session's base temp dir, shared with the other test modules (its schema
    # migrations take seconds); the experiment is pre-created so artifacts land there, not in ./mlruns
    base = tmp_path_factory.getbasetemp()
    uri = f"sqlite:///{base}/mlflow.db"
    MlflowClient(uri).create_experiment("train-smoke", artifact_location=(base / "train-artifacts").as_uri())
    config = TrainConfig(pipeline="movie_reviews", partition="2026-11-23", profile="cpu", max_steps=2,
                         tracking_uri=uri, experiment="train-smoke", run_name="smoke",
                         airflow_dag_id="dag_x", airflow_run_id="manual__1")
    inputs = [{"path": "s3://lakeforge/features/movie_reviews/dt=2026-11-23/_MANIFEST.json", "sha256": "ab" * 32}]
    result = run(config, features_table(), inputs=inputs)
    return uri, result, inputs


def test_run_is_logged(trained):
    uri, result, inputs = trained
    r = MlflowClient(uri).get_run(result.run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "smoke"
    assert r.data.params["pipeline"] == "movie_reviews"
    assert r.data.params["profile.batch_size"] == "16"
    assert r.data.params["max_steps_effective"] == "2"
    assert r.data.params["n_train"] == "24"
    assert {"loss", "lr", "samples_per_s", "val_accuracy", "test_accuracy"} <= set(r.data.metrics)
    assert 0.0 <= r.data.metrics["val_accuracy"] <= 1.0
    history = MlflowClient(uri).get_metric_history(result.run_id, "loss")
    assert [m.step for m in history] == [0, 1]
    assert json.loads(r.data.tags["lakeforge.inputs"]) == inputs
    assert r.data.tags["lakeforge.partition"] == "dt=2026-11-23"
    assert r.data.tags["airflow.dag_id"] == "dag_x"
    assert r.data.tags["airflow.run_id"] == "manual__1"
    assert r.data.tags["lakeforge.code_version"]
    assert set(result.metrics) >= {"val_accuracy", "test_accuracy", "train_loss"}


def test_version_registered_and_predicts(trained):
    uri, result, _ = trained
    name = PipelineConfig.load("movie_reviews").model.registered_name
    mv = MlflowClient(uri).get_model_version(name, result.version)
    assert mv.run_id == result.run_id
    assert result.model_uri == f"models:/{name}/{result.version}"
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(result.model_uri)
    texts = ["A wonderful, moving film.", "Awful and boring.", "I loved it."]
    out = model.predict(pd.DataFrame({"text": texts}))
    assert list(out.columns) == ["label", "score"]
    assert len(out) == 3
    assert set(out["label"]) <= {"negative", "positive"}
    assert out["score"].between(0.5, 1.0).all()  # the probability of the argmax label
    assert list(model.predict(texts)["label"]) == list(out["label"])  # a plain list works too
    served = model.unwrap_python_model()
    assert isinstance(served.model, MeanPooledClassifier)
    assert served.tokenizer.truncation_side == "left"  # the saved tokenizer keeps a review's end


def tiny_classifier(seed: int = 0) -> MeanPooledClassifier:
    """A 2-layer, 32-wide random BERT under the mean-pooled head: builds in milliseconds, offline."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    return MeanPooledClassifier(BertModel(config, add_pooling_layer=False))


def test_mean_pooled_classifier_round_trips(tmp_path):
    model = tiny_classifier().eval()
    batch = {"input_ids": torch.tensor([[2, 5, 9, 3, 0, 0], [2, 7, 7, 8, 11, 3]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]),
             "token_type_ids": torch.zeros(2, 6, dtype=torch.long)}
    model.save_pretrained(tmp_path)
    assert (tmp_path / HEAD_FILE).exists() and (tmp_path / "config.json").exists()
    loaded = MeanPooledClassifier.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded.config.id2label == {0: "negative", 1: "positive"}
    assert loaded.dropout.p == model.dropout.p


def test_mean_pooling_ignores_padding():
    model = tiny_classifier().eval()
    ids = torch.tensor([[2, 5, 9, 3]])
    padded = torch.tensor([[2, 5, 9, 3, 0, 0, 0]])
    with torch.inference_mode():
        short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        long = model(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0, 0]])).logits
    torch.testing.assert_close(short, long)


def test_head_learns_faster_than_encoder():
    model = tiny_classifier()
    profile = TrainProfile(weight_decay=0.01, head_lr_scale=20.0)
    groups = configure_optimizer(model, profile).param_groups
    head = [g for g in groups if g["lr_scale"] == 20.0]
    assert [p for g in head for p in g["params"]] == [model.classifier.weight, model.classifier.bias]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # each parameter once
    assert all(g["weight_decay"] == 0.0 for g in groups if g["params"] and g["params"][0].dim() < 2)


def test_lr_schedule_warms_up_then_decays():
    lrs = [get_lr(s, 10, 2, 1.0) for s in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] > 0


def test_batches_shard_across_ranks():
    a, b = iterate_batches(10, 2, 0, 0, 2), iterate_batches(10, 2, 0, 1, 2)
    first = [next(a), next(b)]
    assert len(first[0]) == 2 and not set(first[0]) & set(first[1])
    assert len(next(iterate_batches(3, 8, 0, 0, 1))) == 8  # tiny sets repeat rather than starve


def test_bad_split_values_are_rejected():
    table = pa.table({"id": ["1"], "text": ["x"], "label": [1], "split": ["holdout"]})
    with pytest.raises(DataQualityError, match="holdout"):
        split_rows(table)


def test_cpu_threads_leave_a_core_to_the_services(monkeypatch):
    from lakeforge import train

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(train.os, "cpu_count", lambda: 2)
    assert train.cpu_threads_default() == 1
    monkeypatch.setattr(train.os, "cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert train.cpu_threads_default() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert train.cpu_threads_default() is None  # torch already follows OMP_NUM_THREADS
