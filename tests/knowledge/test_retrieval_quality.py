"""Retrieval quality on the sample store, with floors just under what we measured, so regressions fail.

tests/knowledge/retrieval_cases.jsonl: 182 shopper questions labelled with the documents that answer them, and
53 questions the store cannot answer (off-topic, or sharing words with the store but not answerable). The same
numbers, with the threshold sweep, are printed by `python -m bench.retrieval_quality` and stand in the README.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpline.config import Settings
from helpline.knowledge.base import KnowledgeBase
from helpline.knowledge.documents import parse_files
from helpline.knowledge.embeddings import Embedder
from helpline.knowledge.quality import RetrievalScores, evaluate, load_cases
from helpline.store import db
from helpline.store.repositories import KnowledgeRepository
from tests.conftest import SAMPLE_KB

CASES = Path(__file__).parent / "retrieval_cases.jsonl"


@pytest.fixture(scope="module")
async def scores(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> RetrievalScores:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('quality') / 'kb.db'}")
    await db.upgrade(engine)
    knowledge = KnowledgeBase(KnowledgeRepository(db.session_factory(engine)), embedder)
    await knowledge.ingest(parse_files([SAMPLE_KB]))
    result = await evaluate(knowledge, load_cases(CASES), Settings().answer_min_score)
    await engine.dispose()
    return result


def test_the_case_set_is_big_enough(scores: RetrievalScores) -> None:
    assert scores.in_store >= 150
    assert scores.off_topic >= 40


def test_the_right_document_ranks_first_or_near(scores: RetrievalScores) -> None:
    assert scores.top1 >= 0.77
    assert scores.top3 >= 0.90


def test_the_default_threshold_answers_shoppers_and_hands_off_off_topic(scores: RetrievalScores) -> None:
    assert scores.answered >= 0.95
    assert scores.handed_off >= 0.65
