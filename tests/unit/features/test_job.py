"""Unit tests of lakeforge.features: split assignment, label validation, the job's round trip."""

from __future__ import annotations

import pytest

from lakeforge.curate import run as run_curate
from lakeforge.errors import ConfigError, LakeError
from lakeforge.features import FEATURES_COLUMNS, TokenizerSpec, assign_split, features_frame, run, split_stats
from lakeforge.stage.run import StageRun

RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}


@pytest.fixture(scope="module")
def hashed(spark):
    """1,000 rows with distinct text hashes, plus 200 rows that repeat 20 hashes."""
    from pyspark.sql import functions as F

    distinct = spark.range(1000).select(
        F.col("id").cast("string").alias("id"),
        F.sha2(F.concat(F.lit("review number "), F.col("id").cast("string")), 256).alias("text_hash"))
    repeated = spark.range(200).select(
        F.concat(F.lit("dup"), F.col("id").cast("string")).alias("id"),
        F.sha2(F.concat(F.lit("repeated "), (F.col("id") % 20).cast("string")), 256).alias("text_hash"))
    return distinct, repeated


def test_split_ratios_roughly_respected(hashed):
    distinct, _ = hashed
    counts = {r["split"]: r["count"] for r in assign_split(distinct, RATIOS, hash_col="text_hash").groupBy("split").count().collect()}
    assert set(counts) == {"train", "validation", "test"}
    assert 740 <= counts["train"] <= 860
    assert 60 <= counts["validation"] <= 140 and 60 <= counts["test"] <= 140


def test_split_is_deterministic_and_follows_the_hash(hashed):
    from pyspark.sql import functions as F

    distinct, repeated = hashed
    first = sorted(map(tuple, assign_split(distinct, RATIOS, hash_col="text_hash").collect()))
    second = sorted(map(tuple, assign_split(distinct, dict(reversed(RATIOS.items())), hash_col="text_hash").collect()))
    assert first == second  # key order of the ratios does not matter
    per_hash = assign_split(repeated, RATIOS, hash_col="text_hash").groupBy("text_hash").agg(F.countDistinct("split").alias("n"))
    assert {r["n"] for r in per_hash.collect()} == {1}


def test_degenerate_ratios(hashed):
    distinct, _ = hashed
    splits = {r["split"] for r in assign_split(distinct, {"train": 1.0, "validation": 0.0, "test": 0.0},
                                               hash_col="text_hash").collect()}
    assert splits == {"train"}


@pytest.mark.parametrize("ratios", [{"train": 0.8, "validation": 0.1}, {"train": 1.2, "validation": -0.2, "test": 0}, {}])
def test_bad_ratios(spark, ratios):
    df = spark.range(1).selectExpr("'x' AS text_hash")
    with pytest.raises(ConfigError, match="split ratios"):
        assign_split(df, ratios, hash_col="text_hash")


def test_features_frame_drops_unknown_labels(arrow_frame):
    df = arrow_frame("id string, text string, label bigint, text_hash string",
                     [("a", "good", 1, "h1"), ("b", "bad", 0, "h2"), ("c", "odd", 2, "h3"), ("d", "neg", -1, "h4"),
                      ("e", "none", None, "h5")])
    result = features_frame(df, ["negative", "positive"], RATIOS)
    assert (result.rows_in, result.rows_out) == (5, 2)
    assert result.counts_by_reason == {"unknown_label": 3}
    assert [s["id"] for s in result.dropped_samples["unknown_label"]] == ["c", "d", "e"]
    assert tuple(result.kept.columns) == (*FEATURES_COLUMNS, "event_time", "_truncated")
    assert sorted((r["id"], r["label"]) for r in result.kept.collect()) == [("a", 1), ("b", 0)]
    stats = split_stats(result.kept, ["negative", "positive"])
    assert sum(stats["rows_per_split"].values()) == 2
    assert stats["labels"] == {"negative": 1, "positive": 1}
    assert set(stats["label_balance"]) == {"train", "validation", "test"}


def test_split_follows_the_cluster_and_near_duplicates_never_cross(arrow_frame):
    rows = [(f"r{i}", f"text {i}", i % 2, f"h{i}", f"cluster{i % 7}") for i in range(200)]
    df = arrow_frame("id string, text string, label bigint, text_hash string, cluster_id string", rows)
    result = features_frame(df, ["negative", "positive"], RATIOS)
    per_cluster = {}
    for r in result.kept.collect():
        per_cluster.setdefault(r["cluster_id"], set()).add(r["split"])
    result.release()
    assert len(per_cluster) == 7 and all(len(s) == 1 for s in per_cluster.values())


def write_news_raw(lake, pipeline, rows, day="2026-11-23"):
    """Commit raw rows of a pipeline whose label field ``topic`` carries names and whose extra field
    ``outlet`` is kept: the raw table keeps the event's own field names."""
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lakeforge.config import Partition, PipelineConfig
    from lakeforge.lake import Commit

    config = PipelineConfig.load(pipeline)
    part = Partition.parse(day)
    schema = pa.schema([("doc", pa.int64()), ("body", pa.string()), ("topic", pa.string()), ("outlet", pa.string()),
                        ("published", pa.timestamp("us", tz="UTC")), ("kafka_topic", pa.string()),
                        ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
                        ("kafka_timestamp", pa.timestamp("us", tz="UTC"))])
    full = [{**r, "published": part.start.replace(hour=2), "kafka_topic": "news", "kafka_partition": 0,
             "kafka_offset": i, "kafka_timestamp": part.start.replace(hour=2)} for i, r in enumerate(rows)]
    key = lake.staging_key(lake.table(config, "raw"), part, "ingest1") + "/part-00000.parquet"
    (lake.root / key).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema=schema), lake.root / key)
    lake.publish_files(config, Commit(layer="raw", pipeline=config.name, partition=part.path,
                                      interval=(part.start, part.end), schema_version=1, run_id="ingest1",
                                      rows=len(rows), created_at=datetime(2026, 11, 24, tzinfo=timezone.utc)),
                       [key], started_from=None)


def test_string_labels_and_an_extra_field_go_through_curate_and_features(spark, local_lake, tmp_path):
    """Nothing in the stages names a dataset's columns: other field names, labels given as names, an
    int id and an extra column, all from the YAML."""
    import yaml

    spec = {
        "name": "news_topics", "topic": "news.events",
        "fields": [{"name": "doc", "type": "int", "role": "id"}, {"name": "body", "type": "string", "role": "text"},
                   {"name": "topic", "type": "string", "role": "label"}, {"name": "outlet", "type": "string"},
                   {"name": "published", "type": "timestamp", "role": "event_time"}],
        "labels": ["business", "politics", "sports", "tech"],
        "curate": [{"name": "normalize_whitespace"}, {"name": "drop_empty"}, {"name": "exact_dedup"}],
        "model": {"registered_name": "news_topics_classifier"},
    }
    path = tmp_path / "news_topics.yaml"
    path.write_text(yaml.safe_dump(spec))
    topics = ["business", "politics", "sports", "tech"]
    rows = [{"doc": i, "body": f"Article {i} about {topics[i % 4]} and more words.", "topic": topics[i % 4],
             "outlet": f"outlet{i % 3}"} for i in range(24)]
    rows.append({"doc": 99, "body": "A story with a topic nobody listed.", "topic": "weather", "outlet": "x"})
    write_news_raw(local_lake, str(path), rows)
    curated = run_curate(StageRun.create(str(path), "2026-11-23", "c1", lake=local_lake), spark=spark)
    table = local_lake.read_table(curated)
    assert table.column_names == ["id", "text", "label", "outlet", "event_time", "text_hash", "cluster_id"]
    got = {r["id"]: (r["label"], r["outlet"]) for r in table.to_pylist()}
    assert got["5"] == (1, "outlet2") and got["99"] == (None, "x")  # names -> indices; unknown -> null

    commit = run(StageRun.create(str(path), "2026-11-23", "f1", lake=local_lake), spark=spark)
    assert commit.dropped == {"unknown_label": 1} and commit.rows == 24
    assert commit.stats["labels"] == {t: 6 for t in topics}
    features = local_lake.read_table(commit)
    assert tuple(features.column_names) == (*FEATURES_COLUMNS, "outlet", "event_time")
    assert {(r["id"], r["label"], r["outlet"]) for r in features.to_pylist() if r["id"] == "7"} == {("7", 3, "outlet1")}


@pytest.mark.parametrize("side", ["left", "right"])
def test_tokenizer_ids_equal_autotokenizer(side):
    """The Spark workers use tokenizers directly (no torch); the ids are AutoTokenizer's."""
    from transformers import AutoTokenizer

    from lakeforge.config import PipelineConfig
    from lakeforge.weights import resolve_weights

    pipeline = PipelineConfig.load("movie_reviews")
    spec = TokenizerSpec(path=str(resolve_weights(pipeline.model.base, "tokenizer.json") / "tokenizer.json"), max_length=16, truncation_side=side,
                         batch_rows=2)
    texts = ["A moving, beautifully acted film.", "word " * 40 + "the verdict: superb!", "", "Ünïcödé <EMAIL_ADDRESS> 10/10"]
    ids, truncated = spec.encode(texts)
    auto = AutoTokenizer.from_pretrained(str(resolve_weights(pipeline.model.base, "tokenizer.json")), truncation_side=side)
    assert ids == auto(texts, truncation=True, max_length=16)["input_ids"]
    assert truncated == [False, True, False, False]


# -- the job's round trip on a local lake -------------------------------------------------------

def test_run_publishes_features(spark, local_lake, publish_raw, tiny_pipeline):
    reviews = [{"id": f"m{i:03d}", "text": f"Review {i}: the {'great' if i % 2 else 'poor'} acting and a fine plot.",
                "label": i % 2} for i in range(40)]
    reviews += [{"id": "m900", "text": "Review 3: the great acting and a fine plot.", "label": 1},  # duplicate of m003
                {"id": "m901", "text": "A review with a label the model does not know.", "label": 7}]
    part = publish_raw(reviews)
    import yaml

    from lakeforge.config import PIPELINES_DIR

    chain = [s for s in yaml.safe_load((PIPELINES_DIR / "movie_reviews.yaml").read_text())["curate"]
             if s["name"] != "near_dedup"]  # the 40 templated reviews are near-duplicates of each other
    pipeline = tiny_pipeline(curate=chain)
    curated = run_curate(StageRun.create(pipeline, "2026-11-23", "c1", lake=local_lake), spark=spark)
    commit = run(StageRun.create(pipeline, "2026-11-23", "f1", lake=local_lake), spark=spark)
    assert (commit.layer, commit.table, commit.rows, commit.dropped) == (
        "features", "movie_reviews.features", 40, {"unknown_label": 1})
    assert commit.inputs == [curated.ref] == [local_lake.read_commit("curated", "movie_reviews", part).ref]
    assert sum(commit.stats["rows_per_split"].values()) == 40
    assert commit.stats["labels"] == {"negative": 20, "positive": 20}
    assert commit.stats["split_ratios"] == RATIOS
    assert local_lake.read_commit("features", "movie_reviews", part) == commit.model_copy(
        update={"stats": {k: v for k, v in commit.stats.items() if k != "dropped_samples"}})

    # the pipeline's extra field is kept after the features columns, then the partition column
    assert tuple(local_lake.read_table(commit).column_names) == (*FEATURES_COLUMNS, "source", "event_time")
    rows = spark.table(f"{local_lake.settings.catalog_name}.movie_reviews.features")
    assert dict(rows.dtypes)["input_ids"] == "array<int>" and dict(rows.dtypes)["num_tokens"] == "int"
    collected = rows.collect()
    assert {r["source"] for r in collected} == {"imdb"}
    assert len(collected) == 40 and {r["split"] for r in collected} <= set(RATIOS)
    assert all(r["input_ids"][0] == 101 and r["input_ids"][-1] == 102 and r["num_tokens"] == len(r["input_ids"])
               for r in collected)  # [CLS] … [SEP]
    assert commit.stats["tokens"]["max_length"] == 128 and commit.stats["tokens"]["truncated_share"] == 0
    assert commit.stats["split_by"] == "cluster_id" and commit.stats["curate_report"]["html"].endswith("quality.html")


def test_run_empty_partition(spark, local_lake, publish_raw, tiny_pipeline):
    """0 raw rows: curate and features publish commits with 0 rows and no files."""
    publish_raw([], partition="2026-11-24")
    pipeline = tiny_pipeline()
    curated = run_curate(StageRun.create(pipeline, "2026-11-24", lake=local_lake), spark=spark)
    assert (curated.rows, curated.files, curated.stats["rows_in"]) == (0, 0, 0)
    commit = run(StageRun.create(pipeline, "2026-11-24", lake=local_lake), spark=spark)
    assert (commit.rows, commit.files) == (0, 0)
    assert commit.stats["rows_per_split"] == {"train": 0, "validation": 0, "test": 0}
    assert local_lake.read_table(commit).num_rows == 0 and local_lake.data_files(commit) == []


def test_run_without_curated_partition_fails_loudly(spark, local_lake, publish_raw):
    publish_raw([], partition="2026-11-25")
    with pytest.raises(LakeError, match="curated"):
        run(StageRun.create("movie_reviews", "2026-11-25", lake=local_lake), spark=spark)
