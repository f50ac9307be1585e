"""Retrieval quality on the labelled sample-store questions, with a threshold sweep (see the README).

Run: `.venv/bin/python -m bench.retrieval_quality`.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench.common import ROOT
from helpline.config import Settings
from helpline.knowledge.base import KnowledgeBase
from helpline.knowledge.documents import parse_files
from helpline.knowledge.embeddings import Embedder
from helpline.knowledge.quality import evaluate, load_cases
from helpline.store import db
from helpline.store.repositories import KnowledgeRepository


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.create_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'kb.db'}")
        await db.upgrade(engine)
        knowledge = KnowledgeBase(KnowledgeRepository(db.session_factory(engine)), Embedder())
        await knowledge.ingest(parse_files([ROOT / "data" / "sample-store"]))
        threshold = Settings().answer_min_score
        cases = load_cases(ROOT / "tests" / "knowledge" / "retrieval_cases.jsonl")
        scores = await evaluate(knowledge, cases, threshold)
        await engine.dispose()
    print(f"{scores.in_store} in-store questions, {scores.off_topic} off-topic questions")
    print(f"top-1 {scores.top1:.3f}  top-3 {scores.top3:.3f}")
    print("| threshold | in-store answered | off-topic handed off |")
    print("|---|---|---|")
    for step in range(40, 66, 5):
        value = step / 100
        answered, handed_off = scores.at(value)
        marker = " (default)" if abs(value - threshold) < 1e-9 else ""
        print(f"| {value:.2f}{marker} | {answered:.3f} | {handed_off:.3f} |")


if __name__ == "__main__":
    asyncio.run(main())
