"""Incremental dedup across partitions on a local lake: a 3-day backfill never re-admits a duplicate,
reruns give the same content, and a crash leaves the partition and its index entries both old."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from lakeforge.curate import run
from lakeforge.curate.index import prior_index
from lakeforge.errors import DataQualityError, PublishConflictError
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


def content_hash(lake, manifest):
    rows = [tuple(r.values()) for f in manifest.files
            for r in pq.read_table(lake.arrow_path(f.path)).to_pylist()]
    return hashlib.sha256(repr(rows).encode()).hexdigest(), [r[0] for r in rows]


@pytest.fixture(scope="module")
def curated_template(spark, tmp_path_factory, make_lake, raw_writer, pipeline_writer):
    """The 3-day backfill, curated once per module into a template lake (each curate run costs
    ~10 s of Spark); tests get a copy (:func:`backfill`)."""
    from lakeforge.config import Partition

    home = tmp_path_factory.mktemp("curated-template")
    lake = make_lake(home / "lake")
    pipeline = pipeline_writer(home)
    for day, rows in DAYS.items():
        raw_writer(lake, [{"id": i, "text": t, "label": 1} for i, t in rows], partition=day)
    for day in DAYS:
        run(StageRun.create(pipeline, day, f"r-{day}", lake=lake), spark=spark)
    return lake.root, pipeline, [Partition.parse(day) for day in DAYS]


@pytest.fixture
def backfill(curated_template, local_lake):
    """A copy of the curated 3-day backfill in the test's own lake (manifests re-pointed at it)."""
    import shutil

    root, pipeline, parts = curated_template
    shutil.copytree(root, local_lake.root)
    for manifest in local_lake.root.rglob("_MANIFEST.json"):
        manifest.write_text(manifest.read_text().replace(f"file://{root}", f"file://{local_lake.root}"))
    return pipeline, {p.path.removeprefix("dt="): local_lake.read_manifest("curated", "movie_reviews", p) for p in parts}


def ids(lake, manifest):
    return content_hash(lake, manifest)[1]


def test_backfill_never_readmits_a_duplicate(local_lake, backfill):
    _, m = backfill
    assert ids(local_lake, m["2026-11-20"]) == ["a1", "a2", "a3"]
    assert ids(local_lake, m["2026-11-21"]) == ["b3"]
    assert ids(local_lake, m["2026-11-22"]) == ["c3", "c4"]
    assert (m["2026-11-21"].dropped["exact_duplicate_cross_partition"], m["2026-11-21"].dropped["near_duplicate_cross_partition"],
            m["2026-11-21"].dropped["near_duplicate"]) == (1, 1, 1)
    assert m["2026-11-22"].dropped["exact_duplicate_cross_partition"] == 1  # c2 = b3
    assert m["2026-11-22"].dropped["near_duplicate_cross_partition"] == 1  # c1 ~ a3
    excluded = {r["id"]: r for f in m["2026-11-22"].stats["excluded"]["files"]
                for r in pq.read_table(local_lake.arrow_path(f["path"])).to_pylist()}
    assert excluded["c2"]["duplicate_of"] == "b3" and excluded["c1"]["duplicate_of"] == "a3"
    assert m["2026-11-22"].stats["dedup"]["index"] == {"partitions": 2, "rows": 4}


def test_rerun_gives_the_same_content_whatever_the_order(spark, local_lake, backfill):
    pipeline, m = backfill
    before = {day: content_hash(local_lake, m[day])[0] for day in DAYS}
    # rerun the middle day after the later one was curated: the index holds both neighbours
    again = run(StageRun.create(pipeline, "2026-11-21", "again", lake=local_lake), spark=spark)
    assert content_hash(local_lake, again)[0] == before["2026-11-21"]
    assert again.dropped == m["2026-11-21"].dropped
    first = run(StageRun.create(pipeline, "2026-11-20", "again", lake=local_lake), spark=spark)
    assert content_hash(local_lake, first)[0] == before["2026-11-20"]


def test_crash_before_publish_leaves_partition_and_index_old(spark, local_lake, backfill, publish_raw, monkeypatch):
    pipeline, m = backfill
    # day 1 gets a new text; the run crashes after writing its files, before the manifest
    publish_raw([{"id": i, "text": t, "label": 1} for i, t in DAYS["2026-11-20"] + [("a9", NEW)]],
                partition="2026-11-20")

    def crash(manifest):
        raise KeyboardInterrupt("killed before the manifest PUT")

    monkeypatch.setattr(local_lake, "publish", crash)
    with pytest.raises(KeyboardInterrupt):
        run(StageRun.create(pipeline, "2026-11-20", "crashed", lake=local_lake), spark=spark)
    monkeypatch.undo()
    from lakeforge.config import Partition

    part = Partition.parse("2026-11-20")
    published = local_lake.read_manifest("curated", "movie_reviews", part)
    assert published.run_id == "r-2026-11-20"  # both old: data ...
    prior = prior_index(spark, StageRun.create(pipeline, "2026-11-22", lake=local_lake), None)
    assert sorted(r["p_id"] for r in prior.exact.collect()) == ["a1", "a2", "a3", "b3"]  # ... and index
    # the rerun publishes both new; the crashed run's files are removed with it
    fixed = run(StageRun.create(pipeline, "2026-11-20", "fixed", lake=local_lake), spark=spark)
    assert ids(local_lake, fixed) == ["a1", "a2", "a3", "a9"]
    prior = prior_index(spark, StageRun.create(pipeline, "2026-11-22", lake=local_lake), None)
    assert sorted(r["p_id"] for r in prior.exact.collect()) == ["a1", "a2", "a3", "a9", "b3"]
    assert sorted(p.name for p in (local_lake.root / "curated/movie_reviews/dt=2026-11-20").glob("run=*")) == ["run=fixed"]
    # the new index entry is used: a copy of a9 arriving in day 3 is dropped there
    publish_raw([{"id": i, "text": t, "label": 1} for i, t in DAYS["2026-11-22"] + [("c9", NEW)]],
                partition="2026-11-22")
    day3 = run(StageRun.create(pipeline, "2026-11-22", "again", lake=local_lake), spark=spark)
    assert ids(local_lake, day3) == ["c3", "c4"]
    assert day3.dropped["exact_duplicate_cross_partition"] == 2  # c2 = b3, c9 = a9


def test_publish_refused_when_another_partition_changed_meanwhile(spark, local_lake, backfill, monkeypatch):
    pipeline, m = backfill
    import lakeforge.curate.job as job

    real = job.check_index_unchanged

    def republish_day1_first(stage, prior):
        lake = stage.lake
        stale = lake.read_manifest("curated", "movie_reviews", __import__("lakeforge.config", fromlist=["Partition"]).Partition.parse("2026-11-20"))
        lake.publish(stale.model_copy(update={"run_id": "concurrent"}))
        return real(stage, prior)

    monkeypatch.setattr(job, "check_index_unchanged", republish_day1_first)
    with pytest.raises(PublishConflictError, match=r"dt=2026-11-20"):
        run(StageRun.create(pipeline, "2026-11-22", "late", lake=local_lake), spark=spark)


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
    assert not (local_lake.root / "curated/movie_reviews/dt=2026-11-20/_MANIFEST.json").exists()
    # its report is there, saying why
    report = next((local_lake.root / "reports/movie_reviews/dt=2026-11-20").glob("run=g1/quality.json")).read_text()
    assert '"passed": false' in report
    # the next day does not depend on it
    ok = run(StageRun.create(strict, "2026-11-21", "g2", lake=local_lake), spark=spark)
    assert ok.rows == 2
