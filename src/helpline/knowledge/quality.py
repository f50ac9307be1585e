"""Measure retrieval on labelled questions: ranking (top-1/top-3) and the answer-or-hand-off threshold."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson

from helpline.knowledge.base import KnowledgeBase


@dataclass(frozen=True, slots=True)
class Case:
    question: str
    expect: tuple[str, ...]  # empty: the store cannot answer it, a person should follow up


@dataclass(slots=True)
class RetrievalScores:
    in_store: int = 0
    off_topic: int = 0
    top1: float = 0.0
    top3: float = 0.0
    answered: float = 0.0  # in-store questions scoring at or above the threshold
    handed_off: float = 0.0  # off-topic questions scoring below it
    in_store_scores: list[float] = field(default_factory=list)
    off_topic_scores: list[float] = field(default_factory=list)

    def at(self, threshold: float) -> tuple[float, float]:
        """(answered, handed off) shares at another threshold."""
        answered = sum(s >= threshold for s in self.in_store_scores) / max(len(self.in_store_scores), 1)
        handed_off = sum(s < threshold for s in self.off_topic_scores) / max(len(self.off_topic_scores), 1)
        return answered, handed_off


def load_cases(path: Path) -> list[Case]:
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = orjson.loads(line)
            expect = () if entry["expect"] == "handoff" else tuple(entry["expect"])
            cases.append(Case(entry["question"], expect))
    return cases


async def evaluate(knowledge: KnowledgeBase, cases: list[Case], threshold: float) -> RetrievalScores:
    scores = RetrievalScores()
    top1 = top3 = 0
    for case in cases:
        hits = await knowledge.search(case.question, 3)
        best = hits[0].score if hits else 0.0
        if not case.expect:
            scores.off_topic_scores.append(best)
            continue
        scores.in_store_scores.append(best)
        top1 += bool(hits) and hits[0].id in case.expect
        top3 += any(hit.id in case.expect for hit in hits)
    scores.in_store, scores.off_topic = len(scores.in_store_scores), len(scores.off_topic_scores)
    scores.top1, scores.top3 = top1 / max(scores.in_store, 1), top3 / max(scores.in_store, 1)
    scores.answered, scores.handed_off = scores.at(threshold)
    return scores
