"""Rate policies ("5/minute") and the tiers one request is charged to.

Kept free of any other Helpline import so ``config.py`` can validate rate strings at start-up with the same parser
the limiter uses: a typo in ``HELPLINE_RATE_LIMIT_IP`` fails the start, it never becomes "no limit".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS: dict[str, int] = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_RATE = re.compile(r"^\s*(\d{1,9})\s*/\s*(\d{1,6})?\s*([a-z]+)\s*$")
OFF_WORDS = frozenset({"off", "none", "unlimited"})
# Sliding-window logs keep one entry per admitted request, so a limit bounds memory per key; keep it sane.
MAX_LIMIT = 1_000_000


class PolicyError(ValueError):
    """A rate string we cannot read; the message shows the accepted forms."""


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` requests in any window of ``window_s`` seconds."""

    limit: int
    window_s: int

    @property
    def window_ms(self) -> int:
        return self.window_s * 1000

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_s}s"


def parse_rate(text: str) -> Rate | None:
    """``"5/minute"``, ``"20/hour"``, ``"100/second"``, ``"10/30s"``, ``"1000/day"``; ``"off"`` disables a tier.

    Returns None only for an explicit ``off`` (the caller logs that the tier is disabled); anything unreadable
    raises, because a mistyped limit must never silently become no limit.
    """
    cleaned = text.strip().lower()
    if cleaned in OFF_WORDS:
        return None
    match = _RATE.match(cleaned)
    unit = _UNITS.get(_singular(match.group(3))) if match else None
    if match is None or unit is None:
        raise PolicyError(
            f"cannot read rate {text!r}: use COUNT/UNIT such as '5/minute', '20/hour', '100/second', "
            "'10/30s' or 'off' (units: second, minute, hour, day)"
        )
    limit = int(match.group(1))
    window_s = int(match.group(2) or 1) * unit
    if not 1 <= limit <= MAX_LIMIT or window_s < 1:
        raise PolicyError(f"rate {text!r} must allow 1..{MAX_LIMIT} requests per a window of at least 1 second")
    return Rate(limit, window_s)


def _singular(word: str) -> str:
    """``minutes`` -> ``minute``, ``hrs`` -> ``hr``; two-letter words stay, so ``ms`` is refused (not minutes)."""
    return word[:-1] if word not in _UNITS and len(word) > 2 and word.endswith("s") else word


@dataclass(frozen=True, slots=True)
class Tier:
    """One counter a request is charged to: ``name`` for headers and logs, ``key`` names whose counter it is."""

    name: str
    key: str
    rate: Rate


@dataclass(frozen=True, slots=True)
class Policies:
    """The configured rates; a None rate means that tier was switched off on purpose (and logged at start)."""

    ip: Rate | None
    user: Rate | None
    session: Rate | None
    max_concurrent: int

    @classmethod
    def from_strings(cls, ip: str, user: str, session: str, max_concurrent: int) -> Policies:
        return cls(parse_rate(ip), parse_rate(user), parse_rate(session), max_concurrent)

    def disabled(self) -> list[str]:
        return [name for name, rate in (("ip", self.ip), ("user", self.user), ("session", self.session)) if not rate]

    def tiers_for(self, *, client: str, user_id: int | None, session_hash: str | None) -> list[Tier]:
        """Which counters a chat request is charged to.

        A signed-in caller is limited per API key instead of per IP: many shoppers behind one store back end share
        an address, and the key is the stronger identity. An anonymous caller is limited per IP and, when it
        continues a conversation, per conversation too, so an address-rotating client cannot make one
        conversation (whose history grows the prompt) run hotter than a signed-in user may.
        """
        if user_id is not None:
            return [Tier("user", f"user:{user_id}", self.user)] if self.user else []
        tiers = [Tier("ip", f"ip:{client}", self.ip)] if self.ip else []
        if session_hash is not None and self.session:
            tiers.append(Tier("session", f"session:{session_hash}", self.session))
        return tiers
