"""Cache keys and scopes. Everything that changes an answer is part of the scope; nothing personal is shared.

All keys of one tenant share the Redis Cluster hash tag ``{<tenant>}``, so tag invalidation runs as one atomic
Lua script (the trade-off: one tenant's cache lives on one shard).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from helpline.providers.base import Turn

_SPACES = re.compile(r"\s+")
_EDGE_PUNCTUATION = re.compile(r"^[\s\"'“”‘’¿¡]+|[\s\"'“”‘’?!.。？！…]+$")


@lru_cache(maxsize=1024)  # pure; asked again for every repeat of a question
def normalize(text: str) -> str:
    """The exact tier's form of a question: NFKC, case-folded, spaces collapsed, edge punctuation dropped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _EDGE_PUNCTUATION.sub("", _SPACES.sub(" ", folded)).strip()


def digest(*parts: str, size: int = 32) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:size]


def context_digest(history: tuple[Turn, ...]) -> str:
    """A follow-up is not the same question as a first message: the recent turns are part of the scope."""
    if not history:
        return "first"
    return digest(*(f"{turn.message}\x1e{turn.reply}" for turn in history), size=16)


@dataclass(frozen=True, slots=True)
class CacheScope:
    tenant: str
    locale: str
    prompt_version: str
    variant: str
    kb_version: str
    context: str = "first"
    owner: str = "shared"  # "shared", or the owner of a personal answer (never served to anyone else)

    @property
    def rewarmable(self) -> bool:
        """A shared first message: the only kind of answer re-warming can recreate (it asks each popular question
        as a first message from nobody in particular). A follow-up or a personal answer is left to its asker."""
        return self.context == "first" and self.owner == "shared"

    @property
    def id(self) -> str:
        return digest(
            self.locale, self.prompt_version, self.variant, self.kb_version, self.context, self.owner, size=20
        )


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key names for one tenant (all carry the tenant's hash tag) and the database its knowledge lives in.

    ``database``: the database's identity (kb_revision.database_id). Answers and knowledge revisions belong to one
    database: two of them on one tenant (a staging and a production store on one Redis, both with the default
    tenant) served each other's answers, and each took the other's higher revisions for a restored backup and
    removed everything the store held, over and over."""

    namespace: str
    tenant: str
    database: str = ""

    @property
    def prefix(self) -> str:
        tenant = f"{self.namespace}:{{{self.tenant}}}"
        return f"{tenant}:{self.database}" if self.database else tenant

    def entry(self, scope: CacheScope, normalized: str) -> str:
        return f"{self.prefix}:e:{scope.id}:{digest(normalized)}"

    def semantic(self, scope_id: str) -> str:
        return f"{self.prefix}:s:{scope_id}"

    def semantic_version(self, scope_id: str) -> str:
        return f"{self.prefix}:sv:{scope_id}"

    def tag(self, tag: str) -> str:
        return f"{self.prefix}:t:{tag}"

    def lock(self, entry_key: str) -> str:
        return f"{entry_key}:lock"

    @staticmethod
    def relay(entry_key: str, holder: bytes) -> str:
        """The relay stream of the call made under the lock ``holder`` holds (see cache.relay)."""
        return f"{entry_key}:relay:{holder.decode('ascii', 'replace')}"

    def popularity(self) -> str:
        return f"{self.prefix}:pop"

    @staticmethod
    def scope_of(entry_key: str) -> str:
        """The scope id inside an entry key."""
        return entry_key.rsplit(":", 2)[-2]
