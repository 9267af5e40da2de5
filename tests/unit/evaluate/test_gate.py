"""The promotion gate (lakeforge.registry) with tiny rule-based pyfunc models in a SQLite MLflow."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient

from lakeforge.evaluate.gate import ModelPromoter
from lakeforge.registry import LABELS_METADATA_KEY, champion_version

BINARY = ["negative", "positive"]

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

    def register(name: str, model: mlflow.pyfunc.PythonModel, labels: list[str] | None = BINARY) -> str:
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=[],
                                           metadata={LABELS_METADATA_KEY: labels} if labels else None)
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


def test_decision_records_macro_f1_and_per_class_figures(registry):
    uri, register = registry
    client = MlflowClient(uri)
    promoter = ModelPromoter(uri, "gate_f1", min_accuracy=0.0)
    first = promoter.promote(register("gate_f1", HALF), EVAL)
    # HALF says "positive" to all: positive P=0.5 R=1 F1=2/3, negative 0 -> macro-F1 1/3
    assert first.candidate_macro_f1 == pytest.approx(1 / 3) and first.champion_macro_f1 is None
    assert first.labels == BINARY
    assert first.candidate_per_class["positive"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3,
                                                                   "support": 4})
    assert first.candidate_per_class["negative"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4}
    v2 = register("gate_f1", PERFECT)
    second = promoter.promote(v2, EVAL)
    assert (second.candidate_macro_f1, second.champion_macro_f1) == (1.0, pytest.approx(1 / 3))
    assert second.as_dict()["champion_per_class"]["negative"]["recall"] == 0.0
    tags = client.get_model_version("gate_f1", v2).tags
    assert float(tags["lakeforge.promotion.candidate_macro_f1"]) == 1.0
    assert float(tags["lakeforge.promotion.champion_macro_f1"]) == pytest.approx(1 / 3, abs=1e-6)
    assert float(tags["lakeforge.promotion.candidate_precision_negative"]) == 1.0
    assert float(tags["lakeforge.promotion.candidate_recall_positive"]) == 1.0
    per_class = json.loads(tags["lakeforge.promotion.per_class"])
    assert per_class["positive"]["champion"]["precision"] == 0.5 and per_class["negative"]["candidate"]["f1"] == 1.0
    assert json.loads(tags["lakeforge.promotion.labels"]) == BINARY


class TopicModel(mlflow.pyfunc.PythonModel):
    """The topic named in the text (``wrong``: maps one topic to another)."""

    def __init__(self, wrong: dict[str, str] | None = None):
        self.wrong = wrong or {}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = model_input.iloc[:, 0].astype(str)
        labels = [self.wrong.get(t.split()[0], t.split()[0]) for t in texts]
        return pd.DataFrame({"label": labels, "score": [0.8] * len(labels)})


TOPICS = ["business", "entertainment", "politics", "sports", "tech"]
TOPIC_EVAL = pa.table({"text": [f"{t} story {i}" for t in TOPICS for i in range(2)],
                       "label": [i for i in range(5) for _ in range(2)]})


def test_five_classes_with_labels_from_the_metadata(registry):
    uri, register = registry
    promoter = ModelPromoter(uri, "gate_topics", min_accuracy=0.5)  # no labels: the candidate's metadata
    first = promoter.promote(register("gate_topics", TopicModel({"tech": "business"}), labels=TOPICS), TOPIC_EVAL)
    assert (first.promoted, first.reason, first.candidate_accuracy) == (True, "first_champion", 0.8)
    assert first.labels == TOPICS
    assert first.candidate_per_class["tech"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert first.candidate_per_class["business"]["precision"] == 0.5
    assert first.candidate_macro_f1 == pytest.approx((2 / 3 + 1 + 1 + 1 + 0) / 5)
    by_name = pa.table({"text": TOPIC_EVAL["text"], "label": [TOPICS[i] for i in TOPIC_EVAL["label"].to_pylist()]})
    second = promoter.promote(register("gate_topics", TopicModel(), labels=TOPICS), by_name)  # names work too
    assert (second.promoted, second.candidate_accuracy, second.champion_accuracy) == (True, 1.0, 0.8)
    assert second.candidate_macro_f1 == 1.0 and second.champion_macro_f1 == pytest.approx(first.candidate_macro_f1)


def test_labels_given_by_the_caller_score_a_model_without_metadata(registry):
    uri, register = registry
    version = register("gate_given", TopicModel(), labels=None)
    decision = ModelPromoter(uri, "gate_given", 0.0, labels=TOPICS).promote(version, TOPIC_EVAL)
    assert decision.promoted and decision.candidate_macro_f1 == 1.0 and decision.labels == TOPICS


def test_a_model_without_label_metadata_and_no_labels_is_an_error(registry):
    from lakeforge.errors import ConfigError

    uri, register = registry
    version = register("gate_nolabels", PERFECT, labels=None)
    with pytest.raises(ConfigError, match=rf"models:/gate_nolabels/{version} has no label metadata "
                                          r"\('lakeforge.labels'\).*pass labels="):
        ModelPromoter(uri, "gate_nolabels", 0.0).promote(version, EVAL)
    assert champion_version(MlflowClient(uri), "gate_nolabels") is None


def test_eval_labels_outside_the_label_space_are_a_data_error(registry):
    from lakeforge.errors import DataQualityError

    uri, register = registry
    version = register("gate_badlabels", PERFECT)
    bad = pa.table({"text": ["good", "dull"], "label": [1, 2]})
    with pytest.raises(DataQualityError, match=r"labels \['2'\] \(1 rows\) are not in the label space"):
        ModelPromoter(uri, "gate_badlabels", 0.0).promote(version, bad)
