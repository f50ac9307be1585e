"""The prompt's version in cache keys follows the prompt: answers of an older prompt are not served by a newer one."""

from __future__ import annotations

import secrets

from helpline.chat.prompts import PROMPT_VERSION, prompt_fingerprint
from helpline.knowledge.embeddings import Embedder
from helpline.providers.extractive import ExtractiveProvider
from helpline.providers.fake import FakeProvider, FakeReply
from tests.cache.test_cache_api import UNLIMITED, ask
from tests.conftest import make_settings, running_api

QUESTION = "How long does delivery take?"


def test_the_fingerprint_moves_with_what_shapes_the_prompt() -> None:
    assert prompt_fingerprint(4, 0.5) == prompt_fingerprint(4, 0.5)
    assert prompt_fingerprint(4, 0.5).startswith(f"{PROMPT_VERSION}-")
    assert len({prompt_fingerprint(4, 0.5), prompt_fingerprint(3, 0.5), prompt_fingerprint(4, 0.6)}) == 3


async def test_an_answer_cached_under_other_retrieval_settings_is_not_served(
    sqlite_url: str, embedder: Embedder
) -> None:
    """Same Redis, same tenant, a restart with fewer passages per prompt: the question is asked again."""
    tenant = "t" + secrets.token_hex(6)

    async def answer(top_k: int, reply: str) -> tuple[str, str]:
        settings = make_settings(
            sqlite_url, redis_url="redis://127.0.0.1:6379/0", tenant=tenant, retrieval_top_k=top_k, **UNLIMITED
        )
        fake = FakeProvider(name="gemini", model="gemini-test", default=FakeReply(text=reply))
        async with running_api(settings, embedder, [fake, ExtractiveProvider(0.5)]) as api:
            await ask(api, QUESTION)
            body = await ask(api, QUESTION)
        return str(body["cache"]), str(body["reply"])

    assert await answer(4, "Four passages.") == ("exact", "Four passages.")
    assert await answer(3, "Three passages.") == ("exact", "Three passages.")  # asked again, then cached
    assert await answer(4, "Not asked.") == ("exact", "Four passages.")  # the first prompt's answer, still there
