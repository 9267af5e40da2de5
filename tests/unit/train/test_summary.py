"""The recorded result of a training run and the summary the evaluate stage reads (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lakeforge.errors import LakeforgeError
from lakeforge.stage.run import StageRun
from lakeforge.train import checkpoint as ckpt
from lakeforge.train.summary import DONE, recorded_result, run_key, summary_of

RESULT = {"run_id": "abc", "model_uri": "models:/m/3", "version": "3", "metrics": {"test_accuracy": 0.8},
          "candidates": [{"kind": "finetuned", "version": "3"}], "resumed_from_step": 0}


@pytest.fixture
def stage(local_lake):
    return StageRun.create("movie_reviews", "2026-11-23", "manual__1", lake=local_lake)


def record(stage, dag_id: str, run_id: str, result: dict) -> None:
    """What the training run writes when it finishes (its checkpoint store's DONE.json)."""
    ckpt.store_for(stage.lake, stage.pipeline.name, stage.partition, run_key(dag_id, run_id)).write_json(DONE, result)


def test_run_keys_are_path_safe_and_absent_outside_airflow():
    assert run_key("movie_reviews", "scheduled__2026-11-24T00:00:00+00:00") == \
        "movie_reviews/scheduled__2026-11-24T00_00_00_00_00"
    assert run_key(None, "x") is None and run_key("d", "") is None
    assert ckpt.run_key is run_key  # the checkpoint store keys runs the same way


def test_an_xcom_dict_is_the_summary(stage):
    assert summary_of(stage, {"version": "7", "partition": "dt=2026-11-23"}, "dag", "manual__1") == \
        {"version": "7", "partition": "dt=2026-11-23"}


def test_the_json_line_with_a_version_is_the_summary(stage):
    line = json.dumps({**RESULT, "partition": "dt=2026-11-23"})
    assert summary_of(stage, line, "dag", "manual__1") == {**RESULT, "partition": "dt=2026-11-23"}


@pytest.mark.parametrize("xcom", [None, "", "torchrun: some trailing log line", json.dumps({"version": ""}),
                                  json.dumps(["not", "a", "dict"])])
def test_an_unusable_xcom_falls_back_to_the_recorded_result(stage, xcom):
    record(stage, "dag", "scheduled__2026-11-24T00:00:00+00:00", RESULT)
    summary = summary_of(stage, xcom, "dag", "scheduled__2026-11-24T00:00:00+00:00")
    assert summary == {**RESULT, "partition": "dt=2026-11-23"}


def test_no_summary_and_no_recorded_result_is_an_error(stage):
    record(stage, "dag", "other_run", RESULT)  # another Airflow run's result is not this one's
    with pytest.raises(LakeforgeError, match="train_model left no summary .* no DONE.json for manual__2: rerun"):
        summary_of(stage, "torchrun: some trailing log line", "dag", "manual__2")
    assert recorded_result(stage, "dag", "manual__2") is None
    assert recorded_result(stage, None, None) is None  # outside Airflow: no key, nothing recorded


def test_the_summary_and_the_launch_command_load_no_torch():
    code = ("import sys, lakeforge.train as t; t.summary_of, t.recorded_result, t.run_key, t.torchrun_command;"
            "import lakeforge.train.checkpoint;"
            "heavy = [m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
