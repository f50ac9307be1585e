"""Shared machinery for the fakes: a loop in a thread, an HTTP/1.1 server on it, and the scripted fault model.

Why a thread with its own event loop: a fake that "hangs" must never block the test's own loop, and sync tests
need a server too. Why raw asyncio + h11 instead of uvicorn for the vendor fakes: fault injection needs things an
ASGI app cannot express (close the socket mid-body, send a TCP reset, never answer yet stop in milliseconds).
`AsgiServer` is still here for running real ASGI apps (Starlette/FastAPI) the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl, urlsplit

import h11
import uvicorn

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
_START_TIMEOUT = 5.0
_STOP_TIMEOUT = 3.0


def free_port() -> int:
    """A port that was free a moment ago; good enough for tests, and it never collides with our own listeners."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        port: int = probe.getsockname()[1]
        return port


def refused_url(scheme: str = "http") -> str:
    """A URL whose port has no listener, so a connect attempt is refused at once (not a timeout)."""
    return f"{scheme}://{LOCALHOST}:{free_port()}"


def hard_close(transport: asyncio.WriteTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer sees ECONNRESET, like a crashed host or a cut network."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class LoopThread:
    """An asyncio event loop running forever in a daemon thread; coroutines are submitted from any thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self._name} is not running")
        return self._loop

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = _START_TIMEOUT) -> T:
        """Run `coro` on the thread's loop and wait for its result from the calling thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Cancel what is left, stop the loop and close it, so no task or socket outlives the fake."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self.run(_cancel_all_tasks(), timeout=_STOP_TIMEOUT)
        with contextlib.suppress(Exception):
            self.run(loop.shutdown_asyncgens(), timeout=_STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_STOP_TIMEOUT)
        if not thread.is_alive():
            loop.close()
        self._loop = None
        self._thread = None


async def _cancel_all_tasks() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class BackgroundTcpServer:
    """A TCP listener on 127.0.0.1 served by its own loop thread; subclasses implement `serve_connection`.

    The port is kept across stop/start so a test can take a dependency down and bring it back at the same address.
    """

    def __init__(self, port: int = 0, name: str = "fake-server") -> None:
        self._port = port
        self._thread = LoopThread(name)
        self._server: asyncio.Server | None = None
        self._started = False
        self._connections: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.WriteTransport] = set()

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("server was never started; no port assigned yet")
        return self._port

    @property
    def running(self) -> bool:
        return self._started

    def start(self) -> Self:
        if self.running:
            return self
        self._thread.start()
        try:
            self._thread.run(self._listen())
        except BaseException:
            self._thread.stop()
            raise
        self._started = True
        return self

    def stop(self) -> None:
        """Close the listener and every open connection (in-flight requests see a reset), then end the thread."""
        if not self.running:
            return
        with contextlib.suppress(Exception):
            self._thread.run(self._close_all(), timeout=_STOP_TIMEOUT)
        self._thread.stop()
        self._server = None
        self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._on_accept, LOCALHOST, self._port, reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._transports.add(writer.transport)
        try:
            await self.serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()
        except asyncio.CancelledError:
            # Only stop() cancels these tasks. Ending quietly matters: asyncio's stream callback would otherwise
            # re-raise the cancellation from task.exception() and log it as an error.
            writer.transport.abort()
        finally:
            self._connections.discard(task)
            self._transports.discard(writer.transport)
            writer.transport.close()

    async def _close_listener(self) -> None:
        """Stop accepting: new connects are refused by the kernel. Open connections are left alone."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def _close_all(self) -> None:
        await self._close_listener()
        for transport in list(self._transports):
            hard_close(transport)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One received request, already fully read; `json_body` is the parsed body, or None when it is not JSON."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json_body(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


class HttpExchange:
    """Writes the answer to one request; also lets a fake misbehave (drop, reset, hang) at any byte."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        self._conn = conn
        self._writer = writer
        self.dropped = False

    async def respond(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        await self.start(status, content_type, {**(headers or {}), "content-length": str(len(body))})
        await self.write(body)
        await self.end()

    async def respond_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        await self.respond(status, json.dumps(payload).encode(), "application/json; charset=utf-8", headers)

    async def start(self, status: int, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        """Send the status line and headers; without content-length h11 uses chunked encoding (streaming)."""
        fields = [("content-type", content_type), *(headers or {}).items()]
        await self._send(h11.Response(status_code=status, headers=fields))

    async def write(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())

    def drop(self, reset: bool = False) -> None:
        """End the connection now, mid-message: FIN by default, TCP RST when `reset`."""
        self.dropped = True
        if reset:
            hard_close(self._writer.transport)
        else:
            self._writer.transport.close()

    async def hang(self) -> None:
        """Never answer; the task is cancelled (and the socket reset) when the server stops."""
        await asyncio.Event().wait()

    async def _send(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()


class HttpServer(BackgroundTcpServer):
    """Minimal HTTP/1.1 server (keep-alive, chunked responses) that hands each request to `handle`."""

    async def handle(self, request: HttpRequest, exchange: HttpExchange) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request = await _read_request(conn, reader)
            if request is None:
                return
            exchange = HttpExchange(conn, writer)
            await self.handle(request, exchange)
            if exchange.dropped or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


async def _read_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(65536))


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> HttpRequest | None:
    """Read one whole request; None when the client closed the connection or spoke broken HTTP."""
    try:
        head = await _read_event(conn, reader)
        if not isinstance(head, h11.Request):
            return None
        body = bytearray()
        while isinstance(event := await _read_event(conn, reader), h11.Data):
            body += event.data
    except h11.RemoteProtocolError:
        return None
    target = urlsplit(head.target.decode("latin-1"))
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
    return HttpRequest(head.method.decode(), target.path, dict(parse_qsl(target.query)), headers, bytes(body))


class FaultKind(StrEnum):
    """What a fake does with one request; the same model for every vendor."""

    OK = "ok"
    HTTP_ERROR = "http_error"
    HANG = "hang"
    SLOW_FIRST_TOKEN = "slow_first_token"
    MALFORMED = "malformed"
    EMPTY = "empty"
    SAFETY = "safety"
    STREAM_CUT = "stream_cut"
    STALL = "stall"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted behaviour. Build with the classmethods; the fields only matter for the kinds that read them."""

    kind: FaultKind = FaultKind.OK
    text: str | None = None  # OK: reply text instead of the server's reply_text
    status: int = 500  # HTTP_ERROR
    retry_after: float | None = None  # HTTP_ERROR: Retry-After header (and Gemini's RetryInfo detail)
    message: str | None = None  # HTTP_ERROR: error message; default is the vendor's usual wording
    delay: float = 0.0  # SLOW_FIRST_TOKEN: seconds before the first byte
    headers_first: bool = False  # SLOW_FIRST_TOKEN, stream only: send headers at once, delay the first chunk
    after_chunks: int = 1  # STREAM_CUT / MALFORMED / STALL (stream): good chunks before the cut / bad chunk / hang
    reset: bool = False  # STREAM_CUT: TCP RST instead of a plain close
    no_candidates: bool = False  # EMPTY (Gemini): no candidates at all instead of one with empty text
    prompt_blocked: bool = True  # SAFETY (Gemini): promptFeedback.blockReason, else finishReason SAFETY

    @classmethod
    def ok(cls, text: str | None = None) -> Fault:
        return cls(FaultKind.OK, text=text)

    @classmethod
    def http_error(cls, status: int, retry_after: float | None = None, message: str | None = None) -> Fault:
        return cls(FaultKind.HTTP_ERROR, status=status, retry_after=retry_after, message=message)

    @classmethod
    def hang(cls) -> Fault:
        return cls(FaultKind.HANG)

    @classmethod
    def slow_first_token(cls, delay: float, headers_first: bool = False) -> Fault:
        return cls(FaultKind.SLOW_FIRST_TOKEN, delay=delay, headers_first=headers_first)

    @classmethod
    def malformed(cls, after_chunks: int = 1) -> Fault:
        return cls(FaultKind.MALFORMED, after_chunks=after_chunks)

    @classmethod
    def empty(cls, no_candidates: bool = False) -> Fault:
        return cls(FaultKind.EMPTY, no_candidates=no_candidates)

    @classmethod
    def safety(cls, prompt_blocked: bool = True) -> Fault:
        return cls(FaultKind.SAFETY, prompt_blocked=prompt_blocked)

    @classmethod
    def stream_cut(cls, after_chunks: int = 1, reset: bool = False) -> Fault:
        return cls(FaultKind.STREAM_CUT, after_chunks=after_chunks, reset=reset)

    @classmethod
    def stall(cls, after_chunks: int = 1) -> Fault:
        """Stream a few chunks, then hang with the connection open (a model stuck mid-reply)."""
        return cls(FaultKind.STALL, after_chunks=after_chunks)

    @classmethod
    def connection_reset(cls) -> Fault:
        """Read the request, then reset the connection without a single response byte (a crash mid-request)."""
        return cls(FaultKind.RESET)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """What a test can assert about a call the SDK made: route, path, parsed JSON body and headers."""

    method: str
    path: str
    body: Any
    headers: dict[str, str] = field(repr=False)
    query: dict[str, str] = field(default_factory=dict)


def split_text(text: str, parts: int) -> list[str]:
    """Cut `text` into at most `parts` non-empty pieces of near-equal length (streamed token chunks)."""
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    pieces, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def retry_after_value(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


class ScriptedHttpServer(HttpServer):
    """An HTTP fake whose next requests follow a script of `Fault`s, then `default`; it records every request.

    Settings (`reply_text`, `chunks`, `chunk_delay`, `default`) are plain attributes a test may change at any time.
    """

    def __init__(self, reply_text: str, port: int = 0, name: str = "fake-http") -> None:
        super().__init__(port=port, name=name)
        self.reply_text = reply_text
        self.chunks = 4
        self.chunk_delay = 0.0
        self.default = Fault.ok()
        self.requests: list[RecordedRequest] = []
        self._script: deque[Fault] = deque()
        self._lock = threading.Lock()

    def script(self, faults: Iterable[Fault]) -> None:
        """Replace the script: the next requests get these faults in order, later ones get `default`."""
        with self._lock:
            self._script = deque(faults)

    def next_fault(self) -> Fault:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._script)

    def reset(self) -> None:
        """Forget the script and the recorded requests (for a server shared between tests)."""
        with self._lock:
            self._script.clear()
        self.requests.clear()
        self.default = Fault.ok()

    async def handle(self, request: HttpRequest, exchange: HttpExchange) -> None:
        """Record, let the vendor reject what the real API would (bad path, key, model), then play the next fault."""
        self.record(request)
        rejection = self.reject(request)
        if rejection is not None:
            status, message = rejection
            await self.send_error(exchange, status, message, None)
            return
        fault = self.next_fault()
        if await self.apply_transport_faults(fault, exchange):
            return
        if fault.kind is FaultKind.HTTP_ERROR:
            await self.send_error(exchange, fault.status, fault.message, fault.retry_after)
            return
        await self.serve(request, exchange, fault)

    def reject(self, request: HttpRequest) -> tuple[int, str | None] | None:
        """(status, message) when the real API would refuse this request whatever the script says."""
        raise NotImplementedError

    async def send_error(
        self, exchange: HttpExchange, status: int, message: str | None, retry_after: float | None
    ) -> None:
        """Answer with the vendor's own error body; `message` None means the vendor's usual wording."""
        raise NotImplementedError

    async def serve(self, request: HttpRequest, exchange: HttpExchange, fault: Fault) -> None:
        """Answer an accepted request according to a non-transport fault (ok, empty, malformed, safety, cut...)."""
        raise NotImplementedError

    def record(self, request: HttpRequest) -> None:
        self.requests.append(
            RecordedRequest(request.method, request.path, request.json_body, request.headers, request.query)
        )

    async def apply_transport_faults(self, fault: Fault, exchange: HttpExchange) -> bool:
        """Faults that look the same for every vendor; True when the request has been dealt with."""
        if fault.kind is FaultKind.HANG:
            await exchange.hang()
            return True
        if fault.kind is FaultKind.RESET:
            exchange.drop(reset=True)
            return True
        if fault.kind is FaultKind.SLOW_FIRST_TOKEN and not fault.headers_first:
            await asyncio.sleep(fault.delay)
        return False

    async def send_whole_json(
        self, exchange: HttpExchange, fault: Fault, payload: Any, malformed: bytes, content_type: str
    ) -> None:
        """A non-streamed JSON answer, or its MALFORMED (`malformed` bytes) / STREAM_CUT (half a body) variants."""
        if fault.kind is FaultKind.MALFORMED:
            await exchange.respond(200, malformed, content_type)
            return
        body = json.dumps(payload).encode()
        if fault.kind is FaultKind.STREAM_CUT:
            await exchange.start(200, content_type, {"content-length": str(len(body))})
            await exchange.write(body[: len(body) // 2])
            exchange.drop(reset=fault.reset)
            return
        await exchange.respond(200, body, content_type)

    async def stream_pieces(self, exchange: HttpExchange, frames: list[bytes], fault: Fault) -> None:
        """Send pre-encoded stream frames with the configured pacing, honouring cut and headers-first faults."""
        for index, frame in enumerate(frames):
            if fault.kind is FaultKind.STREAM_CUT and index >= fault.after_chunks:
                exchange.drop(reset=fault.reset)
                return
            if fault.kind is FaultKind.STALL and index >= fault.after_chunks:
                await exchange.hang()
                return
            if index == 0 and fault.kind is FaultKind.SLOW_FIRST_TOKEN and fault.headers_first:
                await asyncio.sleep(fault.delay)
            elif index > 0 and self.chunk_delay > 0:
                await asyncio.sleep(self.chunk_delay)
            await exchange.write(frame)
        if fault.kind is FaultKind.STREAM_CUT:
            exchange.drop(reset=fault.reset)
            return
        await exchange.end()


class AsgiServer:
    """Run any ASGI app (Starlette, FastAPI) under uvicorn in its own loop thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self._app = app
        self._port = port
        self._thread = LoopThread("asgi-server")
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Future[None] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self._port}"

    def start(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOCALHOST, self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread.start()
        self._thread.run(self._serve(self._server, sock))
        return self

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        """Start serving in the background and return once uvicorn accepts connections."""
        self._serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            if self._serving.done():
                self._serving.result()
                raise RuntimeError("uvicorn exited during startup")
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            self._thread.run(self._wait_serving(), timeout=_STOP_TIMEOUT)
        self._thread.stop()
        self._server = None

    async def _wait_serving(self) -> None:
        if self._serving is not None:
            await self._serving

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
