"""The curate job: the chain over a raw frame (counts, samples, determinism) and its round trip on a
local lake (the S3 variant runs in tests/integration)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest

from lakeforge.config import PipelineConfig
from lakeforge.curate import build_steps, curate_frame, run, select_curated
from lakeforge.errors import LakeError, PartitionNotPublishedError
from lakeforge.stage.run import StageRun
from lakeforge.stage.schema import curated_columns
from lakeforge.stage.spark_io import sorted_for_write

REVIEWS_PIPELINE = PipelineConfig.load("movie_reviews")
CURATED_COLUMNS = tuple(curated_columns(REVIEWS_PIPELINE))


def frame(arrow_frame, rows):
    """``rows``: list of (id, text)."""
    return arrow_frame("id string, text string", rows)




RAW = [
    ("r1", "A <b>great</b> film.<br /><br />Would watch it again with friends!"),
    ("r0", "a great film.\n\nwould   watch it again with friends!"),  # duplicate of r1 once cleaned; smaller id wins
    ("r2", "<p></p>"),
    ("r3", "too short"),
    ("r4", "x" * 20_001),
    ("r5", "A perfectly fine review of a mediocre movie."),
    ("r6", "   "),
    ("r7", "Another   review of it, &quot;quoted&quot;,  long enough."),
]


EVENT_TIME = datetime(2026, 11, 23, 1, tzinfo=timezone.utc)


def chain_result(arrow_frame, samples=5):
    df = arrow_frame(
        "id string, text string, label bigint, source string, event_time timestamp, kafka_topic string, "
        "kafka_partition int, kafka_offset bigint",
        [(i, t, 1, "imdb", EVENT_TIME, "movie_reviews.events", 0, n) for n, (i, t) in enumerate(RAW)])
    return curate_frame(df, build_steps(PipelineConfig.load("movie_reviews").curate), samples_per_reason=samples)


def nonzero(counts):
    return {k: v for k, v in counts.items() if v}


@pytest.fixture(scope="module")
def chain(arrow_frame):
    return chain_result(arrow_frame)


def test_curate_frame_counts_reasons_and_cleans(chain):
    assert (chain.rows_in, chain.rows_out) == (8, 3)
    assert nonzero(chain.counts_by_reason) == {"empty_text": 2, "too_short": 1, "too_long": 1, "exact_duplicate": 1}
    # every rule of the chain is reported, zeros included
    assert {"near_duplicate", "too_few_stop_words", "duplicated_5grams"} <= set(chain.counts_by_reason)
    kept = {r["id"]: r for r in chain.kept.collect()}
    assert kept["r0"]["text"] == "a great film.\n\nwould watch it again with friends!"
    assert kept["r7"]["text"] == 'Another review of it, "quoted", long enough.'
    assert set(kept) == {"r0", "r5", "r7"}
    assert kept["r5"]["text_hash"] == hashlib.sha256(b"a perfectly fine review of a mediocre movie.").hexdigest()
    # samples trace back to the Kafka record, texts truncated
    dup = chain.dropped_samples["exact_duplicate"][0]
    assert (dup["id"], dup["duplicate_of"], dup["kafka_offset"]) == ("r1", "r0", 0)
    assert len(chain.dropped_samples["too_long"][0]["text"]) < 400
    assert [s["id"] for s in chain.dropped_samples["empty_text"]] == ["r2", "r6"]
    json.dumps(chain.dropped_samples)  # goes into the manifest


def test_no_steps_counts_nothing(arrow_frame):
    result = curate_frame(frame(arrow_frame, [("a", "x")]), [])
    assert (result.rows_in, result.rows_out, result.counts_by_reason) == (1, 1, {})
    assert result.dropped is None


def test_curate_is_deterministic(spark, arrow_frame, chain, tmp_path):
    """Rerun identity: same rows, same order, same content hash; the bytes match within one JVM
    (across JVMs parquet-mr may list a column chunk's encodings in another order in the footer)."""
    again = chain_result(arrow_frame, samples=1)
    assert sorted(map(tuple, chain.kept.collect())) == sorted(map(tuple, again.kept.collect()))
    assert again.counts_by_reason == chain.counts_by_reason
    assert again.dropped_samples == {reason: rows[:1] for reason, rows in chain.dropped_samples.items()}
    digests = []
    for n, result in enumerate((chain, again)):
        out = tmp_path / f"out{n}"
        laid_out = sorted_for_write(select_curated(result.kept, REVIEWS_PIPELINE), result.rows_out, rows_per_file=1000)
        laid_out.write.option("compression", "zstd").parquet(f"file://{out}")
        files = sorted(out.glob("*.parquet"))
        assert len(files) == 1
        digests.append(hashlib.sha256(files[0].read_bytes()).hexdigest())
    # identical bytes within one JVM (across JVMs parquet-mr may reorder the footer's encodings list)
    assert digests[0] == digests[1]
    written = spark.read.parquet(str(tmp_path / "out0"))
    assert tuple(written.columns) == CURATED_COLUMNS
    assert [r["id"] for r in written.collect()] == ["r0", "r5", "r7"]
    # the cluster id of a row without near-duplicates is its own text hash
    assert {r["cluster_id"] == r["text_hash"] for r in written.collect()} == {True}



# -- the job's round trip on a local lake (the S3 variant runs in tests/integration) --------------

REVIEWS = [
    {"id": "e1", "text": "An <i>excellent</i> movie,<br />truly moving and sad.", "label": 1},
    {"id": "e0", "text": "an excellent movie, truly moving and sad.", "label": 1},
    {"id": "e2", "text": "meh", "label": 0},
    {"id": "e3", "text": "Dull, slow and far too long for what it is.", "label": 0},
    {"id": "e4", "text": "", "label": 0},
]


def test_run_publishes_curated_partition(spark, local_lake, publish_raw, tiny_pipeline):
    part = publish_raw(REVIEWS)
    pipeline = tiny_pipeline()
    commit = run(StageRun.create(pipeline, "2026-11-23", "c1", lake=local_lake), spark=spark)
    assert (commit.layer, commit.partition, commit.run_id) == ("curated", "dt=2026-11-23", "c1")
    assert commit.rows == 2 and commit.files == 1
    assert nonzero(commit.dropped) == {"empty_text": 1, "too_short": 1, "exact_duplicate": 1}
    assert commit.stats["rows_in"] == 5 and commit.stats["rows_out"] == 2
    raw = local_lake.read_commit("raw", "movie_reviews", part)
    assert commit.inputs == [{"table": "movie_reviews.raw", "snapshot_id": raw.snapshot_id, "partition": part.path}]
    assert local_lake.read_commit("curated", "movie_reviews", part) == commit.model_copy(
        update={"stats": {k: v for k, v in commit.stats.items() if k != "dropped_samples"}})

    curated = local_lake.read_table(commit)
    assert tuple(curated.column_names) == CURATED_COLUMNS
    assert [(r["id"], r["text"]) for r in curated.to_pylist()] == [
        ("e0", "an excellent movie, truly moving and sad."), ("e3", "Dull, slow and far too long for what it is.")]
    assert dict(spark.table(f"{local_lake.settings.catalog_name}.movie_reviews.curated").dtypes) == {
        "id": "string", "text": "string", "label": "bigint", "source": "string", "event_time": "timestamp",
        "text_hash": "string", "cluster_id": "string"}

    # the dropped rows are kept with their reason, the index lists the kept rows
    excluded = local_lake.read_table(local_lake.read_commit("excluded", "movie_reviews", part)).to_pylist()
    assert sorted((r["id"], r["reason"], r["duplicate_of"]) for r in excluded) == [
        ("e1", "exact_duplicate", "e0"), ("e2", "too_short", None), ("e4", "empty_text", None)]
    index = local_lake.read_commit("dedup_index", "movie_reviews", part)
    assert index.run_id == "c1" and commit.stats["index"]["snapshot_id"] == index.snapshot_id
    segment = local_lake.read_table(index).to_pylist()
    assert sorted(r["id"] for r in segment) == ["e0", "e3"]
    assert all(len(r["bands"]) == commit.stats["index"]["minhash"]["bands"] for r in segment)
    # the report is in the lake, linked from the commit
    report = json.loads(local_lake.get_bytes(commit.stats["report"]["json"]))
    assert report["rows_in"] == 5 and report["gate"]["passed"]
    assert b"<svg" in local_lake.get_bytes(commit.stats["report"]["html"])

    # a rerun replaces the partition whole, with the same rows in the same order; the first run's
    # rows stay readable at its snapshot (time travel)
    before = curated.to_pylist()
    again = run(StageRun.create(pipeline, "2026-11-23", "c2", lake=local_lake), spark=spark)
    assert again.snapshot_id != commit.snapshot_id
    assert local_lake.read_table(again).to_pylist() == before
    assert local_lake.read_commit("curated", "movie_reviews", part).run_id == "c2"
    assert local_lake.read_table(commit).to_pylist() == before


def test_run_without_raw_partition_fails_loudly(spark, local_lake):
    with pytest.raises(PartitionNotPublishedError, match="raw"):
        run(StageRun.create("movie_reviews", "2026-11-25", lake=local_lake), spark=spark)


def test_run_refuses_a_partition_that_miscounts_its_rows(spark, local_lake, publish_raw, tiny_pipeline):
    part = publish_raw(REVIEWS)
    raw = local_lake.read_commit("raw", "movie_reviews", part)
    table = local_lake.existing_table("movie_reviews", "raw")
    with table.transaction() as tx:  # a commit whose record says 99 rows over the same 5
        with tx.update_snapshot(snapshot_properties=raw.model_copy(update={"rows": 99}).properties()).overwrite():
            pass
    with pytest.raises(LakeError, match="says 99 rows but holds 5"):
        run(StageRun.create(tiny_pipeline(), "2026-11-23", lake=local_lake), spark=spark)
