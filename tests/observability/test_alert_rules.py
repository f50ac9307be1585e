"""The Prometheus alert rules: promtool accepts them, their unit tests pass, and the in-app evaluator agrees.

The promtool unit-test files in deploy/prometheus/tests are the one source of synthetic series: promtool runs them
against alerts.yml, and this module replays the same series into an in-app ``AlertWindow`` (counters as the
increments between samples, gauges as their values, histogram buckets as observations at each bucket's bound) and
requires the in-app evaluator to give exactly the alerts promtool was told to expect, at every eval_time.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpline.observability.alerts import RULES, AlertWindow, evaluate_alerts, histogram_quantile

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
UNIT_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*_test.yml"))
STEP_S = 60


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run `make tools` (scripts/install-tools.sh installs Debian's prometheus)"
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603


def test_promtool_accepts_the_rules() -> None:
    result = run(promtool(), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    assert len(UNIT_TESTS) >= 4
    result = run(promtool(), "test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def _duration_s(text: str | None) -> int:
    if not text:
        return 0
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+)([smh])", text))


def test_the_yaml_and_the_in_app_rules_are_the_same_rules() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    in_yaml = {
        rule["alert"]: (
            rule["labels"]["severity"], _duration_s(rule.get("for")),
            rule["annotations"]["summary"], rule["annotations"]["runbook"],
        )
        for rule in rules
    }  # fmt: skip
    in_app = {rule.name: (rule.severity, rule.for_s, rule.summary, rule.runbook) for rule in RULES}
    assert in_yaml == in_app


# --- replaying promtool's input series in-app -------------------------------------------------------------------

_SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})?$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_SEGMENT = re.compile(r"^(-?[\d.]+)(?:([+-])([\d.]+)x(\d+))?$")


def expand(values: str) -> list[float]:
    """promtool's expanding notation, the forms our files use: ``a``, ``a+bxn``, ``a-bxn`` (n+1 values)."""
    out: list[float] = []
    for segment in values.split():
        match = _SEGMENT.match(segment)
        assert match, f"unsupported series notation {segment!r}"
        start, sign, step, times = match.groups()
        if sign is None:
            out.append(float(start))
            continue
        delta = float(step) if sign == "+" else -float(step)
        out.extend(float(start) + delta * i for i in range(int(times) + 1))
    return out


Series = tuple[str, dict[str, str], list[float]]


def parse_series(test: dict[str, Any]) -> list[Series]:
    parsed = []
    for entry in test["input_series"]:
        match = _SERIES.match(entry["series"].strip())
        assert match, entry["series"]
        labels = dict(_LABEL.findall(match["labels"] or ""))
        parsed.append((match["name"], labels, expand(entry["values"])))
    return parsed


def _increments(values: list[float], upto: int) -> list[tuple[int, float]]:
    """(minute, increase during the minute ending there), for minutes 1..upto."""
    return [(k, values[k] - values[k - 1]) for k in range(1, min(upto, len(values) - 1) + 1)]


def _feed_counter(window: AlertWindow, name: str, labels: dict[str, str], values: list[float], upto: int) -> None:
    recorders: dict[str, Callable[[float, float], None]] = {
        "helpline_http_requests_total": lambda n, ts: window.record_request(int(labels["status"]), n, ts),
        "helpline_cache_lookups_total": lambda n, ts: window.record_cache_lookup(labels["tier"], n, ts),
        "helpline_redis_fallback_total": lambda n, ts: window.record_redis_fallback(labels["component"], n, ts),
        "helpline_conversation_write_failures_total": window.record_write_failures,
    }
    assert name in recorders, f"the replay does not know {name}: map it here"
    for minute, increase in _increments(values, upto):
        if increase:
            recorders[name](increase, minute * STEP_S - STEP_S / 2)  # inside the minute, as real events are


def _feed_latency(window: AlertWindow, buckets: list[tuple[float, list[float]]], upto: int) -> None:
    """Cumulative bucket series → per-bucket counts → observations at each bucket's upper bound."""
    by_bound: dict[float, list[float]] = defaultdict(lambda: [0.0] * len(buckets[0][1]))
    for bound, values in buckets:
        by_bound[bound] = [a + b for a, b in zip(by_bound[bound], values, strict=True)]
    bounds = sorted(by_bound)
    for minute in range(1, upto + 1):
        below = 0.0
        for bound in bounds:
            cumulative = by_bound[bound][minute] - by_bound[bound][minute - 1]
            if cumulative - below:
                seconds = 1e9 if math.isinf(bound) else bound
                window.record_reply_latency(seconds, cumulative - below, minute * STEP_S - STEP_S / 2)
            below = cumulative


def _feed_gauges(window: AlertWindow, gauges: dict[tuple[str, str], list[list[float]]], upto: int) -> None:
    """Several replicas' series of one gauge become the max over them, as the rules aggregate."""
    setters: dict[str, Callable[[str, float, float], None]] = {
        "helpline_provider_up": window.set_provider_up,
        "helpline_provider_breaker_state": window.set_breaker_state,
        "helpline_conversation_write_backlog": lambda _label, records, ts: window.set_conversation_backlog(records, ts),
    }
    for (name, label), replicas in gauges.items():
        for minute in range(upto + 1):
            setters[name](label, max(values[minute] for values in replicas), minute * STEP_S)


def replay(series: list[Series], upto_minute: int) -> AlertWindow:
    window = AlertWindow()
    buckets: list[tuple[float, list[float]]] = []
    gauges: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for name, labels, values in series:
        if name == "helpline_reply_latency_seconds_bucket":
            buckets.append((float(labels["le"].replace("+Inf", "inf")), values))
        elif name in ("helpline_provider_up", "helpline_provider_breaker_state"):
            gauges[(name, labels["provider"])].append(values)
        elif name == "helpline_conversation_write_backlog":  # one per replica, no label of its own
            gauges[(name, "")].append(values)
        else:
            _feed_counter(window, name, labels, values, upto_minute)
    if buckets:
        _feed_latency(window, buckets, upto_minute)
    _feed_gauges(window, gauges, upto_minute)
    return window


def expectations() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    cases = []
    for path in UNIT_TESTS:
        for index, test in enumerate(yaml.safe_load(path.read_text())["tests"]):
            for check in test["alert_rule_test"]:
                cases.append((f"{path.stem}[{index}]@{check['eval_time']}:{check['alertname']}", test, check))
    return cases


CASES = expectations()


@pytest.mark.parametrize(("case", "test", "check"), CASES, ids=[case for case, _, _ in CASES])
def test_the_in_app_evaluator_agrees_with_promtool(case: str, test: dict[str, Any], check: dict[str, Any]) -> None:
    assert test["interval"] == "1m", case
    minute = _duration_s(check["eval_time"]) // STEP_S
    window = replay(parse_series(test), minute)
    [status] = [s for s in evaluate_alerts(window, now=minute * STEP_S) if s.name == check["alertname"]]
    got = sorted(sorted({**dict(labels), "severity": status.severity}.items()) for labels, _ in status.firing)
    expected = sorted(sorted(alert["exp_labels"].items()) for alert in check.get("exp_alerts") or [])
    assert got == expected, case


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing = {check["alertname"] for _, _, check in CASES if check.get("exp_alerts")}
    quiet = {check["alertname"] for _, _, check in CASES if not check.get("exp_alerts")}
    names = {rule.name for rule in RULES}
    assert firing == names
    assert quiet == names


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = [1.0, 5.0, 7.5, math.inf]
    assert histogram_quantile(0.95, bounds, [0, 0, 0, 0]) is None
    assert histogram_quantile(0.5, bounds, [50, 100, 100, 100]) == pytest.approx(1.0)
    assert histogram_quantile(0.95, bounds, [50, 90, 100, 100]) == pytest.approx(5 + 2.5 * 0.5)
    assert histogram_quantile(0.95, bounds, [10, 10, 10, 100]) == 7.5  # in +Inf: the last finite bound
    assert histogram_quantile(0.25, bounds, [100, 100, 100, 100]) == pytest.approx(0.25)


def test_pending_until_the_condition_has_held_for_the_whole_for() -> None:
    window = AlertWindow()
    window.set_provider_up("ollama", 0, ts=600)
    states = {minute: evaluate_alerts(window, now=minute * 60) for minute in (9, 10, 11, 12)}
    ollama = {
        minute: next(s.state for s in found if s.name == "HelplineOllamaDown") for minute, found in states.items()
    }
    assert ollama == {9: "ok", 10: "pending", 11: "pending", 12: "firing"}
