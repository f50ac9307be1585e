"""`helpline eval cache`: the issue's protocol on BANKING77, and the operating point the settings ship with.

Until session 18 nothing ran it: the ≥ 99 % precision and the comparison with GPTCache lived in the README only, and
a change to a guard could move the calibrated point away from the defaults without any test noticing.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from helpline.cache.evaluate import Report, evaluate, load_labelled
from helpline.cache.guards import SemanticGuard
from helpline.config import Settings
from helpline.knowledge.embeddings import Embedder
from tests.test_cli import run_cli

# A copy of ../shared/datasets/banking77 (CC BY 4.0, Casanueva et al., 2020; see its README), kept in the repository.
BANKING77 = Path(__file__).resolve().parents[2] / "data" / "banking77" / "train.csv"
TIERS = ("exact", "semantic", "combined")


@pytest.fixture(scope="module")
def banking77_report() -> Report:
    """The whole protocol on the whole training set (about a minute: 10,003 questions embedded)."""
    return evaluate(load_labelled(BANKING77, "text", "category"), Embedder(threads=2).embed, SemanticGuard())


def test_the_calibrated_point_on_banking77_is_the_shipped_default(banking77_report: Report) -> None:
    """A change to the guards or the embedder that moves the calibrated point fails here: re-run `helpline eval
    cache`, then move the defaults (and the README's table) with it."""
    settings = Settings()
    point = (banking77_report.threshold, banking77_report.margin)
    assert point == (settings.cache_semantic_threshold, settings.cache_semantic_margin)


def test_banking77_precision_is_at_least_99_percent_with_a_useful_hit_rate(banking77_report: Report) -> None:
    assert (banking77_report.fill, banking77_report.replay) == (770, 9233)  # 77 intents x 10 fill the cache
    combined = banking77_report.at_threshold["combined"]
    assert float(combined["precision"]) >= 0.99
    assert float(banking77_report.held_out["precision"]) >= 0.99  # the half calibration never saw
    assert float(combined["hit_rate"]) >= 0.09  # 0.098 in session 18; no guard may quietly halve it
    # Hits of the sweep fall as the threshold rises, and precision at the operating point beats every sweep row
    # without the margin rule at or below our threshold.
    no_margin = [row for row in banking77_report.sweep if row["margin"] == 0.0]
    hits = [row["combined"]["hits"] for row in no_margin]
    assert hits == sorted(hits, reverse=True)
    below = [row for row in no_margin if row["threshold"] <= banking77_report.threshold]
    assert all(row["combined"]["precision"] < combined["precision"] for row in below)


def test_the_command_prints_every_tier_and_runs_gptcache_on_the_same_protocol(tmp_path: Path) -> None:
    """On a slice of BANKING77 (8 intents, 30 questions each) through the command itself, GPTCache included."""
    rows: dict[str, list[str]] = {}
    with BANKING77.open(encoding="utf-8", newline="") as source:
        for row in csv.DictReader(source):
            if len(rows) < 8 or row["category"] in rows:
                rows.setdefault(row["category"], [])
                if len(rows[row["category"]]) < 30:
                    rows[row["category"]].append(row["text"])
    dataset = tmp_path / "slice.csv"
    with dataset.open("w", encoding="utf-8", newline="") as target:
        writer = csv.writer(target)
        writer.writerow(["text", "category"])
        writer.writerows((text, label) for label, texts in rows.items() for text in texts)
    database = f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"
    result = run_cli("eval", "cache", "--dataset", str(dataset), "--json", database_url=database, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert (report["fill"], report["replay"]) == (80, 160)
    for tier in TIERS:
        scored = report["at_threshold"][tier]
        assert 0 <= scored["hits"] <= 160
        assert math.isclose(scored["hit_rate"], scored["hits"] / 160, abs_tol=1e-4)
    assert report["at_threshold"]["combined"]["hits"] >= report["at_threshold"]["semantic"]["hits"]
    assert len(report["sweep"]) >= 15
    gptcache = report["gptcache"]
    # GPTCache's real run at its default threshold agrees with the sweep derived from its nearest neighbours.
    assert gptcache["default_threshold_real_run_hits"] == gptcache["default_threshold_derived_hits"]
    default = next(row for row in gptcache["sweep"] if row["default"])
    assert default["hits"] > 0
