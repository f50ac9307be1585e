"""A TCP proxy with switchable network faults, to put in front of Redis or a database in tests.

Why a proxy rather than stopping the real service: the service is shared by the whole test run, while the proxy
gives one test its own "network" it can slow down, cut or black-hole, and heal again, in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum

from tests.fakes.servers import BackgroundTcpServer, hard_close

_CHUNK = 65536


class ProxyMode(StrEnum):
    """PASS forwards; LATENCY delays every chunk in both directions; CUT resets every connection, current and new;
    BLACKHOLE accepts and keeps sockets open but forwards and answers nothing; REFUSE also closes the listener."""

    PASS = "pass"
    LATENCY = "latency"
    CUT = "cut"
    BLACKHOLE = "blackhole"
    REFUSE = "refuse"


class TcpProxy(BackgroundTcpServer):
    """Listens on 127.0.0.1 (free port unless `port` given) and forwards to `target_host:target_port`.

    Data that arrives while black-holed is dropped, so a connection that lived through BLACKHOLE is garbage for
    its protocol afterwards; clients are expected to time out and reconnect, as they would in production.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        super().__init__(port=port, name="tcp-proxy")
        self.target_host = target_host
        self.target_port = target_port
        self._mode = ProxyMode.PASS
        self._latency = 0.0

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    @property
    def latency(self) -> float:
        return self._latency

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def set_mode(self, mode: ProxyMode | str, latency: float | None = None) -> None:
        """Switch behaviour now; returns once current connections have been dealt with (cut, refused)."""
        mode = ProxyMode(mode)
        if latency is not None:
            self._latency = latency
        if not self.running:
            self._mode = mode
            return
        self._thread.run(self._switch(mode))

    def pass_through(self) -> None:
        self.set_mode(ProxyMode.PASS)

    def add_latency(self, seconds: float) -> None:
        self.set_mode(ProxyMode.LATENCY, latency=seconds)

    def cut(self) -> None:
        self.set_mode(ProxyMode.CUT)

    def blackhole(self) -> None:
        self.set_mode(ProxyMode.BLACKHOLE)

    def refuse(self) -> None:
        self.set_mode(ProxyMode.REFUSE)

    async def _switch(self, mode: ProxyMode) -> None:
        previous, self._mode = self._mode, mode
        if mode in (ProxyMode.CUT, ProxyMode.REFUSE):
            for transport in list(self._transports):
                hard_close(transport)
        if mode is ProxyMode.REFUSE and previous is not ProxyMode.REFUSE:
            await self._close_listener()
        elif mode is not ProxyMode.REFUSE and previous is ProxyMode.REFUSE:
            await self._listen()

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode in (ProxyMode.CUT, ProxyMode.REFUSE):
            hard_close(writer.transport)
            return
        if self._mode is ProxyMode.BLACKHOLE:
            await _swallow(reader)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            hard_close(writer.transport)
            return
        self._transports.add(upstream_writer.transport)
        try:
            await self._relay(reader, writer, upstream_reader, upstream_writer)
        finally:
            self._transports.discard(upstream_writer.transport)
            upstream_writer.transport.close()

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> None:
        """Pump both directions until both reach EOF or either side fails; a failure tears down both."""
        pumps = [
            asyncio.create_task(self._pump(client_reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, client_writer)),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.exception()  # mark retrieved: a reset from either side simply ends the relay
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(_CHUNK):
            if self._mode is ProxyMode.BLACKHOLE:
                continue
            if self._mode is ProxyMode.LATENCY and self._latency > 0:
                await asyncio.sleep(self._latency)
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            with contextlib.suppress(OSError):
                sink.write_eof()


async def _swallow(reader: asyncio.StreamReader) -> None:
    """Read and drop everything so the client's writes never block; answer nothing until it gives up."""
    while await reader.read(_CHUNK):
        pass
