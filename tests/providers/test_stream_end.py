"""A provider's reply stream ends on the event loop, whole: nothing of the vendor SDK's generator chain is left for
the garbage collector, however the stream is left (finished, refused, or dropped by its reader after one piece).

Closing only the SDK's outermost generator left about ten inner ones (google-genai's, httpx2's, httpcore2's)
suspended in a reference cycle; the cyclic collector then freed them in whatever thread ran it, racing the loop
closing the same generators: "async generator already executing", a rare failure of the whole test run.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import time
import types
from collections.abc import AsyncGenerator, Iterator

import pytest

from helpline.providers.base import CompletionRequest, Provider, ProviderError
from helpline.providers.gemini import GeminiProvider
from helpline.providers.ollama import OllamaProvider
from helpline.providers.transport import DRAIN_S, ended
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.servers import Fault

TEXT = "Standard delivery takes one to two working days, every day of the week, by our own vans."
# Where the generators of each vendor's stream come from (the SDK and the HTTP stack under it).
VENDOR_CODE = ("google/genai", "httpx2", "httpcore2", "/ollama/", "/httpx/", "/httpcore/")


@pytest.fixture(scope="module")
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(reply_text=TEXT) as server:
        yield server


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(reply_text=TEXT) as server:
        yield server


def suspended_vendor_generators() -> list[str]:
    return [
        found.ag_code.co_qualname
        for found in gc.get_objects()
        if inspect.isasyncgen(found)
        and found.ag_frame is not None  # not finished
        and any(part in found.ag_code.co_filename for part in VENDOR_CODE)
    ]


async def leave(provider: Provider, how: str) -> None:
    stream = provider.stream(CompletionRequest("How long does delivery take?"))
    try:
        async for chunk in stream:
            if how == "after one piece" and chunk.text:
                break
    except ProviderError:
        assert how == "refused"
    finally:
        await stream.aclose()  # what the router does with a stream it stops reading


@pytest.mark.parametrize("vendor", ["gemini", "ollama"])
@pytest.mark.parametrize("how", ["finished", "refused", "after one piece"])
async def test_nothing_of_a_stream_is_left_to_the_garbage_collector(
    vendor: str, how: str, gemini: FakeGemini, ollama: FakeOllama
) -> None:
    if vendor == "gemini":
        gemini.reset()
        if how == "refused":
            gemini.script([Fault.safety(prompt_blocked=False)])
        provider: Provider = GeminiProvider("test-key", "gemini-2.5-flash", gemini.base_url, timeout_s=3.0)
    else:
        ollama.reset()
        if how == "refused":
            ollama.script([Fault.stream_cut(after_chunks=1)])
        provider = OllamaProvider(ollama.base_url, "phi3", timeout_s=3.0, connect_timeout_s=0.5)
    gc.collect()
    gc.disable()  # what is left must be found before a collection could free it
    try:
        await leave(provider, how)
        for _ in range(5):
            await asyncio.sleep(0)  # closings the loop was asked to run
        left = suspended_vendor_generators()
    finally:
        gc.enable()
        if isinstance(provider, GeminiProvider):
            await provider.aclose()
    assert left == []


async def slow_tail() -> AsyncGenerator[str, None]:
    """A vendor stream whose HTTP response ends long after its finishing chunk."""
    yield "reply"
    await asyncio.sleep(5)


async def reader(stream: AsyncGenerator[str, None], *, finish: bool) -> AsyncGenerator[str, None]:
    async with ended(stream) as end:
        async for piece in stream:
            end.finished = finish
            yield piece  # the done chunk, in a provider
            return


@pytest.mark.parametrize(("finish", "closing_s"), [(True, DRAIN_S), (False, 0.0)])
async def test_a_finished_reply_is_handed_over_at_once_and_its_tail_drained_only_on_close(
    finish: bool, closing_s: float
) -> None:
    """The reader gets the finishing chunk without waiting for the stream's end; closing then drains the tail for
    at most DRAIN_S (a finished reply: its connection may go back to the pool) or cancels it at once (a reply left
    early), and either way the vendor's generator has finished."""
    stream = slow_tail()
    provider = reader(stream, finish=finish)
    started = time.monotonic()
    assert await anext(provider) == "reply"
    assert time.monotonic() - started < 0.05
    started = time.monotonic()
    await provider.aclose()
    assert closing_s <= time.monotonic() - started < closing_s + 0.5
    assert isinstance(stream, types.AsyncGeneratorType)
    assert stream.ag_frame is None  # finished
