"""Spark <-> lake writes of the Spark stages: the same rows in the same files and order on reruns."""

from __future__ import annotations

from lakeforge.stage.spark_io import write_sorted_parquet


def frame(arrow_frame, rows):
    """``rows``: list of (id, text)."""
    return arrow_frame("id string, text string", rows)


def test_several_files_when_large(spark, arrow_frame, tmp_path):
    df = frame(arrow_frame, [(f"id{i:03d}", f"text {i}") for i in range(50)])
    write_sorted_parquet(df, f"file://{tmp_path / 'out'}", 50, rows_per_file=20)
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert len(files) == 3
    for f in files:
        ids = [r["id"] for r in spark.read.parquet(str(f)).collect()]
        assert ids == sorted(ids)
