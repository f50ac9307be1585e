"""GPTCache baseline: its own put/get pipeline over our embedder, isolated per call."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from gptcache import Config  # type: ignore[import-untyped]

from helpline.cache.gptcache_baseline import DEFAULT_THRESHOLD, run_gptcache
from helpline.knowledge.embeddings import Embedder

FILL = [
    ("How long does delivery take?", "Most orders arrive the next day."),
    ("Do you take Apple Pay?", "Yes, Apple Pay works at checkout."),
    ("Can I return a damaged item?", "Yes, report it within 48 hours for a refund."),
]


Embed = Callable[[list[str]], npt.NDArray[np.float32]]


@pytest.fixture
def embed(embedder: Embedder) -> Embed:
    """The embed function the eval hands over: the real all-MiniLM-L6-v2 embedder, unit rows of 384 floats."""

    def embed(texts: list[str]) -> npt.NDArray[np.float32]:
        return embedder.embed(texts)

    return embed


def test_default_threshold_is_gptcaches_own() -> None:
    assert Config().similarity_threshold == DEFAULT_THRESHOLD


def test_exact_duplicate_hits_and_unrelated_misses(embed: Embed, tmp_path: Path) -> None:
    queries = ["Do you take Apple Pay?", "What is the boiling point of mercury in kelvin?"]
    results = run_gptcache(FILL, queries, embed, 0.95, tmp_path)

    (dup_answer, dup_score), (other_answer, other_score) = results
    assert dup_answer == "Yes, Apple Pay works at checkout."
    assert dup_score == pytest.approx(1.0, abs=1e-4)
    assert other_answer is None
    assert 0.0 <= other_score < 0.95
    assert list(tmp_path.iterdir()) == []  # the per-call store folder is removed


def test_score_matches_gptcache_mapping_and_threshold(embed: Embed, tmp_path: Path) -> None:
    query = "How many days until my groceries arrive?"
    vectors = embed([FILL[0][0], FILL[1][0], FILL[2][0], query])
    cosine = float(np.max(vectors[:3] @ vectors[3]))
    expected = (1.0 + cosine) / 2.0  # (max_distance - squared L2) / max_distance for unit vectors

    ((_, score),) = run_gptcache(FILL, [query], embed, 0.0, tmp_path)
    assert score == pytest.approx(expected, abs=1e-4)

    ((below, _),) = run_gptcache(FILL, [query], embed, min(1.0, score + 0.01), tmp_path)
    ((at, _),) = run_gptcache(FILL, [query], embed, max(0.0, score - 0.01), tmp_path)
    assert below is None
    assert at == FILL[0][1]


def test_empty_cache_misses_with_nan_score(embed: Embed, tmp_path: Path) -> None:
    ((answer, score),) = run_gptcache([], ["Do you sell oat milk?"], embed, DEFAULT_THRESHOLD, tmp_path)
    assert answer is None
    assert math.isnan(score)
