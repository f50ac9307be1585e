"""A small lexical scorer (IDF-weighted term overlap) that complements the dense embeddings.

MiniLM matches the *shape* of a question well ("When will my order arrive?" ~ "When will I be charged for my
order?") but can miss the one word that matters; IDF-weighted overlap rewards sharing the rare, meaningful words.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "can",
        "could",
        "do",
        "does",
        "did",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "please",
        "so",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "too",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "i'm",
        "im",
        "i've",
        "ive",
        "don't",
        "dont",
        "get",
        "got",
    ]
)


def stem(word: str) -> str:
    """Cheap plural folding, enough for product nouns (bananas → banana, berries → berry, boxes → box)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    return [stem(word) for word in _WORD.findall(text.lower()) if word not in STOPWORDS]


class LexicalScorer:
    """Score in [0, 1]: the share of the query's IDF weight found in a document."""

    def __init__(self) -> None:
        self._doc_terms: dict[str, frozenset[str]] = {}
        self._document_frequency: Counter[str] = Counter()

    def replace(self, document_id: str, text: str) -> None:
        self.remove(document_id)
        unique = frozenset(terms(text))
        self._doc_terms[document_id] = unique
        self._document_frequency.update(unique)

    def remove(self, document_id: str) -> None:
        old = self._doc_terms.pop(document_id, None)
        if old:
            self._document_frequency.subtract(old)

    def load(self, documents: Iterable[tuple[str, str]]) -> None:
        self._doc_terms.clear()
        self._document_frequency.clear()
        for document_id, text in documents:
            self.replace(document_id, text)

    def idf(self, term: str) -> float:
        total = max(len(self._doc_terms), 1)
        return math.log(1 + total / (1 + self._document_frequency.get(term, 0)))

    def score(self, query: str, document_id: str) -> float:
        query_terms = set(terms(query))
        if not query_terms:
            return 0.0
        document_terms = self._doc_terms.get(document_id, frozenset())
        weights = {term: self.idf(term) for term in query_terms}
        total = sum(weights.values())
        return sum(weight for term, weight in weights.items() if term in document_terms) / total
