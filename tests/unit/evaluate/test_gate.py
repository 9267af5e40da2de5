"""The promotion gate (lakeforge.registry) with tiny rule-based pyfunc models in a SQLite MLflow."""

from __future__ import annotations

import mlflow
import pandas as pd
import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient

from lakeforge.evaluate.gate import ModelPromoter
from lakeforge.registry import champion_version

EVAL = pa.table({
    "text": ["a good film", "great acting", "good fun", "a great story",
             "a dull film", "awful acting", "boring", "a weak story"],
    "label": [1, 1, 1, 1, 0, 0, 0, 0],
})


class KeywordModel(mlflow.pyfunc.PythonModel):
    """positive iff a keyword occurs; ``constant`` answers one label for everything."""

    def __init__(self, constant: str | None = None):
        self.constant = constant

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = model_input.iloc[:, 0].astype(str)
        labels = [self.constant or ("positive" if ("good" in t or "great" in t) else "negative") for t in texts]
        return pd.DataFrame({"label": labels, "score": [0.9] * len(labels)})


PERFECT = KeywordModel()  # accuracy 1.0 on EVAL
HALF = KeywordModel(constant="positive")  # accuracy 0.5 on EVAL


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A SQLite MLflow in the session's base temp dir (shared with the other test modules: its
    schema migrations take seconds)."""
    base = tmp_path_factory.getbasetemp()
    uri = f"sqlite:///{base}/mlflow.db"
    exp = MlflowClient(uri).create_experiment("gate-tests", artifact_location=(base / "gate-artifacts").as_uri())

    def register(name: str, model: KeywordModel) -> str:
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=[])
        return str(mlflow.register_model(info.model_uri, name).version)

    return uri, register


def test_first_candidate_becomes_champion_and_worse_one_does_not(registry):
    uri, register = registry
    client = MlflowClient(uri)
    promoter = ModelPromoter(uri, "gate_a", min_accuracy=0.0)
    v1 = register("gate_a", HALF)
    first = promoter.promote(v1, EVAL)
    assert (first.promoted, first.reason, first.champion_version_before) == (True, "first_champion", None)
    assert first.candidate_accuracy == 0.5 and first.champion_accuracy is None
    assert champion_version(client, "gate_a") == v1

    v2 = register("gate_a", PERFECT)
    better = promoter.promote(v2, EVAL)
    assert (better.promoted, better.reason, better.champion_version_before) == (True, "beats_champion", v1)
    assert (better.candidate_accuracy, better.champion_accuracy) == (1.0, 0.5)
    assert champion_version(client, "gate_a") == v2

    v3 = register("gate_a", HALF)
    worse = promoter.promote(v3, EVAL.to_pandas())  # a DataFrame works as well
    assert (worse.promoted, worse.reason) == (False, "below_champion")
    assert (worse.candidate_accuracy, worse.champion_accuracy) == (0.5, 1.0)
    assert champion_version(client, "gate_a") == v2

    tags = client.get_model_version("gate_a", v3).tags
    assert tags["lakeforge.promotion.decision"] == "rejected"
    assert tags["lakeforge.promotion.reason"] == "below_champion"
    assert float(tags["lakeforge.promotion.candidate_accuracy"]) == 0.5
    assert float(tags["lakeforge.promotion.champion_accuracy"]) == 1.0
    assert tags["lakeforge.promotion.champion_version_before"] == v2
    assert client.get_model_version("gate_a", v2).tags["lakeforge.promotion.decision"] == "promoted"

    again = promoter.promote(v2, EVAL)
    assert (again.promoted, again.reason) == (False, "already_champion")


def test_tie_promotes_the_newer_model(registry):
    uri, register = registry
    promoter = ModelPromoter(uri, "gate_tie", min_accuracy=0.0)
    promoter.promote(register("gate_tie", PERFECT), EVAL)
    v2 = register("gate_tie", PERFECT)
    decision = promoter.promote(v2, EVAL)
    assert decision.promoted and decision.reason == "beats_champion"
    assert champion_version(MlflowClient(uri), "gate_tie") == v2


def test_min_accuracy_blocks_even_the_first_champion(registry):
    uri, register = registry
    v1 = register("gate_min", HALF)
    decision = ModelPromoter(uri, "gate_min", min_accuracy=0.9).promote(v1, EVAL)
    assert (decision.promoted, decision.reason) == (False, "below_min_accuracy")
    assert champion_version(MlflowClient(uri), "gate_min") is None


def test_champion_version_of_unknown_model_is_none(registry):
    uri, _ = registry
    assert champion_version(MlflowClient(uri), "no_such_model") is None


@pytest.mark.parametrize("min_accuracy", [-0.1, 1.5])
def test_min_accuracy_out_of_range_is_rejected(min_accuracy):
    from lakeforge.errors import ConfigError

    with pytest.raises(ConfigError, match=str(min_accuracy)):
        ModelPromoter("sqlite:///unused.db", "m", min_accuracy=min_accuracy)
