"""The fakes must be faithful enough that the real SDKs parse them, and their faults must surface the way real
failures do. These tests pin both, and they pin which exception each SDK raises for each fault, because the
provider adapters map exactly those types.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import httpx2
import ollama
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.servers import AsgiServer, Fault, refused_url, split_text
from tests.fakes.tcp_proxy import ProxyMode, TcpProxy

GEMINI_MODEL = "gemini-2.5-flash"
OLLAMA_MODEL = "phi3"
CLIENT_TIMEOUT = 0.5  # seconds; every client gets one, because neither SDK has a default timeout
QUESTION = "Where is my order?"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini(reply_text="Your order ships tomorrow.", api_key="test-key") as server:
        yield server


@pytest.fixture
async def genai_client(gemini: FakeGemini) -> AsyncIterator[genai.Client]:
    client = _genai_client(gemini.base_url)
    yield client
    await client.aio.aclose()
    client.close()


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(reply_text="Your order ships tomorrow.") as server:
        yield server


@pytest.fixture
async def ollama_client(fake_ollama: FakeOllama) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=fake_ollama.base_url, timeout=CLIENT_TIMEOUT) as client:
        yield client


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy(REDIS_HOST, REDIS_PORT) as running:
        yield running


@pytest.fixture
async def redis_client(proxy: TcpProxy) -> AsyncIterator[aioredis.Redis]:
    # No retries: redis-py 8 retries 3 times with backoff by default, which turns a 0.5 s timeout into ~10 s.
    client = aioredis.Redis(
        host=proxy.host,
        port=proxy.port,
        socket_timeout=CLIENT_TIMEOUT,
        socket_connect_timeout=CLIENT_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    yield client
    await client.aclose()


def _genai_client(base_url: str) -> genai.Client:
    options = types.HttpOptions(base_url=base_url, api_version="v1beta", timeout=int(CLIENT_TIMEOUT * 1000))
    return genai.Client(api_key="test-key", http_options=options)


async def _generate(client: genai.Client) -> types.GenerateContentResponse:
    return await client.aio.models.generate_content(model=GEMINI_MODEL, contents=QUESTION)


async def _gemini_stream(client: genai.Client, received: list[types.GenerateContentResponse]) -> None:
    """Consume a stream into `received`, so a test still sees the chunks that arrived before an error."""
    async for chunk in await client.aio.models.generate_content_stream(model=GEMINI_MODEL, contents=QUESTION):
        received.append(chunk)


async def _gemini_call(client: genai.Client, stream: bool) -> None:
    if stream:
        await _gemini_stream(client, [])
    else:
        await _generate(client)


async def _ollama_chat(client: ollama.AsyncClient) -> ollama.ChatResponse:
    return await client.chat(model=OLLAMA_MODEL, messages=[{"role": "user", "content": QUESTION}])


async def _ollama_stream(client: ollama.AsyncClient, received: list[ollama.ChatResponse]) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    async for part in await client.chat(model=OLLAMA_MODEL, messages=messages, stream=True):
        received.append(part)


async def _ollama_call(client: ollama.AsyncClient, stream: bool) -> None:
    if stream:
        await _ollama_stream(client, [])
    else:
        await _ollama_chat(client)


# --- shared machinery -----------------------------------------------------------------------------------------


def test_split_text_keeps_every_character_in_order() -> None:
    assert split_text("abcdefghij", 4) == ["abc", "def", "gh", "ij"]
    assert split_text("ab", 4) == ["a", "b"]
    assert split_text("", 4) == []


def test_refused_url_refuses_at_once() -> None:
    started = time.perf_counter()
    with pytest.raises(httpx.ConnectError):
        httpx.get(refused_url(), timeout=2)
    assert time.perf_counter() - started < 0.5


def test_server_restarts_on_the_same_port(gemini: FakeGemini) -> None:
    port = gemini.port
    gemini.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gemini.base_url}/v1beta/models", timeout=1)
    gemini.start()
    assert gemini.port == port
    assert httpx.get(f"{gemini.base_url}/v1beta/models", headers={"x-goog-api-key": "test-key"}).status_code == 200


async def test_stop_releases_a_hung_request_quickly(gemini: FakeGemini, genai_client: genai.Client) -> None:
    gemini.script([Fault.hang()])
    pending = asyncio.ensure_future(_generate(genai_client))
    deadline = time.monotonic() + 5  # until the server holds it (0.1 s was not always enough on a busy machine)
    while not gemini.requests:
        assert time.monotonic() < deadline, "the request never reached the server"
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    await asyncio.to_thread(gemini.stop)
    assert time.perf_counter() - started < 1.0
    with pytest.raises((httpx2.ReadError, httpx2.RemoteProtocolError)):
        await pending


async def test_asgi_server_runs_a_starlette_app() -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    started = time.perf_counter()
    with AsgiServer(Starlette(routes=[Route("/", hello)])) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get("/")).text == "hi"
    assert time.perf_counter() - started < 1.0


# --- Gemini ---------------------------------------------------------------------------------------------------


async def test_gemini_generate_ok(gemini: FakeGemini, genai_client: genai.Client) -> None:
    response = await _generate(genai_client)
    assert response.text == "Your order ships tomorrow."
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.model_version == GEMINI_MODEL
    usage = response.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count
    assert usage.candidates_token_count
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    request = gemini.requests[-1]
    assert (request.method, request.path) == ("POST", f"/v1beta/models/{GEMINI_MODEL}:generateContent")
    assert request.body["contents"] == [{"parts": [{"text": QUESTION}], "role": "user"}]
    assert request.headers["x-goog-api-key"] == "test-key"


async def test_gemini_stream_ok(gemini: FakeGemini, genai_client: genai.Client) -> None:
    gemini.chunks = 3
    chunks: list[types.GenerateContentResponse] = []
    await _gemini_stream(genai_client, chunks)
    assert len(chunks) == 3
    assert "".join(chunk.text or "" for chunk in chunks) == "Your order ships tomorrow."
    last = chunks[-1]
    assert last.candidates is not None
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None
    assert last.usage_metadata.candidates_token_count
    assert len({chunk.response_id for chunk in chunks}) == 1
    request = gemini.requests[-1]
    assert request.path == f"/v1beta/models/{GEMINI_MODEL}:streamGenerateContent"
    assert request.query == {"alt": "sse"}


async def test_gemini_chunk_delay_paces_the_stream(gemini: FakeGemini, genai_client: genai.Client) -> None:
    gemini.chunks, gemini.chunk_delay = 3, 0.1
    started = time.perf_counter()
    await _gemini_stream(genai_client, [])
    assert time.perf_counter() - started >= 0.2


async def test_gemini_health_checks(gemini: FakeGemini, genai_client: genai.Client) -> None:
    model = await genai_client.aio.models.get(model=GEMINI_MODEL)
    assert model.name == f"models/{GEMINI_MODEL}"
    names = [listed.name async for listed in await genai_client.aio.models.list()]
    assert f"models/{GEMINI_MODEL}" in names
    assert [request.path for request in gemini.requests] == [f"/v1beta/models/{GEMINI_MODEL}", "/v1beta/models"]


async def test_gemini_script_plays_in_order_then_default(gemini: FakeGemini, genai_client: genai.Client) -> None:
    gemini.script([Fault.http_error(503), Fault.ok("second")])
    with pytest.raises(genai_errors.ServerError):
        await _generate(genai_client)
    assert (await _generate(genai_client)).text == "second"
    assert (await _generate(genai_client)).text == "Your order ships tomorrow."
    assert gemini.pending_faults == 0
    assert len(gemini.requests) == 3


async def test_gemini_rejects_unknown_model_and_bad_key(gemini: FakeGemini, genai_client: genai.Client) -> None:
    with pytest.raises(genai_errors.ClientError) as unknown:
        await genai_client.aio.models.generate_content(model="gemini-0-nope", contents=QUESTION)
    assert (unknown.value.code, unknown.value.status) == (404, "NOT_FOUND")
    bad_key = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=gemini.base_url))
    with pytest.raises(genai_errors.ClientError) as rejected:
        await _generate(bad_key)
    assert (rejected.value.code, rejected.value.status) == (400, "INVALID_ARGUMENT")
    await bad_key.aio.aclose()


GEMINI_ERRORS: dict[int, tuple[type[genai_errors.APIError], str]] = {
    429: (genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
    500: (genai_errors.ServerError, "INTERNAL"),
    503: (genai_errors.ServerError, "UNAVAILABLE"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("status", sorted(GEMINI_ERRORS))
async def test_gemini_http_errors(gemini: FakeGemini, genai_client: genai.Client, stream: bool, status: int) -> None:
    error_type, status_name = GEMINI_ERRORS[status]
    gemini.script([Fault.http_error(status, retry_after=2 if status == 429 else None)])
    with pytest.raises(error_type) as raised:
        await _gemini_call(genai_client, stream)
    assert (raised.value.code, raised.value.status) == (status, status_name)
    assert len(gemini.requests) == 1  # the SDK does not retry unless HttpOptions.retry_options is set
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "2"
        assert raised.value.details["error"]["details"][0]["retryDelay"] == "2s"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_gemini_refused_raises_httpx2_connect_error(stream: bool) -> None:
    client = _genai_client(refused_url())
    with pytest.raises(httpx2.ConnectError):
        await _gemini_call(client, stream)
    assert not issubclass(httpx2.ConnectError, httpx.ConnectError)  # adapters must catch httpx2, not httpx
    await client.aio.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_gemini_hang_times_out(gemini: FakeGemini, genai_client: genai.Client, stream: bool) -> None:
    gemini.script([Fault.hang()])
    started = time.perf_counter()
    with pytest.raises(httpx2.ReadTimeout):
        await _gemini_call(genai_client, stream)
    assert CLIENT_TIMEOUT * 0.9 <= time.perf_counter() - started < CLIENT_TIMEOUT + 0.5


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_gemini_slow_first_token(gemini: FakeGemini, genai_client: genai.Client, stream: bool) -> None:
    gemini.script([Fault.slow_first_token(0.2)])
    started = time.perf_counter()
    await _gemini_call(genai_client, stream)
    assert time.perf_counter() - started >= 0.2


async def test_gemini_stream_request_is_lazy(gemini: FakeGemini, genai_client: genai.Client) -> None:
    """Awaiting generate_content_stream sends nothing: the request, its errors and any first-token wait all
    happen on the first iteration. A time-to-first-token guard must therefore wrap the first __anext__."""
    gemini.script([Fault.slow_first_token(0.3, headers_first=True)])
    started = time.perf_counter()
    stream = await genai_client.aio.models.generate_content_stream(model=GEMINI_MODEL, contents=QUESTION)
    assert gemini.requests == []
    first = await anext(stream)
    assert time.perf_counter() - started >= 0.3
    assert first.text
    async for _ in stream:
        pass


async def test_gemini_retries_only_when_asked(gemini: FakeGemini) -> None:
    """With HttpRetryOptions the SDK retries 429/5xx and timeouts on its own backoff; Retry-After is ignored."""
    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.02, jitter=0)
    options = types.HttpOptions(base_url=gemini.base_url, timeout=int(CLIENT_TIMEOUT * 1000), retry_options=retry)
    client = genai.Client(api_key="test-key", http_options=options)
    gemini.script([Fault.http_error(429, retry_after=30), Fault.http_error(503)])
    started = time.perf_counter()
    assert (await _generate(client)).text == "Your order ships tomorrow."
    assert time.perf_counter() - started < 1.0
    assert len(gemini.requests) == 3
    await client.aio.aclose()


async def test_gemini_malformed_unary_raises_json_decode_error(gemini: FakeGemini, genai_client: genai.Client) -> None:
    gemini.script([Fault.malformed()])
    with pytest.raises(json.JSONDecodeError):
        await _generate(genai_client)


async def test_gemini_malformed_stream_raises_unknown_api_response(
    gemini: FakeGemini, genai_client: genai.Client
) -> None:
    gemini.script([Fault.malformed(after_chunks=1)])
    received: list[types.GenerateContentResponse] = []
    with pytest.raises(genai_errors.UnknownApiResponseError):
        await _gemini_stream(genai_client, received)
    assert len(received) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_gemini_empty_text(gemini: FakeGemini, genai_client: genai.Client, stream: bool) -> None:
    gemini.script([Fault.empty()])
    response = await _last_gemini_response(genai_client, stream)
    assert response.text == ""
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_gemini_empty_no_candidates(gemini: FakeGemini, genai_client: genai.Client, stream: bool) -> None:
    gemini.script([Fault.empty(no_candidates=True)])
    response = await _last_gemini_response(genai_client, stream)
    assert response.text is None
    assert response.candidates is None


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_gemini_safety_block_on_prompt(gemini: FakeGemini, genai_client: genai.Client, stream: bool) -> None:
    gemini.script([Fault.safety(prompt_blocked=True)])
    response = await _last_gemini_response(genai_client, stream)
    assert response.prompt_feedback is not None
    assert response.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    assert response.candidates is None
    assert response.text is None


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_gemini_safety_finish_reason(gemini: FakeGemini, genai_client: genai.Client, stream: bool) -> None:
    gemini.script([Fault.safety(prompt_blocked=False)])
    response = await _last_gemini_response(genai_client, stream)
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.SAFETY
    assert response.text is None


async def _last_gemini_response(client: genai.Client, stream: bool) -> types.GenerateContentResponse:
    if not stream:
        return await _generate(client)
    received: list[types.GenerateContentResponse] = []
    await _gemini_stream(client, received)
    return received[-1]


@pytest.mark.parametrize(
    ("reset", "error_type"), [(False, httpx2.RemoteProtocolError), (True, httpx2.ReadError)], ids=["fin", "rst"]
)
async def test_gemini_stream_cut(
    gemini: FakeGemini, genai_client: genai.Client, reset: bool, error_type: type[Exception]
) -> None:
    gemini.script([Fault.stream_cut(after_chunks=2, reset=reset)])
    received: list[types.GenerateContentResponse] = []
    with pytest.raises(error_type):
        await _gemini_stream(genai_client, received)
    assert len(received) == 2
    assert all(chunk.candidates and chunk.candidates[0].finish_reason is None for chunk in received)


async def test_gemini_unary_cut_mid_body(gemini: FakeGemini, genai_client: genai.Client) -> None:
    gemini.script([Fault.stream_cut()])
    with pytest.raises(httpx2.RemoteProtocolError):
        await _generate(genai_client)


async def test_gemini_connection_reset_before_answer(gemini: FakeGemini, genai_client: genai.Client) -> None:
    gemini.script([Fault.connection_reset()])
    with pytest.raises(httpx2.ReadError):
        await _generate(genai_client)


def test_gemini_sync_client(gemini: FakeGemini) -> None:
    client = _genai_client(gemini.base_url)
    assert client.models.generate_content(model=GEMINI_MODEL, contents=QUESTION).text == "Your order ships tomorrow."
    gemini.script([Fault.http_error(429)])
    with pytest.raises(genai_errors.ClientError):
        client.models.generate_content(model=GEMINI_MODEL, contents=QUESTION)
    client.close()


# --- Ollama ---------------------------------------------------------------------------------------------------


async def test_ollama_chat_ok(fake_ollama: FakeOllama, ollama_client: ollama.AsyncClient) -> None:
    response = await _ollama_chat(ollama_client)
    assert response.message.content == "Your order ships tomorrow."
    assert (response.done, response.done_reason) == (True, "stop")
    assert response.prompt_eval_count
    assert response.eval_count
    request = fake_ollama.requests[-1]
    assert (request.method, request.path) == ("POST", "/api/chat")
    assert request.body["stream"] is False
    assert request.body["messages"] == [{"role": "user", "content": QUESTION}]


async def test_ollama_stream_ok(fake_ollama: FakeOllama, ollama_client: ollama.AsyncClient) -> None:
    parts: list[ollama.ChatResponse] = []
    await _ollama_stream(ollama_client, parts)
    assert len(parts) == 5  # four text chunks, then the done line
    assert "".join(part.message.content or "" for part in parts) == "Your order ships tomorrow."
    assert not any(part.done for part in parts[:-1])
    assert (parts[-1].done, parts[-1].done_reason) == (True, "stop")
    assert parts[-1].eval_count
    assert fake_ollama.requests[-1].body["stream"] is True


async def test_ollama_list_models(ollama_client: ollama.AsyncClient) -> None:
    listed = await ollama_client.list()
    assert [model.model for model in listed.models] == ["phi3:latest"]


async def test_ollama_unknown_model_is_404(ollama_client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        await ollama_client.chat(model="llama9", messages=[{"role": "user", "content": QUESTION}])
    assert raised.value.status_code == 404
    assert "not found" in raised.value.error


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("status", [429, 500, 503])
async def test_ollama_http_errors(
    fake_ollama: FakeOllama, ollama_client: ollama.AsyncClient, stream: bool, status: int
) -> None:
    fake_ollama.script([Fault.http_error(status, retry_after=2 if status == 429 else None, message="boom")])
    with pytest.raises(ollama.ResponseError) as raised:
        await _ollama_call(ollama_client, stream)
    assert (raised.value.status_code, raised.value.error) == (status, "boom")
    assert len(fake_ollama.requests) == 1


@pytest.mark.parametrize(
    ("stream", "error_type"), [(False, ConnectionError), (True, httpx.ConnectError)], ids=["unary", "stream"]
)
async def test_ollama_refused(stream: bool, error_type: type[Exception]) -> None:
    async with ollama.AsyncClient(host=refused_url(), timeout=CLIENT_TIMEOUT) as client:
        with pytest.raises(error_type) as raised:
            await _ollama_call(client, stream)
        assert isinstance(raised.value, httpx.HTTPError) == stream  # unary: builtin ConnectionError, not httpx
        with pytest.raises(ConnectionError):
            await client.list()


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_ollama_hang_times_out(fake_ollama: FakeOllama, ollama_client: ollama.AsyncClient, stream: bool) -> None:
    fake_ollama.script([Fault.hang()])
    started = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        await _ollama_call(ollama_client, stream)
    assert CLIENT_TIMEOUT * 0.9 <= time.perf_counter() - started < CLIENT_TIMEOUT + 0.5


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_ollama_slow_first_token(
    fake_ollama: FakeOllama, ollama_client: ollama.AsyncClient, stream: bool
) -> None:
    fake_ollama.script([Fault.slow_first_token(0.2)])
    started = time.perf_counter()
    await _ollama_call(ollama_client, stream)
    assert time.perf_counter() - started >= 0.2


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_ollama_malformed_raises_json_decode_error(
    fake_ollama: FakeOllama, ollama_client: ollama.AsyncClient, stream: bool
) -> None:
    fake_ollama.script([Fault.malformed(after_chunks=1)])
    received: list[ollama.ChatResponse] = []
    with pytest.raises(json.JSONDecodeError):
        await (_ollama_stream(ollama_client, received) if stream else _ollama_chat(ollama_client))
    assert len(received) == (1 if stream else 0)


@pytest.mark.parametrize("fault", [Fault.empty(), Fault.safety()], ids=["empty", "safety-is-ok"])
async def test_ollama_empty_and_safety(
    fake_ollama: FakeOllama, ollama_client: ollama.AsyncClient, fault: Fault
) -> None:
    fake_ollama.script([fault, fault])
    unary = await _ollama_chat(ollama_client)
    parts: list[ollama.ChatResponse] = []
    await _ollama_stream(ollama_client, parts)
    expected = "" if fault == Fault.empty() else "Your order ships tomorrow."
    assert unary.message.content == expected
    assert "".join(part.message.content or "" for part in parts) == expected
    assert parts[-1].done


@pytest.mark.parametrize(
    ("reset", "error_type"), [(False, httpx.RemoteProtocolError), (True, httpx.ReadError)], ids=["fin", "rst"]
)
async def test_ollama_stream_cut(
    fake_ollama: FakeOllama, ollama_client: ollama.AsyncClient, reset: bool, error_type: type[Exception]
) -> None:
    fake_ollama.script([Fault.stream_cut(after_chunks=2, reset=reset)])
    received: list[ollama.ChatResponse] = []
    with pytest.raises(error_type):
        await _ollama_stream(ollama_client, received)
    assert len(received) == 2
    assert not any(part.done for part in received)


async def test_ollama_connection_reset_before_answer(
    fake_ollama: FakeOllama, ollama_client: ollama.AsyncClient
) -> None:
    fake_ollama.script([Fault.connection_reset()])
    with pytest.raises(httpx.ReadError):
        await _ollama_chat(ollama_client)


# --- TCP proxy ------------------------------------------------------------------------------------------------


async def test_proxy_passes_through(redis_client: aioredis.Redis) -> None:
    assert await redis_client.ping()
    await redis_client.set("helpline:fakes:proxy", "1", ex=5)
    assert await redis_client.get("helpline:fakes:proxy") == b"1"


async def test_proxy_latency_delays_each_round_trip(proxy: TcpProxy, redis_client: aioredis.Redis) -> None:
    await redis_client.ping()  # connect outside the measurement
    proxy.add_latency(0.1)
    started = time.perf_counter()
    await redis_client.ping()
    assert time.perf_counter() - started >= 0.1
    assert proxy.mode is ProxyMode.LATENCY


async def test_proxy_cut_fails_fast_then_heals(proxy: TcpProxy, redis_client: aioredis.Redis) -> None:
    await redis_client.ping()
    proxy.cut()
    started = time.perf_counter()
    with pytest.raises(redis.exceptions.ConnectionError):
        await redis_client.ping()  # the open connection was reset
    with pytest.raises(redis.exceptions.ConnectionError):
        await redis_client.ping()  # and a new one is reset on accept
    assert time.perf_counter() - started < 0.3
    proxy.pass_through()
    assert await redis_client.ping()


async def test_proxy_blackhole_times_out(proxy: TcpProxy, redis_client: aioredis.Redis) -> None:
    await redis_client.ping()
    proxy.blackhole()
    started = time.perf_counter()
    with pytest.raises(redis.exceptions.TimeoutError):
        await redis_client.ping()
    assert CLIENT_TIMEOUT * 0.9 <= time.perf_counter() - started < CLIENT_TIMEOUT + 0.5
    assert proxy.open_connections >= 1  # the socket is held open, nothing answers


async def test_proxy_refuse_closes_the_port(proxy: TcpProxy, redis_client: aioredis.Redis) -> None:
    proxy.refuse()
    with pytest.raises(redis.exceptions.ConnectionError, match="111"):
        await redis_client.ping()
    proxy.set_mode("pass")
    assert await redis_client.ping()


async def test_proxy_stops_fast_with_open_connections(proxy: TcpProxy, redis_client: aioredis.Redis) -> None:
    await redis_client.ping()
    proxy.blackhole()
    started = time.perf_counter()
    proxy.stop()
    assert time.perf_counter() - started < 1.0
