"""Retrieval + extractive answer latency per question over the sample FAQ, against embedding alone (baseline).

Run: `make bench` or `.venv/bin/python -m bench.retrieval`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import ROOT, percentile
from helpline.knowledge.base import KnowledgeBase
from helpline.knowledge.documents import parse_files
from helpline.knowledge.embeddings import Embedder
from helpline.providers.base import CompletionRequest
from helpline.providers.extractive import ExtractiveProvider
from helpline.store import db
from helpline.store.repositories import KnowledgeRepository

SAMPLE = ROOT / "data" / "sample-store"
ROUNDS = 3


async def main() -> None:
    questions = [orjson.loads(line)["question"] for line in (SAMPLE / "faq.jsonl").read_text().splitlines() if line]
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.create_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}")
        await db.upgrade(engine)
        embedder = Embedder()
        knowledge = KnowledgeBase(KnowledgeRepository(db.session_factory(engine)), embedder)
        started = time.perf_counter()
        await knowledge.ingest(parse_files([SAMPLE]))
        ingest_s = time.perf_counter() - started
        provider = ExtractiveProvider(0.5)
        embed_ms: list[float] = []
        answer_ms: list[float] = []
        for _ in range(ROUNDS):
            for question in questions:
                t0 = time.perf_counter()
                await embedder.aembed([question])
                t1 = time.perf_counter()
                passages = await knowledge.search(question, 4)
                await provider.complete(CompletionRequest(question, tuple(passages)))
                t2 = time.perf_counter()
                embed_ms.append((t1 - t0) * 1000)
                answer_ms.append((t2 - t1) * 1000)
        await engine.dispose()
    print(f"sample store: {len(knowledge)} documents ingested in {ingest_s:.1f} s")
    print(f"{len(questions)} FAQ questions x {ROUNDS} rounds")
    print("| step | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| embed the question alone (baseline) | {percentile(embed_ms, 50):.2f} | {percentile(embed_ms, 99):.2f} |")
    print(f"| retrieval + extractive answer | {percentile(answer_ms, 50):.2f} | {percentile(answer_ms, 99):.2f} |")
    print(f"ratio answer/baseline p50: {percentile(answer_ms, 50) / percentile(embed_ms, 50):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
