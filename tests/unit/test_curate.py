"""Unit tests of lakeforge.curate: the cleaners on tiny inline texts, the runner, the job's round trip.

Filters, PII and dedup have their own files (test_curate_filters.py, test_curate_pii.py,
test_curate_dedup.py, test_curate_index.py, test_curate_gates.py)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest

from lakeforge.config import PipelineConfig
from lakeforge.curate import (CURATED_COLUMNS, STEP_REGISTRY, CurateConfig, EmptyTextFilter,
                              ExactDeduplicator, HtmlToText, LengthFilter, Lowercaser, UnicodeNormalizer,
                              WhitespaceNormalizer, build_steps, curate_frame, run, safe_run_id, select_curated,
                              write_sorted_parquet)
from lakeforge.curate.steps import FusedPass, plan
from lakeforge.errors import ConfigError, ManifestError


def frame(arrow_frame, rows):
    """``rows``: list of (id, text)."""
    return arrow_frame("id string, text string", rows)


def apply_one(arrow_frame, step, text):
    """(kept text or None, drop reason or None) of one row through one step (one Spark job)."""
    from pyspark.sql import functions as F

    kept, dropped = step.apply(frame(arrow_frame, [("a", text)]))
    both = kept.withColumn("reason", F.lit(None).cast("string"))
    if dropped is not None:
        both = both.unionByName(dropped.select(*both.columns))
    (row,) = both.collect()
    return (None if row["reason"] else row["text"]), row["reason"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Great movie.<br /><br />Loved it", "Great movie.\n\nLoved it"),
        ("<p>One</p><p>Two</p>", "One\nTwo\n"),
        ('<a href="http://x.y">link</a> and <B>bold</B>', "link and bold"),
        ("fish &amp; chips &lt;3 &quot;yes&quot; it&#39;s", 'fish & chips <3 "yes" it\'s'),
        ("escaped &lt;b&gt;tag&lt;/b&gt; stays text", "escaped <b>tag</b> stays text"),
        ("&amp;lt; is double escaped", "&lt; is double escaped"),
        ("3 < 5 and 7 > 2", "3 < 5 and 7 > 2"),
        ("a<script>alert(1)</script>b<style>p{}</style>c<!-- hidden -->d", "abcd"),
        ("line<br>break<BR/>again", "line\nbreak\nagain"),
        ("no markup at all", "no markup at all"),
        (None, None),
    ],
)
def test_strip_html(text, expected):
    assert HtmlToText().run_texts([text]) == ([expected], [None])


def test_strip_html_on_spark_keeps_other_columns(arrow_frame):
    assert apply_one(arrow_frame, HtmlToText(), "<p>a <b>b</b></p>") == ("a b\n", None)


@pytest.mark.parametrize("text, expected", [
    ("ﬁne ＡＢＣ … x\u00a0y", "fine ABC ... x y"),
    ("Cafe\u0301", "Caf\u00e9"),  # combining accent composed
    (None, None),
])
def test_normalize_unicode_nfkc(text, expected):
    assert UnicodeNormalizer().run_texts([text])[0] == [expected]


def test_lowercase():
    assert Lowercaser().run_texts(["Great FILM", None])[0] == ["great film", None]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  too   many    spaces  ", "too many spaces"),
        ("tabs\tand\u00a0nbsp\u2003em", "tabs and nbsp em"),
        ("ctrl\x00chars\x07gone\x7f", "ctrlcharsgone"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("para one  \n\n\n\n  para two", "para one\n\npara two"),
        ("windows\r\nline\rends", "windows\nline\nends"),
        ("\n\n  \t", ""),
        ("", ""),
        (None, None),
    ],
)
def test_normalize_whitespace(text, expected):
    assert WhitespaceNormalizer().run_texts([text]) == ([expected], [None])


@pytest.mark.parametrize(
    "step, text, reason",
    [
        (EmptyTextFilter(), "", "empty_text"),
        (EmptyTextFilter(), None, "empty_text"),
        (EmptyTextFilter(), " \n\t ", "empty_text"),
        (EmptyTextFilter(), "x", None),
        (LengthFilter(min_chars=5, max_chars=10), "four", "too_short"),
        (LengthFilter(min_chars=5, max_chars=10), "fives", None),
        (LengthFilter(min_chars=5, max_chars=10), "exactly 10", None),
        (LengthFilter(min_chars=5, max_chars=10), "eleven char", "too_long"),
        (LengthFilter(min_chars=5, max_chars=10), None, "too_short"),
        (LengthFilter(min_chars=1), "é" * 50, None),
        (LengthFilter(min_chars=2, max_chars=3), "ééé", None),  # characters, not bytes
    ],
)
def test_filters_drop_with_exact_reason(step, text, reason):
    texts, reasons = step.run_texts([text])
    assert reasons == [reason]
    assert texts == [text]  # a filter never rewrites


def test_filter_on_spark_splits_kept_and_dropped(arrow_frame):
    assert apply_one(arrow_frame, LengthFilter(min_chars=5), "four") == (None, "too_short")
    assert apply_one(arrow_frame, LengthFilter(min_chars=5), "fives") == ("fives", None)


def test_exact_dedup_keeps_smallest_id(arrow_frame):
    df = frame(arrow_frame, [("b", "Same Text"), ("a", "same  text"), ("c", "SAME TEXT "), ("d", "other")])
    kept, dropped = ExactDeduplicator().apply(df)
    assert sorted((r["id"], r["text"]) for r in kept.collect()) == [("a", "same  text"), ("d", "other")]
    assert sorted((r["id"], r["reason"], r["duplicate_of"]) for r in dropped.collect()) == [
        ("b", "exact_duplicate", "a"), ("c", "exact_duplicate", "a")]
    hashes = {r["id"]: r["text_hash"] for r in kept.collect()}
    assert hashes["a"] == hashlib.sha256(b"same text").hexdigest()


def test_build_steps_from_pipeline_yaml():
    steps = build_steps(PipelineConfig.load("movie_reviews").curate)
    assert [s.name for s in steps] == ["strip_html", "normalize_unicode", "normalize_whitespace", "scrub_pii",
                                       "drop_empty", "length_filter", "gopher_quality", "gopher_repetition",
                                       "c4_quality", "exact_dedup", "near_dedup"]
    assert (steps[5].min_chars, steps[5].max_chars) == (20, 20000)


def test_batch_steps_fuse_into_one_pass_and_minhash_joins_it():
    steps = build_steps(PipelineConfig.load("movie_reviews").curate)
    stages = plan(steps)
    # one Python pass for the nine batch steps plus the near-dedup signatures, then the frame steps
    assert [type(s).__name__ for s in stages] == ["FusedPass", "ExactDeduplicator", "NearDeduplicator"]
    assert [s.name for s in stages[0].steps][-1] == "minhash"
    assert len(stages[0].steps) == 10


def test_fused_chain_equals_steps_one_by_one():
    """A dropped row keeps the text it had when dropped; later steps only see rows still alive."""
    steps = build_steps([{"name": "strip_html"}, {"name": "length_filter", "params": {"min_chars": 5}},
                         {"name": "lowercase"}])
    import pyarrow as pa

    from lakeforge.curate.text import TextBatch

    batch = TextBatch(pa.RecordBatch.from_pydict({"text": ["<b>HI</b>", "<p>Long Enough</p>", None]}))
    for step in steps:
        step.process(batch)
    assert batch.final_text().to_pylist() == ["HI", "long enough\n", None]
    assert list(batch.reasons) == ["too_short", None, "too_short"]


def test_unknown_step_lists_known_names():
    with pytest.raises(ConfigError) as err:
        build_steps([{"name": "strip_htm"}])
    assert "strip_htm" in str(err.value)
    for known in STEP_REGISTRY:
        assert known in str(err.value)


@pytest.mark.parametrize("spec", [
    {"name": "length_filter", "params": {"min_char": 3}},
    {"name": "length_filter", "params": {"min_chars": 10, "max_chars": 5}},
    {"name": "strip_html", "params": {"parser": "lxml"}},
])
def test_bad_step_params(spec):
    with pytest.raises(ConfigError, match=spec["name"]):
        build_steps([spec])


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
        write_sorted_parquet(select_curated(result.kept), f"file://{out}", result.rows_out, rows_per_file=1000)
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


def test_several_files_when_large(spark, arrow_frame, tmp_path):
    df = frame(arrow_frame, [(f"id{i:03d}", f"text {i}") for i in range(50)])
    write_sorted_parquet(df, f"file://{tmp_path / 'out'}", 50, rows_per_file=20)
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert len(files) == 3
    for f in files:
        ids = [r["id"] for r in spark.read.parquet(str(f)).collect()]
        assert ids == sorted(ids)


def test_run_id_made_path_safe():
    assert safe_run_id("manual__2026-11-23T00:00:00+00:00") == "manual__2026-11-23T00_00_00_00_00"
    assert CurateConfig(pipeline="movie_reviews", partition="2026-11-23", run_id=None).run_id.startswith("manual-")


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
    manifest = run(CurateConfig(pipeline=pipeline, partition="2026-11-23", run_id="c1"),
                   lake=local_lake, spark=spark)
    assert (manifest.layer, manifest.partition, manifest.run_id) == ("curated", "dt=2026-11-23", "c1")
    assert manifest.rows == 2 and len(manifest.files) == 1 and manifest.files[0].rows == 2
    assert nonzero(manifest.dropped) == {"empty_text": 1, "too_short": 1, "exact_duplicate": 1}
    assert manifest.stats["rows_in"] == 5 and manifest.stats["rows_out"] == 2
    assert manifest.inputs[0]["path"].endswith("raw/movie_reviews/dt=2026-11-23/_MANIFEST.json")
    assert local_lake.read_manifest("curated", "movie_reviews", part) == manifest

    curated = spark.read.parquet(manifest.files[0].path)
    assert tuple(curated.columns) == CURATED_COLUMNS
    assert [(r["id"], r["text"]) for r in curated.collect()] == [
        ("e0", "an excellent movie, truly moving and sad."), ("e3", "Dull, slow and far too long for what it is.")]
    assert dict(curated.dtypes) == {"id": "string", "text": "string", "label": "bigint", "source": "string",
                                    "event_time": "timestamp", "text_hash": "string", "cluster_id": "string"}

    # the dropped rows are kept with their reason, the index segment lists the kept rows
    import pyarrow.parquet as pq

    excluded = pq.read_table(local_lake.arrow_path(manifest.stats["excluded"]["files"][0]["path"])).to_pylist()
    assert sorted((r["id"], r["reason"], r["duplicate_of"]) for r in excluded) == [
        ("e1", "exact_duplicate", "e0"), ("e2", "too_short", None), ("e4", "empty_text", None)]
    segment = pq.read_table(local_lake.arrow_path(manifest.stats["index"]["files"][0]["path"])).to_pylist()
    assert sorted(r["id"] for r in segment) == ["e0", "e3"]
    assert all(len(r["bands"]) == manifest.stats["index"]["minhash"]["bands"] for r in segment)
    # the report is in the lake, linked from the manifest
    report = json.loads(local_lake.get_bytes(manifest.stats["report"]["json"]))
    assert report["rows_in"] == 5 and report["gate"]["passed"]
    assert b"<svg" in local_lake.get_bytes(manifest.stats["report"]["html"])

    # a rerun replaces the partition whole, with the same rows in the same order
    before = [tuple(r) for r in curated.collect()]
    again = run(CurateConfig(pipeline=pipeline, partition="2026-11-23", run_id="c2"),
                lake=local_lake, spark=spark)
    assert [tuple(r) for r in spark.read.parquet(again.files[0].path).collect()] == before
    run_dirs = sorted(p.name for p in (local_lake.root / "curated/movie_reviews/dt=2026-11-23").glob("run=*"))
    assert run_dirs == ["run=c2"]


def test_run_without_raw_partition_fails_loudly(spark, local_lake):
    with pytest.raises(ManifestError, match="raw"):
        run(CurateConfig(pipeline="movie_reviews", partition="2026-11-25"), lake=local_lake, spark=spark)


def test_run_refuses_a_manifest_that_miscounts_its_rows(spark, local_lake, publish_raw, tiny_pipeline):
    part = publish_raw(REVIEWS)
    manifest = local_lake.read_manifest("raw", "movie_reviews", part)
    local_lake.publish(manifest.model_copy(update={"rows": 99}))
    with pytest.raises(ManifestError, match="lists 99 rows but its files hold 5"):
        run(CurateConfig(pipeline=tiny_pipeline(), partition="2026-11-23"), lake=local_lake, spark=spark)


@pytest.mark.parametrize("job", ["curate", "features"])
def test_job_cli_prints_json_summary_last(monkeypatch, tmp_path, job):
    """The spark-submit entry points: flags -> config -> run(); the last stdout line is JSON."""
    import importlib
    from datetime import datetime, timezone

    from typer.testing import CliRunner

    from lakeforge.config import REPO_ROOT
    from lakeforge.lake import Manifest

    seen = {}

    def fake_run(config):
        seen["config"] = config
        return Manifest(layer="curated" if job == "curate" else "features", pipeline=config.pipeline,
                        partition="dt=2026-11-23", run_id=config.run_id, files=[], rows=0, schema_version=1,
                        interval=(datetime(2026, 11, 23, tzinfo=timezone.utc), datetime(2026, 11, 24, tzinfo=timezone.utc)))

    monkeypatch.setenv("LAKEFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("LAKEFORGE_S3_BUCKET", raising=False)
    monkeypatch.setattr(importlib.import_module(f"lakeforge.{job}"), "run", fake_run)
    from lakeforge.jobcli import spark_stage_app

    # the entry point file is only the call of the shared CLI for its stage
    assert f'main("{job}")' in (REPO_ROOT / "jobs" / f"{job}.py").read_text()
    result = CliRunner().invoke(spark_stage_app(job), ["--pipeline", "movie_reviews", "--partition", "2026-11-23",
                                             "--run-id", "scheduled__2026-11-23T00:00:00+00:00"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    layer = "curated" if job == "curate" else "features"
    assert summary["manifest"] == f"s3://lakeforge/{layer}/movie_reviews/dt=2026-11-23/_MANIFEST.json"
    assert summary["rows"] == 0
    # each attempt writes under its own prefix: the Airflow run id made path-safe, plus a suffix
    assert seen["config"].run_id.startswith("scheduled__2026-11-23T00_00_00_00_00-")


def test_job_cli_exits_3_on_a_failed_gate(monkeypatch, tmp_path):
    """Status 3 tells the Airflow task not to retry (rerunning the same data cannot pass the gate)."""
    import importlib

    from typer.testing import CliRunner

    from lakeforge.errors import DataQualityError
    from lakeforge.jobcli import GATE_FAILED_EXIT, spark_stage_app
    from lakeforge.operators import GATE_FAILED_EXIT as OPERATOR_EXIT

    def failing_run(config):
        raise DataQualityError("quality gate failed for movie_reviews dt=2026-11-23: min_rows: 1 curated rows")

    monkeypatch.setenv("LAKEFORGE_HOME", str(tmp_path))
    monkeypatch.setattr(importlib.import_module("lakeforge.curate"), "run", failing_run)
    result = CliRunner().invoke(spark_stage_app("curate"), ["--pipeline", "movie_reviews", "--partition", "2026-11-23"])
    assert result.exit_code == GATE_FAILED_EXIT == OPERATOR_EXIT == 3
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last == {"error": "quality_gate", "message": "quality gate failed for movie_reviews dt=2026-11-23: "
                                                         "min_rows: 1 curated rows"}
