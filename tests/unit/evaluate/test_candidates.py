"""The order candidates are gated in and the tie rule: the alias ends on the best, ties to the fine-tune."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest

from lakeforge.evaluate.candidates import candidates_of, gate_candidates, ordered


@dataclass
class Decision:
    promoted: bool
    candidate_version: str
    champion_version_before: str | None
    reason: str

    def as_dict(self):
        return asdict(self)


class FakePromoter:
    """Promotes a candidate whose accuracy is >= the champion's, like ModelPromoter, from a fixed table."""

    def __init__(self, accuracy: dict[str, float], champion: str | None = None):
        self.accuracy, self.champion, self.seen = accuracy, champion, []

    def promote(self, version: str, table) -> Decision:
        self.seen.append(version)
        before = self.champion
        win = before is None or self.accuracy[version] >= self.accuracy[before]
        if win:
            self.champion = version
        return Decision(win, version, before, "beats_champion" if win else "below_champion")


BASELINE = {"kind": "baseline", "version": "1"}
FINETUNED = {"kind": "finetuned", "version": "2"}


def test_baseline_is_gated_before_the_finetune_whatever_the_given_order():
    assert ordered([FINETUNED, BASELINE]) == [BASELINE, FINETUNED]
    assert ordered([{"kind": "other", "version": "9"}, FINETUNED]) == [FINETUNED, {"kind": "other", "version": "9"}]


@pytest.mark.parametrize("accuracy, champion", [
    ({"1": 0.8, "2": 0.9}, "2"),  # the fine-tune is better
    ({"1": 0.9, "2": 0.8}, "1"),  # the baseline is better: the fine-tune does not replace it
    ({"1": 0.85, "2": 0.85}, "2"),  # a tie goes to the later candidate, the fine-tune
])
def test_the_alias_ends_on_the_best_candidate(accuracy, champion):
    promoter = FakePromoter(accuracy)
    out = gate_candidates(promoter, [FINETUNED, BASELINE], table=None)
    assert promoter.seen == ["1", "2"] and [d["kind"] for d in out["decisions"]] == ["baseline", "finetuned"]
    assert out["champion"] == champion == promoter.champion


def test_no_promotion_keeps_the_champion_before():
    promoter = FakePromoter({"1": 0.5, "2": 0.6, "7": 0.99}, champion="7")
    out = gate_candidates(promoter, [BASELINE, FINETUNED], table=None)
    assert not any(d["promoted"] for d in out["decisions"]) and out["champion"] == "7"


def test_a_summary_without_candidates_names_its_finetune():
    assert candidates_of({"version": "5"}) == [{"kind": "finetuned", "version": "5"}]
    assert candidates_of({"version": "5", "candidates": [FINETUNED, BASELINE]}) == [BASELINE, FINETUNED]
