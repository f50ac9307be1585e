"""Semantic guards: reasons two similar-sounding questions must NOT share an answer.

Embeddings put "can I cancel my order" next to "why can't I cancel my order", and "2 kg" next to "5 kg". Each guard
compares one feature that changes the answer; any difference sends the question to a real answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_NUMBER = re.compile(r"(?<![a-z])(\d+(?:[.,]\d+)?)")
_IDENTIFIER = re.compile(r"\b(?:[a-z]{1,4}-?\d{3,}|#\s?\d+|\d{4,})\b")
NEGATIONS = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "nothing",
        "nobody",
        "without",
        "cannot",
        "can't",
        "cant",
        "won't",
        "wont",
        "don't",
        "dont",
        "doesn't",
        "doesnt",
        "didn't",
        "didnt",
        "isn't",
        "isnt",
        "aren't",
        "arent",
        "wasn't",
        "wasnt",
        "haven't",
        "havent",
        "hasn't",
        "hasnt",
        "shouldn't",
        "shouldnt",
        "couldn't",
        "couldnt",
        "wouldn't",
        "wouldnt",
        "mustn't",
        "unable",
        "fail",
        "failed",
        "failing",
        "neither",
        "nor",
    ]
)
_OPPOSITE_PAIRS = [
    ("add", "remove"), ("add", "delete"), ("subscribe", "unsubscribe"), ("increase", "decrease"),
    ("before", "after"), ("earliest", "latest"), ("earlier", "later"), ("first", "last"), ("pause", "resume"),
    ("upgrade", "downgrade"), ("start", "stop"), ("enable", "disable"), ("on", "off"), ("open", "close"),
    ("more", "less"), ("more", "fewer"), ("min", "max"), ("minimum", "maximum"), ("buy", "sell"), ("give", "get"),
    ("send", "receive"), ("join", "leave"), ("join", "cancel"), ("accept", "reject"), ("allow", "block"),
    ("lock", "unlock"), ("freeze", "unfreeze"), ("activate", "deactivate"), ("include", "exclude"),
    ("with", "without"), ("in", "out"), ("up", "down"), ("top", "bottom"), ("cheapest", "expensive"),
    ("cheap", "expensive"), ("refund", "charge"), ("deposit", "withdraw"), ("top", "withdraw"), ("in", "outside"),
    ("inside", "outside"), ("import", "export"), ("login", "logout"), ("sign", "unsign"), ("online", "offline"),
    ("today", "tomorrow"), ("today", "yesterday"), ("morning", "evening"), ("morning", "afternoon"),
    ("afternoon", "evening"), ("day", "night"), ("weekday", "weekend"), ("old", "new"), ("same", "different"),
    ("pick", "deliver"), ("collect", "deliver"), ("collection", "delivery"), ("return", "keep"),
]  # fmt: skip
_DAYS = frozenset(
    ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "weekend", "weekday", "tonight"]
)


def _opposites() -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for left, right in _OPPOSITE_PAIRS:
        table.setdefault(left, set()).add(right)
        table.setdefault(right, set()).add(left)
    return table


OPPOSITES = _opposites()


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


class SemanticGuard:
    """Decides whether a cached question's answer may serve a new question that embeds close to it.

    ``vocabulary``: words that name things the store sells (from product titles); two questions naming different
    products never share an answer.
    """

    def __init__(self, vocabulary: Iterable[str] = ()) -> None:
        self._vocabulary = frozenset(word for word in vocabulary if len(word) > 2)

    def set_vocabulary(self, vocabulary: Iterable[str]) -> None:
        self._vocabulary = frozenset(word for word in vocabulary if len(word) > 2)

    def conflict(self, question: str, cached: str) -> str | None:
        """Why the two must not share an answer, or None when nothing speaks against it."""
        a, b = question.lower(), cached.lower()
        wa, wb = words(a), words(b)
        sa, sb = set(wa), set(wb)
        if (sa & NEGATIONS) != (sb & NEGATIONS) or _contracted_not(a) != _contracted_not(b):
            return "negation"
        if Counter(_NUMBER.findall(a)) != Counter(_NUMBER.findall(b)):
            return "number"
        if set(_IDENTIFIER.findall(a)) != set(_IDENTIFIER.findall(b)):
            return "identifier"
        if (sa & self._vocabulary) != (sb & self._vocabulary):
            return "product"
        if (sa & _DAYS) != (sb & _DAYS):
            return "time"
        return _opposite(sa, sb)


def _contracted_not(text: str) -> bool:
    return "n't" in text or "n’t" in text


def _opposite(sa: set[str], sb: set[str]) -> str | None:
    only_a, only_b = sa - sb, sb - sa
    for word in only_a:
        if OPPOSITES.get(word, set()) & only_b:
            return "opposite"
    return None
