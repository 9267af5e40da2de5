"""Incremental dedup across partitions on a local lake: a 3-day backfill never re-admits a duplicate,
reruns give the same content, a crash leaves the partition and the index the next run uses both old,
and index rows made with other MinHash parameters are not trusted."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest
import yaml

from lakeforge.catalog import LAYERS
from lakeforge.config import PIPELINES_DIR, Partition, PipelineConfig
from lakeforge.curate import run
from lakeforge.curate.dedup import NearDeduplicator
from lakeforge.curate.index import prior_index
from lakeforge.errors import DataQualityError, PartitionNotPublishedError, PublishConflictError
from lakeforge.lake import Commit
from lakeforge.stage.run import StageRun

BASE = [
    "A slow burn of a thriller that pays off in its last act, with a performance that will stay with me for weeks.",
    "The jokes land more often than not and the cast clearly had fun making it, which is infectious to watch.",
    "An overlong mess with a script that never decides what it wants to be, and a score that drowns every scene.",
    "Gorgeous to look at, but the story is thin and the characters are sketches rather than people I cared about.",
    "It is the kind of family film that respects its audience, and the young lead is a real discovery this year.",
    "I walked out halfway through: the pacing is glacial and the dialogue is the worst I have heard in a decade.",
]
NEW = "A quiet, patient drama about two brothers that earns every one of its tears without ever asking for them."


def near(text):
    """A near-duplicate at Jaccard ~0.94 (one shingle more); a word swapped inside a 20-word text
    would change five of its ~17 shingles, below the 0.75 threshold."""
    return text + " Really."


DAYS = {
    # day 1: three originals
    "2026-11-20": [("a1", BASE[0]), ("a2", BASE[1]), ("a3", BASE[2])],
    # day 2: an exact copy and a near-duplicate of day 1, one new text and its own near copy
    "2026-11-21": [("b1", BASE[0].upper()), ("b2", near(BASE[1])), ("b3", BASE[3]), ("b4", near(BASE[3]))],
    # day 3: copies of day 1 and day 2, plus new texts
    "2026-11-22": [("c1", near(BASE[2])), ("c2", BASE[3]), ("c3", BASE[4]), ("c4", BASE[5])],
}


def content_hash(lake, commit: Commit):
    """sha256 of the rows a commit published (read at its snapshot) and their ids, in order."""
    rows = [tuple(r.values()) for r in lake.read_table(commit).to_pylist()]
    return hashlib.sha256(repr(rows).encode()).hexdigest(), [r[0] for r in rows]


def ids(lake, commit: Commit):
    return content_hash(lake, commit)[1]


def day(value: str) -> Partition:
    return Partition.parse(value)


def raw_rows(rows):
    """Raw rows (the raw contract) of ``(id, text)`` pairs."""
    return [{"id": i, "text": t, "label": 1} for i, t in rows]


@pytest.fixture(scope="module")
def curated_template(spark, tmp_path_factory, make_lake, raw_writer, pipeline_writer):
    """The 3-day backfill, curated once per module (each curate run costs ~10 s of Spark), and the
    snapshot every table of the pipeline was at afterwards (:func:`backfill` puts them back there)."""
    home = tmp_path_factory.mktemp("curated-template")
    lake = make_lake(home / "lake")
    pipeline = pipeline_writer(home)
    for when, rows in DAYS.items():
        raw_writer(lake, raw_rows(rows), partition=when)
    for when in DAYS:
        run(StageRun.create(pipeline, when, f"r-{when}", lake=lake), spark=spark)
    baseline = {layer: lake.snapshot_id("movie_reviews", layer) for layer in LAYERS}
    return lake, pipeline, baseline


@pytest.fixture
def backfill(curated_template):
    """The curated 3-day backfill: ``(lake, pipeline, day -> curated commit)``. A test commits on top
    of it; afterwards every table is rolled back to its snapshot after the backfill (an Iceberg
    rollback: the test's commits leave the tables' history, so the next test sees the backfill alone)."""
    lake, pipeline, baseline = curated_template
    yield lake, pipeline, {when: lake.read_commit("curated", "movie_reviews", day(when)) for when in DAYS}
    for layer, snapshot_id in baseline.items():
        table = lake.existing_table("movie_reviews", layer)
        if table is None:
            continue
        if snapshot_id is None:  # created by the test
            lake.catalog.drop_table(f"movie_reviews.{layer}")
        elif table.current_snapshot().snapshot_id != snapshot_id:
            table.manage_snapshots().set_current_snapshot(snapshot_id).commit()


def test_backfill_never_readmits_a_duplicate(backfill):
    lake, _, m = backfill
    assert ids(lake, m["2026-11-20"]) == ["a1", "a2", "a3"]
    assert ids(lake, m["2026-11-21"]) == ["b3"]
    assert ids(lake, m["2026-11-22"]) == ["c3", "c4"]
    assert (m["2026-11-21"].dropped["exact_duplicate_cross_partition"],
            m["2026-11-21"].dropped["near_duplicate_cross_partition"], m["2026-11-21"].dropped["near_duplicate"]) == (
        1, 1, 1)
    assert m["2026-11-22"].dropped["exact_duplicate_cross_partition"] == 1  # c2 = b3
    assert m["2026-11-22"].dropped["near_duplicate_cross_partition"] == 1  # c1 ~ a3
    excluded_commit = lake.read_commit("excluded", "movie_reviews", day("2026-11-22"))
    assert m["2026-11-22"].stats["excluded"] == {"rows": excluded_commit.rows,
                                                 "snapshot_id": excluded_commit.snapshot_id}
    excluded = {r["id"]: r for r in lake.read_table(excluded_commit).to_pylist()}
    assert excluded["c2"]["duplicate_of"] == "b3" and excluded["c1"]["duplicate_of"] == "a3"
    assert m["2026-11-22"].stats["dedup"]["index"] == {"partitions": 2, "rows": 4}
    # each curated commit names the index rows its run published
    for when, commit in m.items():
        index = lake.read_commit("dedup_index", "movie_reviews", day(when))
        assert (index.run_id, index.snapshot_id, index.rows) == (
            commit.run_id, commit.stats["index"]["snapshot_id"], commit.rows)
        assert sorted(r["id"] for r in lake.read_table(index).to_pylist()) == sorted(ids(lake, commit))


def test_rerun_gives_the_same_content_whatever_the_order(spark, backfill):
    lake, pipeline, m = backfill
    before = {when: content_hash(lake, m[when])[0] for when in DAYS}
    # rerun the middle day after the later one was curated: the index holds both neighbours
    again = run(StageRun.create(pipeline, "2026-11-21", "again", lake=lake), spark=spark)
    assert content_hash(lake, again)[0] == before["2026-11-21"]
    assert again.dropped == m["2026-11-21"].dropped
    first = run(StageRun.create(pipeline, "2026-11-20", "again", lake=lake), spark=spark)
    assert content_hash(lake, first)[0] == before["2026-11-20"]


def test_crash_before_publish_leaves_partition_and_index_old(spark, backfill, raw_writer, monkeypatch):
    lake, pipeline, m = backfill
    import lakeforge.curate.job as job

    # day 1 gets a new text; the run crashes after publishing its excluded and index rows, before
    # the curated commit (the partition's publish point)
    raw_writer(lake, raw_rows(DAYS["2026-11-20"] + [("a9", NEW)]), partition="2026-11-20")
    real_publish = job.publish_frame

    def crash(stage, df, rows, *, layer, **kwargs):
        if layer == "curated":
            raise KeyboardInterrupt("killed before the curated commit")
        return real_publish(stage, df, rows, layer=layer, **kwargs)

    monkeypatch.setattr(job, "publish_frame", crash)
    with pytest.raises(KeyboardInterrupt):
        run(StageRun.create(pipeline, "2026-11-20", "crashed", lake=lake), spark=spark)
    monkeypatch.undo()

    part = day("2026-11-20")
    published = lake.read_commit("curated", "movie_reviews", part)
    assert published == m["2026-11-20"]  # both old: data ...
    assert ids(lake, published) == ["a1", "a2", "a3"]
    # (the crashed run's index rows were committed, but no curated commit of that run names them)
    assert lake.read_commit("dedup_index", "movie_reviews", part).run_id == "crashed"
    prior = prior_index(spark, StageRun.create(pipeline, "2026-11-22", lake=lake), None)
    assert sorted(r["p_id"] for r in prior.exact.collect()) == ["a1", "a2", "a3", "b3"]  # ... and index

    # the rerun publishes both new; the replaced rows stay readable at the old snapshot
    fixed = run(StageRun.create(pipeline, "2026-11-20", "fixed", lake=lake), spark=spark)
    assert ids(lake, fixed) == ["a1", "a2", "a3", "a9"]
    assert lake.read_commit("curated", "movie_reviews", part).run_id == "fixed"
    assert lake.read_commit("dedup_index", "movie_reviews", part).run_id == "fixed"
    assert ids(lake, m["2026-11-20"]) == ["a1", "a2", "a3"]  # time travel
    prior = prior_index(spark, StageRun.create(pipeline, "2026-11-22", lake=lake), None)
    assert sorted(r["p_id"] for r in prior.exact.collect()) == ["a1", "a2", "a3", "a9", "b3"]
    # the new index entry is used: a copy of a9 arriving in day 3 is dropped there
    raw_writer(lake, raw_rows(DAYS["2026-11-22"] + [("c9", NEW)]), partition="2026-11-22")
    day3 = run(StageRun.create(pipeline, "2026-11-22", "again", lake=lake), spark=spark)
    assert ids(lake, day3) == ["c3", "c4"]
    assert day3.dropped["exact_duplicate_cross_partition"] == 2  # c2 = b3, c9 = a9


def republish(lake, pipeline_file: str, commit: Commit, run_id: str) -> Commit:
    """Publish a curated partition again, the same rows under another run (as a concurrent rerun would)."""
    pipeline = PipelineConfig.load(pipeline_file)
    key = lake.staging_key(lake.table(pipeline, "curated"), commit.lake_partition, run_id) + "/part-00000.parquet"
    (lake.root / key).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(lake.read_table(commit), lake.root / key)
    return lake.publish_files(pipeline, commit.model_copy(update={"run_id": run_id}), [key],
                              started_from=lake.snapshot_id(pipeline.name, "curated"))


def test_publish_refused_when_another_partition_changed_meanwhile(spark, backfill, monkeypatch):
    lake, pipeline, m = backfill
    import lakeforge.curate.job as job

    real = job.check_index_unchanged

    def republish_day1_first(stage, prior):
        republish(stage.lake, pipeline, m["2026-11-20"], "concurrent")
        return real(stage, prior)

    monkeypatch.setattr(job, "check_index_unchanged", republish_day1_first)
    with pytest.raises(PublishConflictError, match=r"dt=2026-11-20"):
        run(StageRun.create(pipeline, "2026-11-22", "late", lake=lake), spark=spark)
    assert lake.read_commit("curated", "movie_reviews", day("2026-11-22")) == m["2026-11-22"]  # nothing published


def test_index_made_with_other_minhash_params_is_recomputed(spark, backfill, tiny_pipeline):
    lake, pipeline, _ = backfill
    part = day("2026-11-20")
    stored = {r["id"]: r["bands"] for r in lake.read_table(lake.read_commit("dedup_index", "movie_reviews", part))
              .to_pylist()}

    def a3_bands(near):
        prior = prior_index(spark, StageRun.create(pipeline, "2026-11-22", lake=lake), near)
        return sorted((r["band"], r["bucket"]) for r in prior.bands.where("p_id = 'a3'").collect())

    # the same parameters: the stored band ids are used; another seed: they are recomputed
    assert a3_bands(NearDeduplicator(threshold=0.75, num_perm=128)) == sorted(enumerate(stored["a3"]))
    reseeded = a3_bands(NearDeduplicator(threshold=0.75, num_perm=128, seed=2))
    assert reseeded and reseeded != sorted(enumerate(stored["a3"]))

    # a run with the new seed still finds day 1's near-duplicate, and its index rows record the new seed
    chain = [{**s, "params": {**s["params"], "seed": 2}} if s["name"] == "near_dedup" else s
             for s in yaml.safe_load((PIPELINES_DIR / "movie_reviews.yaml").read_text())["curate"]]
    day3 = run(StageRun.create(tiny_pipeline(curate=chain), "2026-11-22", "reseeded", lake=lake), spark=spark)
    assert ids(lake, day3) == ["c3", "c4"]
    assert day3.dropped["near_duplicate_cross_partition"] == 1  # c1 ~ a3
    assert day3.stats["index"]["minhash"]["seed"] == 2 == lake.read_commit(
        "dedup_index", "movie_reviews", day("2026-11-22")).stats["minhash"]["seed"]


def test_gate_failure_publishes_nothing_and_blocks_only_its_partition(spark, local_lake, publish_raw, tiny_pipeline):
    strict = tiny_pipeline(quality_gate={"min_rows": 2, "max_drop_rate": {"too_short": 0.2}})
    publish_raw([{"id": "x1", "text": "meh", "label": 0}, {"id": "x2", "text": "bad", "label": 0},
                 {"id": "x3", "text": BASE[0], "label": 1}], partition="2026-11-20")
    publish_raw([{"id": "y1", "text": BASE[1], "label": 1}, {"id": "y2", "text": BASE[2], "label": 0}],
                partition="2026-11-21")
    with pytest.raises(DataQualityError) as err:
        run(StageRun.create(strict, "2026-11-20", "g1", lake=local_lake), spark=spark)
    message = str(err.value)
    assert "min_rows: 1 curated rows, at least 2 required" in message
    assert "max_drop_rate[too_short]: 2 of 3 input rows dropped (66.7%), limit 20.0%" in message
    assert "quality.html" in message
    for layer in ("curated", "excluded", "dedup_index"):  # not a row of it
        with pytest.raises(PartitionNotPublishedError):
            local_lake.read_commit(layer, "movie_reviews", day("2026-11-20"))
    # its report is there, saying why
    report = next((local_lake.root / "reports/movie_reviews/dt=2026-11-20").glob("run=g1/quality.json")).read_text()
    assert '"passed": false' in report
    # the next day does not depend on it
    ok = run(StageRun.create(strict, "2026-11-21", "g2", lake=local_lake), spark=spark)
    assert ok.rows == 2
