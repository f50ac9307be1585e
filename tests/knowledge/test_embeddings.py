"""The ONNX MiniLM embedder: unit vectors, batch-independent results, meaning-aware similarity."""

from __future__ import annotations

import numpy as np

from helpline.knowledge.embeddings import DIMENSIONS, MAX_TOKENS, Embedder, from_bytes, to_bytes
from helpline.knowledge.index import MemoryVectorIndex


def test_vectors_are_unit_length_and_batching_does_not_change_them(embedder: Embedder) -> None:
    texts = [f"question number {i} about {'delivery ' * (i % 7)}" for i in range(70)]
    together = embedder.embed(texts)
    assert together.shape == (70, DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([embedder.embed([text]) for text in texts[:5]])
    np.testing.assert_allclose(together[:5], one_by_one, atol=1e-4)
    assert embedder.embed([]).shape == (0, DIMENSIONS)


def test_similar_questions_are_closer_than_unrelated_ones(embedder: Embedder) -> None:
    a, b, c = embedder.embed(["When will my groceries arrive?", "How long does delivery take?", "Tell me a joke"])
    assert float(a @ b) > float(a @ c) + 0.2


def test_long_text_is_truncated_not_rejected(embedder: Embedder) -> None:
    long_text = "bananas " * 2000
    assert embedder.count_tokens(long_text) == MAX_TOKENS
    assert embedder.embed([long_text]).shape == (1, DIMENSIONS)


def test_bytes_round_trip(embedder: Embedder) -> None:
    (vector,) = embedder.embed(["round trip"])
    np.testing.assert_array_equal(from_bytes(to_bytes(vector)), vector)


def test_memory_index_replaces_and_removes_documents(embedder: Embedder) -> None:
    index = MemoryVectorIndex(DIMENSIONS)
    index.replace_document("fruit", embedder.embed(["bananas and apples", "fresh fruit"]))
    index.replace_document("tyres", embedder.embed(["car tyres"]))
    (query,) = embedder.embed(["do you sell bananas"])
    hits = index.search(query, 5)
    assert [hit.document_id for hit in hits] == ["fruit", "tyres"]
    assert hits[0].ordinal == 0
    index.replace_document("fruit", embedder.embed(["motor oil"]))
    assert len(index) == 2
    index.remove_document("tyres")
    assert [hit.document_id for hit in index.search(query, 5)] == ["fruit"]
