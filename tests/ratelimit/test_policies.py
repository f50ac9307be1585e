"""Rate strings from settings: the forms we accept, clear errors for the rest, and which tiers a request pays."""

from __future__ import annotations

import pytest

from helpline.config import Settings
from helpline.ratelimit.policies import Policies, PolicyError, Rate, parse_rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5/minute", Rate(5, 60)),
        ("20/hour", Rate(20, 3600)),
        ("100/second", Rate(100, 1)),
        (" 7 / minutes ", Rate(7, 60)),
        ("10/30s", Rate(10, 30)),
        ("10/5min", Rate(10, 300)),
        ("1000/day", Rate(1000, 86400)),
        ("3/HRS", Rate(3, 3600)),
    ],
)
def test_readable_rates(text: str, expected: Rate) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["off", "OFF", " none ", "unlimited"])
def test_off_is_explicit(text: str) -> None:
    assert parse_rate(text) is None


@pytest.mark.parametrize(
    "text", ["", "5", "5 per minute", "5/fortnight", "-1/minute", "0/minute", "5/0s", "five/minute", "5/ms", "5/m/s"]
)
def test_unreadable_rates_fail_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(PolicyError, match=r"5/minute|1\.\."):
        parse_rate(text)


def test_settings_refuse_a_bad_rate_at_start() -> None:
    with pytest.raises(ValueError, match="cannot read rate"):
        Settings(rate_limit_ip="5 a minute")
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        Settings(trusted_proxies="10.0.0.0/8, proxy.internal")
    with pytest.raises(ValueError, match="CORS_ORIGINS"):
        Settings(cors_origins="*")


def test_signed_in_callers_pay_per_key_anonymous_ones_per_ip_and_conversation() -> None:
    policies = Policies.from_strings("5/minute", "20/hour", "20/hour", 1000)
    user = policies.tiers_for(client="203.0.113.7", user_id=42, session_hash="abc")
    assert [(tier.name, tier.key, tier.rate) for tier in user] == [("user", "user:42", Rate(20, 3600))]
    anonymous = policies.tiers_for(client="203.0.113.7", user_id=None, session_hash="abc")
    assert [tier.key for tier in anonymous] == ["ip:203.0.113.7", "session:abc"]
    new_conversation = policies.tiers_for(client="203.0.113.7", user_id=None, session_hash=None)
    assert [tier.name for tier in new_conversation] == ["ip"]


def test_a_tier_switched_off_is_reported() -> None:
    policies = Policies.from_strings("off", "20/hour", "off", 10)
    assert policies.disabled() == ["ip", "session"]
    assert policies.tiers_for(client="203.0.113.7", user_id=None, session_hash="abc") == []
