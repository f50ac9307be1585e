"""`helpline eval cache`: hit rate and precision of the cache tiers on a labelled question set (e.g. BANKING77).

Protocol (the issue's): per label, the first ``per_label`` questions in file order fill the cache with their label
as the answer; every other question is replayed; a hit is correct when the cached label equals the question's.

The semantic tier is evaluated exactly as AnswerCache serves it: the ``CANDIDATES`` nearest cached questions, in
order of similarity, the first one the guards accept wins if it is at or above the threshold. The threshold is
calibrated on half of the replayed questions (even positions) as the lowest one with precision >= the target, and
reported on the other half (odd positions) as well as on all of them. GPTCache runs the same protocol with the same
embedder in the same run, over a sweep of its own threshold.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from helpline.cache.guards import SemanticGuard
from helpline.cache.keys import normalize
from helpline.cache.service import CacheSettings, Candidates, choose

EmbedFn = Callable[[list[str]], npt.NDArray[np.float32]]
CANDIDATES = CacheSettings().candidates
SWEEP = [round(0.70 + 0.02 * i, 2) for i in range(15)]
THRESHOLD_FLOOR = 0.80


@dataclass(frozen=True, slots=True)
class Query:
    text: str
    label: str
    exact: str | None  # label of an identical (normalised) cached question
    candidates: Candidates  # the nearest cached questions; their "answers" are their labels


@dataclass(slots=True)
class TierScore:
    hits: int = 0
    correct: int = 0
    total: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.total if self.total else 0.0

    @property
    def precision(self) -> float:
        return self.correct / self.hits if self.hits else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return {"hit_rate": round(self.hit_rate, 4), "precision": _round(self.precision), "hits": self.hits}


@dataclass(slots=True)
class Report:
    fill: int
    replay: int
    threshold: float
    margin: float
    target_precision: float
    at_threshold: dict[str, dict[str, float | int]] = field(default_factory=dict)
    held_out: dict[str, float | int] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    gptcache: dict[str, Any] = field(default_factory=dict)


def load_labelled(path: Path, text_col: str, label_col: str) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {text_col, label_col} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: no column(s) {sorted(missing)}; columns are {reader.fieldnames}")
        return [(row[text_col].strip(), row[label_col].strip()) for row in reader if row[text_col].strip()]


def split_fill_replay(
    rows: Sequence[tuple[str, str]], per_label: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    seen: dict[str, int] = {}
    fill: list[tuple[str, str]] = []
    replay: list[tuple[str, str]] = []
    for text, label in rows:
        seen[label] = seen.get(label, 0) + 1
        (fill if seen[label] <= per_label else replay).append((text, label))
    return fill, replay


def prepare_queries(fill: Sequence[tuple[str, str]], replay: Sequence[tuple[str, str]], embed: EmbedFn) -> list[Query]:
    fill_vectors = embed([text for text, _ in fill])
    replay_vectors = embed([text for text, _ in replay])
    exact = {normalize(text): label for text, label in fill}
    scores = replay_vectors @ fill_vectors.T
    questions = [text for text, _ in fill]
    labels = [label for _, label in fill]
    queries = []
    for row, (text, label) in enumerate(replay):
        ranked = [int(i) for i in np.argsort(-scores[row])[:CANDIDATES]]
        candidates = Candidates(ranked, scores[row], questions, labels)
        queries.append(Query(text, label, exact.get(normalize(text)), candidates))
    return queries


@dataclass(frozen=True, slots=True)
class Operating:
    threshold: float
    margin: float


def semantic_label(query: Query, point: Operating, guard: SemanticGuard) -> str | None:
    """What AnswerCache would serve from the semantic tier: the same ``choose`` it runs."""
    chosen = choose(query.candidates, query.text, threshold=point.threshold, margin=point.margin, guard=guard)
    return query.candidates.answers[chosen] if isinstance(chosen, int) else None


def score(queries: Sequence[Query], point: Operating, guard: SemanticGuard) -> dict[str, TierScore]:
    tiers = {"exact": TierScore(), "semantic": TierScore(), "combined": TierScore()}
    for query in queries:
        for tier in tiers.values():
            tier.total += 1
        served = {"exact": query.exact, "semantic": semantic_label(query, point, guard)}
        served["combined"] = served["exact"] or served["semantic"]
        for name, label in served.items():
            if label is not None:
                tiers[name].hits += 1
                tiers[name].correct += label == query.label
    return tiers


def wilson_lower(correct: int, hits: int, z: float = 1.645) -> float:
    """95% one-sided lower confidence bound of a precision measured as ``correct`` of ``hits``."""
    if hits == 0:
        return 0.0
    p = correct / hits
    centre = p + z * z / (2 * hits)
    spread = z * math.sqrt(p * (1 - p) / hits + z * z / (4 * hits * hits))
    return (centre - spread) / (1 + z * z / hits)


def calibrate(queries: Sequence[Query], target: float, guard: SemanticGuard) -> Operating:
    """The (threshold, margin) with the most combined hits whose precision is at least ``target`` with 95%
    confidence (Wilson lower bound), so the held-out precision does not fall below the target by chance.

    The threshold never goes below ``THRESHOLD_FLOOR``: in a young, sparse cache there is no rival to beat, and
    the threshold (with the guards) is then all that keeps near misses out."""
    best: tuple[int, Operating] | None = None
    for margin_step in range(0, 26, 2):
        for threshold_step in range(int(THRESHOLD_FLOOR * 100), 100):
            point = Operating(threshold_step / 100, margin_step / 100)
            combined = score(queries, point, guard)["combined"]
            if wilson_lower(combined.correct, combined.hits) >= target:
                if best is None or combined.hits > best[0]:
                    best = (combined.hits, point)
                break  # higher thresholds at this margin only lose hits
    return best[1] if best else Operating(1.0, 0.0)


def evaluate(
    rows: Sequence[tuple[str, str]],
    embed: EmbedFn,
    guard: SemanticGuard,
    *,
    per_label: int = 10,
    target: float = 0.99,
    gptcache: GptcacheRun | None = None,
    progress: Callable[[str], None] = lambda _step: None,
) -> Report:
    fill, replay = split_fill_replay(rows, per_label)
    progress("embedding")
    queries = prepare_queries(fill, replay, embed)
    progress("calibrating")
    point = calibrate(queries[0::2], target, guard)
    report = Report(len(fill), len(replay), point.threshold, point.margin, target)
    report.at_threshold = {name: tier.as_dict() for name, tier in score(queries, point, guard).items()}
    report.held_out = score(queries[1::2], point, guard)["combined"].as_dict()
    report.sweep = [
        {
            "threshold": t,
            "margin": m,
            **{n: tier.as_dict() for n, tier in score(queries, Operating(t, m), guard).items()},
        }
        for m in (0.0, point.margin)
        for t in SWEEP
    ]
    if gptcache is not None:
        progress("gptcache")
        report.gptcache = compare_gptcache(fill, replay, gptcache, report.at_threshold["combined"])
    return report


GptcacheRun = Callable[[list[tuple[str, str]], list[str], float], list[tuple[str | None, float]]]
# GPTCache's threshold t serves a neighbour when (1 + cos) / 2 >= t (see gptcache_baseline): these are cos 0.6..0.98.
GPTCACHE_SWEEP = [0.8, 0.85, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]


def compare_gptcache(
    fill: list[tuple[str, str]], replay: list[tuple[str, str]], run: GptcacheRun, ours: dict[str, float | int]
) -> dict[str, Any]:
    """GPTCache on the same protocol: one real run at threshold 0 records every query's nearest neighbour and
    score (GPTCache serves top-1 when score >= threshold), from which the sweep follows; a second real run at its
    default threshold checks that derivation. Also its best hit rate at a precision at least ours."""
    from helpline.cache.gptcache_baseline import DEFAULT_THRESHOLD  # noqa: PLC0415 - optional dependency

    questions = [text for text, _ in replay]
    nearest = run(fill, questions, 0.0)
    at_default = run(fill, questions, DEFAULT_THRESHOLD)
    sweep = []
    for threshold in sorted({DEFAULT_THRESHOLD, *GPTCACHE_SWEEP}):
        tier = TierScore(total=len(replay))
        for (label, similarity), (_, truth) in zip(nearest, replay, strict=True):
            if label is not None and similarity >= threshold:
                tier.hits += 1
                tier.correct += label == truth
        sweep.append({"threshold": threshold, "cosine": round(2 * threshold - 1, 3),
                      "default": threshold == DEFAULT_THRESHOLD, **tier.as_dict()})  # fmt: skip
    derived_default = next(row for row in sweep if row["default"])
    real_hits = sum(label is not None for label, _ in at_default)
    ours_precision = float(ours["precision"])
    matching = [row for row in sweep if not math.isnan(row["precision"]) and row["precision"] >= ours_precision]
    best = max(matching, key=lambda row: row["hit_rate"]) if matching else None
    return {
        "sweep": sweep,
        "best_at_our_precision": best,
        "default_threshold_real_run_hits": real_hits,
        "default_threshold_derived_hits": derived_default["hits"],
    }


def _round(value: float) -> float:
    return value if math.isnan(value) else round(value, 4)
