"""What may be cached, and for whom.

Only good answers: an ``answer`` that cites what we gave it, complete, not an apology, not the last-resort
fallback standing in for the configured models. Personal questions (an order, an account, a card, contact
details) are cached only for their owner.
"""

from __future__ import annotations

import re
from functools import lru_cache

# About one shopper's own state (not a how-to): an identifier or contact detail, or "my X" with a status verb.
_IDENTIFIERS = re.compile(
    r"#\s?\d{3,}|\border\s*(?:no\.?|number|id)?\s*:?\s*[a-z]{0,3}-?\d{4,}|[\w.+-]+@[\w-]+\.[\w.-]+|\+?\d[\d ()-]{7,}\d",
    re.IGNORECASE,
)
_OWN_STATE = re.compile(
    r"\b(?:where(?:'s| is)|status of|what happened to|track|did|has|have|why (?:is|was|has|hasn't|did|didn't))\b"
    r"[^.?!]{0,20}\bmy\b"
    r"|\bmy\b[^.?!]{0,30}\b(?:is|was|has|hasn't|have|haven't|isn't|wasn't|didn't|never|still|not)\b"
    r"[^.?!]{0,30}\b(?:arrived?|come|came|delivered|late|missing|charged|refunded|blocked|locked|suspended|"
    r"cancell?ed|showing|working|received|through|yet)\b",
    re.IGNORECASE,
)


@lru_cache(maxsize=1024)  # a pure function of the text; repeated questions are what a cache serves
def is_personal(message: str) -> bool:
    """A question whose answer depends on who asks; it must never be served to another owner."""
    return bool(_IDENTIFIERS.search(message) or _OWN_STATE.search(message))


def owner_scope(personal: bool, key_id: int | None, session_id: str) -> str:
    if not personal:
        return "shared"
    return f"user:{key_id}" if key_id is not None else f"session:{session_id}"


def cacheable(
    *, action: str, grounded: bool, provider: str, error: str | None, last_resort: bool, allow_fallback: bool
) -> bool:
    """Only good answers are cached: no errors, apologies, handoffs, ungrounded or fallback replies."""
    if action != "answer" or not grounded or error is not None or provider in ("none", ""):
        return False
    return allow_fallback or not last_resort
