"""A document's version as answers and the cache store name it: ``<revision>:<content hash>``.

The revision is the id of the change that wrote the text (``KnowledgeDocument.revision``), so versions are ordered
across every process that writes documents; the hash alone is not. ``<revision>:-`` is the document deleted after
that revision. The Redis backend's invalidation script orders versions the same way (cache/redis_backend.py)."""

from __future__ import annotations

GONE = "-"  # the hash part of a deleted document's version


def version(revision: int, content_hash: str) -> str:
    return f"{revision}:{content_hash}"


def deleted(revision: int) -> str:
    """The document deleted after ``revision`` (before any later version: revisions only grow)."""
    return version(revision, GONE)


def revision(of: str) -> int:
    """The revision a version names; -1 for one in no known form (written by a release before revisions)."""
    number, colon, _ = of.partition(":")
    return int(number) if colon and number.isdigit() else -1


def order(of: str) -> int:
    """Newer versions order higher: by revision, and a deletion after the version it deleted."""
    number = revision(of)
    return 2 * number + (1 if number >= 0 and of.endswith(":" + GONE) else 0)


def newest(a: str, b: str) -> str:
    """The newer of two versions (``a`` when they are equal)."""
    return b if order(b) > order(a) else a
