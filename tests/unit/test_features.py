"""Unit tests of lakeforge.features: split assignment, label validation, the job's round trip."""

from __future__ import annotations

import pytest

from lakeforge.curate import CurateConfig
from lakeforge.curate import run as run_curate
from lakeforge.errors import ConfigError, ManifestError
from lakeforge.features import (FEATURES_COLUMNS, FeaturesConfig, assign_split, features_frame, run,
                                split_stats)

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
    counts = {r["split"]: r["count"] for r in assign_split(distinct, RATIOS).groupBy("split").count().collect()}
    assert set(counts) == {"train", "validation", "test"}
    assert 740 <= counts["train"] <= 860
    assert 60 <= counts["validation"] <= 140 and 60 <= counts["test"] <= 140


def test_split_is_deterministic_and_follows_the_hash(hashed):
    from pyspark.sql import functions as F

    distinct, repeated = hashed
    first = sorted(map(tuple, assign_split(distinct, RATIOS).collect()))
    second = sorted(map(tuple, assign_split(distinct, dict(reversed(RATIOS.items()))).collect()))
    assert first == second  # key order of the ratios does not matter
    per_hash = assign_split(repeated, RATIOS).groupBy("text_hash").agg(F.countDistinct("split").alias("n"))
    assert {r["n"] for r in per_hash.collect()} == {1}


def test_degenerate_ratios(hashed):
    distinct, _ = hashed
    splits = {r["split"] for r in assign_split(distinct, {"train": 1.0, "validation": 0.0, "test": 0.0}).collect()}
    assert splits == {"train"}


@pytest.mark.parametrize("ratios", [{"train": 0.8, "validation": 0.1}, {"train": 1.2, "validation": -0.2, "test": 0}, {}])
def test_bad_ratios(spark, ratios):
    df = spark.range(1).selectExpr("'x' AS text_hash")
    with pytest.raises(ConfigError, match="split ratios"):
        assign_split(df, ratios)


def test_features_frame_drops_unknown_labels(arrow_frame):
    df = arrow_frame("id string, text string, label bigint, text_hash string",
                     [("a", "good", 1, "h1"), ("b", "bad", 0, "h2"), ("c", "odd", 2, "h3"), ("d", "neg", -1, "h4"),
                      ("e", "none", None, "h5")])
    result = features_frame(df, ["negative", "positive"], RATIOS)
    assert (result.rows_in, result.rows_out) == (5, 2)
    assert result.counts_by_reason == {"unknown_label": 3}
    assert [s["id"] for s in result.dropped_samples["unknown_label"]] == ["c", "d", "e"]
    assert tuple(result.kept.columns) == FEATURES_COLUMNS
    assert sorted((r["id"], r["label"]) for r in result.kept.collect()) == [("a", 1), ("b", 0)]
    stats = split_stats(result.kept, ["negative", "positive"])
    assert sum(stats["rows_per_split"].values()) == 2
    assert stats["labels"] == {"negative": 1, "positive": 1}
    assert set(stats["label_balance"]) == {"train", "validation", "test"}


# -- the job's round trip on a local lake -------------------------------------------------------

def test_run_publishes_features(spark, local_lake, publish_raw):
    reviews = [{"id": f"m{i:03d}", "text": f"Review {i}: {'great' if i % 2 else 'poor'} acting, fine plot.",
                "label": i % 2} for i in range(40)]
    reviews += [{"id": "m900", "text": "Review 3: great acting, fine plot.", "label": 1},  # duplicate of m003
                {"id": "m901", "text": "A review with a label the model does not know.", "label": 7}]
    part = publish_raw(reviews)
    run_curate(CurateConfig(pipeline="movie_reviews", partition="2026-11-23", run_id="c1"), lake=local_lake,
               spark=spark)
    manifest = run(FeaturesConfig(pipeline="movie_reviews", partition="2026-11-23", run_id="f1"),
                   lake=local_lake, spark=spark)
    assert (manifest.layer, manifest.rows, manifest.dropped) == ("features", 40, {"unknown_label": 1})
    assert manifest.inputs[0]["path"].endswith("curated/movie_reviews/dt=2026-11-23/_MANIFEST.json")
    assert sum(manifest.stats["rows_per_split"].values()) == 40
    assert manifest.stats["labels"] == {"negative": 20, "positive": 20}
    assert manifest.stats["split_ratios"] == RATIOS
    assert local_lake.read_manifest("features", "movie_reviews", part) == manifest

    rows = spark.read.parquet(*[f.path for f in manifest.files])
    assert tuple(rows.columns) == FEATURES_COLUMNS
    assert rows.count() == 40 and {r["split"] for r in rows.collect()} <= set(RATIOS)


def test_run_empty_partition(spark, local_lake, publish_raw):
    """0 raw rows: curate and features publish manifests with 0 rows and no files."""
    publish_raw([], partition="2026-11-24")
    curated = run_curate(CurateConfig(pipeline="movie_reviews", partition="2026-11-24"), lake=local_lake, spark=spark)
    assert (curated.rows, curated.files, curated.stats["rows_in"]) == (0, [], 0)
    manifest = run(FeaturesConfig(pipeline="movie_reviews", partition="2026-11-24"), lake=local_lake, spark=spark)
    assert (manifest.rows, manifest.files) == (0, [])
    assert manifest.stats["rows_per_split"] == {"train": 0, "validation": 0, "test": 0}


def test_run_without_curated_partition_fails_loudly(spark, local_lake, publish_raw):
    publish_raw([], partition="2026-11-25")
    with pytest.raises(ManifestError, match="curated"):
        run(FeaturesConfig(pipeline="movie_reviews", partition="2026-11-25"), lake=local_lake, spark=spark)
