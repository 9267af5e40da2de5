"""Gating the candidates one training run registered, in order, against the champion.

Training registers up to two candidates: the TF-IDF + logistic-regression baseline, then the
fine-tuned transformer. Each is gated in that order against whatever is champion at that moment
(:meth:`~lakeforge.evaluate.gate.ModelPromoter.promote`), so the alias ends on the best of the
champion and the candidates, and a tie goes to the later candidate, the fine-tune.
"""

from __future__ import annotations

from typing import Any, Sequence

from lakeforge.evaluate.gate import ModelPromoter

#: Gating order of candidate kinds: on a tie the later one wins.
ORDER = ("baseline", "finetuned")


def ordered(candidates: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``candidates`` sorted by :data:`ORDER` (stable; unknown kinds last, in their given order)."""
    rank = {kind: i for i, kind in enumerate(ORDER)}
    return sorted(candidates, key=lambda c: rank.get(c.get("kind", "finetuned"), len(ORDER)))


def candidates_of(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates of a training summary; one that lists none names its fine-tune by ``version``."""
    return ordered(summary.get("candidates") or [{"kind": "finetuned", "version": summary["version"]}])


def gate_candidates(promoter: ModelPromoter, candidates: Sequence[dict[str, Any]], table) -> dict[str, Any]:
    """Gate each candidate in order on ``table``; ``{"decisions": [...], "champion": version}``."""
    decisions = [{"kind": cand.get("kind", "finetuned"), **promoter.promote(str(cand["version"]), table).as_dict()}
                 for cand in ordered(candidates)]
    promoted = [d["candidate_version"] for d in decisions if d["promoted"]]
    champion = promoted[-1] if promoted else (decisions[-1]["champion_version_before"] if decisions else None)
    return {"decisions": decisions, "champion": champion}
