"""GPTCache as a baseline for ``helpline eval cache``: same questions, same embedder, GPTCache's own matching.

The cache is built the way GPTCache's docs show: ``Cache.init`` with ``pre_embedding_func=get_prompt``, our embedder
as ``embedding_func``, ``get_data_manager(CacheBase("sqlite"), VectorBase("faiss"))`` and
``SearchDistanceEvaluation()``, filled and read through ``gptcache.adapter.api.put`` / ``get``.

How GPTCache scores a candidate (gptcache 0.1.44, read from its source):

* The faiss store is ``IDMap,Flat`` with ``METRIC_L2``: the "distance" it returns is the *squared* L2 distance.
  The data manager L2-normalises every vector first, so ``distance = 2 - 2*cos`` lies in ``[0, 4]``.
  It returns only the nearest neighbour (``VectorBase`` default ``top_k=1``).
* ``SearchDistanceEvaluation(max_distance=4.0, positive=False)`` clips the distance to ``[0, max_distance]`` and
  scores ``rank = max_distance - distance``; its ``range()`` is ``(0, max_distance)``.
* The adapter turns ``Config.similarity_threshold`` (0..1) into ``rank_threshold = (max - min) * threshold``
  and serves a cached answer when ``rank_threshold <= rank``.

So with unit vectors a hit means ``(4 - (2 - 2*cos)) / 4 = (1 + cos) / 2 >= threshold``, i.e.
``cos >= 2*threshold - 1``: GPTCache's default threshold of 0.8 serves anything with cosine similarity of at least
0.6. The score returned here is that normalised rank, ``rank / max_distance`` (the value GPTCache also hands to
``hit_callback``), so it compares directly with ``threshold``. It is recorded for misses too (the nearest neighbour's
score), and is ``nan`` only when GPTCache evaluated no candidate (empty cache).

Importing gptcache calls ``logging.basicConfig`` on the root logger; import this module only where that is harmless
(the eval command), not from the service.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gptcache import Cache, Config  # type: ignore[import-untyped]
from gptcache.adapter.api import get, put  # type: ignore[import-untyped]
from gptcache.manager import CacheBase, VectorBase, get_data_manager  # type: ignore[import-untyped]
from gptcache.processor.pre import get_prompt  # type: ignore[import-untyped]
from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation  # type: ignore[import-untyped]

EmbedFn = Callable[[list[str]], npt.NDArray[np.floating[Any]]]
Result = tuple[str | None, float]

#: GPTCache's own default ``Config.similarity_threshold`` (0.8 in gptcache 0.1.44).
DEFAULT_THRESHOLD: float = float(Config().similarity_threshold)

#: GPTCache's default LRU size; raised to the fill size so that no entry is evicted during a run.
_GPTCACHE_DEFAULT_MAX_SIZE = 1000


class _ScoreRecorder:
    """Wraps GPTCache's ``SearchDistanceEvaluation`` unchanged and remembers the ranks it computed for one lookup."""

    def __init__(self) -> None:
        self._inner: Any = SearchDistanceEvaluation()
        self._ranks: list[float] = []

    def evaluation(self, src_dict: dict[str, Any], cache_dict: dict[str, Any], **kwargs: Any) -> float:
        rank = float(self._inner.evaluation(src_dict, cache_dict, **kwargs))
        self._ranks.append(rank)
        return rank

    def range(self) -> tuple[float, float]:
        low, high = self._inner.range()
        return float(low), float(high)

    def reset(self) -> None:
        self._ranks.clear()

    def best_score(self) -> float:
        """Best rank of the last lookup normalised to 0..1 like ``similarity_threshold``; nan if none was computed."""
        if not self._ranks:
            return math.nan
        low, high = self.range()
        return (max(self._ranks) - low) / (high - low)


def _embedding_func(embed: EmbedFn, texts: Sequence[str]) -> Callable[..., npt.NDArray[np.float32]]:
    """GPTCache's ``embedding_func``: one text in, one vector out; known texts are embedded in one batch up front."""
    unique = list(dict.fromkeys(texts))
    rows = np.asarray(embed(unique), dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] != len(unique):
        raise ValueError(f"embed returned shape {rows.shape} for {len(unique)} texts")
    vectors: dict[str, npt.NDArray[np.float32]] = {text: rows[row] for row, text in enumerate(unique)}

    def embedding_func(text: str, **_: Any) -> npt.NDArray[np.float32]:
        vector = vectors.get(text)
        if vector is None:  # not expected: every fill question and query was embedded above
            vector = vectors[text] = np.asarray(embed([text]), dtype=np.float32)[0]
        return vector

    return embedding_func


def _new_cache(
    run_dir: Path,
    *,
    embedding_func: Callable[..., Any],
    recorder: _ScoreRecorder,
    dimension: int,
    threshold: float,
    size: int,
) -> Any:
    with warnings.catch_warnings():
        # gptcache's SQL store uses sqlalchemy.ext.declarative.declarative_base (a 2.0 deprecation).
        warnings.filterwarnings("ignore", message=r".*declarative_base\(\).*")
        data_manager = get_data_manager(
            CacheBase("sqlite", sql_url=f"sqlite:///{run_dir / 'sqlite.db'}"),
            VectorBase("faiss", dimension=dimension, index_path=str(run_dir / "faiss.index")),
            max_size=max(size, _GPTCACHE_DEFAULT_MAX_SIZE),
        )
    cache_obj = Cache()
    cache_obj.init(
        pre_embedding_func=get_prompt,
        embedding_func=embedding_func,
        data_manager=data_manager,
        similarity_evaluation=recorder,
        config=Config(similarity_threshold=threshold),
    )
    return cache_obj


class _Closed:
    """Stands in for a closed data manager, so the ``atexit`` hook that ``Cache.init`` registers does nothing."""

    def close(self) -> None:
        return None


def _close(cache_obj: Any) -> None:
    data_manager = cache_obj.data_manager
    try:
        data_manager.close()
    finally:
        cache_obj.data_manager = _Closed()
        engine = getattr(data_manager.s, "_engine", None)  # SQLStorage.close() leaves its engine open
        if engine is not None:
            engine.dispose()


def _fill(cache_obj: Any, fill: Sequence[tuple[str, str]]) -> None:
    for question, answer in fill:
        put(question, answer, cache_obj=cache_obj)
    stored = int(cache_obj.data_manager.v.count())
    if stored != len(fill):  # put() logs and swallows save errors; a half-filled cache would skew the comparison
        raise RuntimeError(f"GPTCache stored {stored} of {len(fill)} entries")


def _lookup(cache_obj: Any, recorder: _ScoreRecorder, query: str) -> Result:
    recorder.reset()
    answer = get(query, cache_obj=cache_obj)
    return (answer if isinstance(answer, str) else None), recorder.best_score()


def run_gptcache(
    fill: list[tuple[str, str]],
    queries: list[str],
    embed: EmbedFn,
    threshold: float,
    workdir: Path,
) -> list[Result]:
    """Fill a fresh GPTCache with ``fill``, look up each query; per query (cached answer or None, score in 0..1).

    ``threshold`` is GPTCache's ``similarity_threshold``: a hit needs ``score >= threshold`` (see the module doc).
    Every call builds its own cache object and store files in a new folder under ``workdir``, removed afterwards.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"similarity_threshold must be within 0..1, got {threshold}")
    if not queries:
        return []
    embedding_func = _embedding_func(embed, [question for question, _ in fill] + queries)
    dimension = int(embedding_func(queries[0]).shape[0])
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="gptcache-", dir=workdir))
    try:
        recorder = _ScoreRecorder()
        cache_obj = _new_cache(
            run_dir,
            embedding_func=embedding_func,
            recorder=recorder,
            dimension=dimension,
            threshold=threshold,
            size=len(fill),
        )
        try:
            _fill(cache_obj, fill)
            return [_lookup(cache_obj, recorder, query) for query in queries]
        finally:
            _close(cache_obj)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
