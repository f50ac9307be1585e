"""Write-behind batches for an SQLite file, written by a process of their own.

Why a process, not a thread: a thread of the server's process shares its GIL. While the writing thread binds a
batch's rows it holds the GIL, and every time the event loop lets go of it (each wait for the network) the thread
may take it, so the loop waits to get it back: measured with bench.ab (the Redis setup, 6 alternating rounds, the
same build with and without its conversation writes), the writes cost a cached answer about 30 µs of the event
loop's CPU and 15 % of its throughput (0.46 against 0.54 of `/healthz`), while the same writes made at the same
rate by another process, during the same rounds, cost the server nothing measurable. Here the server only packs
each batch (about 1.5 µs a cached answer) and sends it down a pipe; the process binds and writes it.

Protocol: on the child's stdin, one frame a batch (8 bytes of length, then a pickle of ``(number, idempotent,
sessions, exchanges)``: rows as tuples, see ``repositories.write_rows``); the child writes it in one transaction
and answers one line, ``ok <number>`` or ``error <number> <type>`` (only the exception's type: its text could
quote a shopper's message), on a copy of its stdout made before anything is imported (its fd 1 then points at
stderr, so nothing printed by accident can pass for an answer; an answer that is not the one expected is treated as
the process dying). End of stdin: the child exits, which is how the server's shutdown lets it go once the last
batch is answered; a server that dies closes the pipe just the same. The child runs in a session of its own and
ignores SIGINT and SIGTERM, which a terminal or a service manager sends to the whole process group, so it does not
die before the server has handed it the last batch. Pickle is safe here: the only writer of the pipe is the server
that started the process.

A batch whose answer never came (the process died, or the wait was cancelled) may or may not be in, and stays so
until a batch is answered ``ok``: until then every batch (the write-behind writer's retry makes it the same one)
is written with ``ON CONFLICT DO NOTHING``, so a retry of a batch that had in fact been committed neither fails
for ever on its unique ids nor writes a row twice, even when a retry in between was refused (a lock, a full disk).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger(__name__)

HEADER = 8  # bytes of a frame's length
# Where this very package was found: the child imports it from there whatever put it on the server's path (an
# install, PYTHONPATH, a test's sys.path): first on the child's path when it is not there already.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# The child's first steps, before any import: ignore the signals sent to a whole process group, keep its stdout for
# the answers and point fd 1 at stderr, find the package, write. Run with -P: the working directory is not on its
# path (a pickle.py there would shadow the real one in the child only).
BOOT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); answers = os.dup(1); os.dup2(2, 1); "
    "sys.argv[1] in sys.path or sys.path.insert(0, sys.argv[1]); "
    "from helpline.store.sqlite_writer import main; main(sys.argv[2], answers)"
)
CLOSE_TIMEOUT_S = 30.0  # shutdown waits this long for the process to exit once its input has ended, then kills


class WritingProcessError(RuntimeError):
    """A batch the writing process refused (and rolled back), or could not answer for (it died)."""


class WritingProcess:
    """The server's side: starts the process on the first batch (and again if it dies), sends batches one at a
    time, and raises :class:`WritingProcessError` for a batch that is not known to be in, so the caller retries."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._process: asyncio.subprocess.Process | None = None
        self._unsure = False  # a batch got no answer and none has been answered ok since: write idempotently
        self._number = 0  # of the last batch sent: its answer must carry it
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The writing process's, while it runs (None before the first batch, after ``close``, once it has ended)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def write(self, sessions: Sequence[tuple[Any, ...]], exchanges: Sequence[tuple[Any, ...]]) -> None:
        """Return once the rows are committed."""
        async with self._lock:
            if self._closed:
                raise WritingProcessError("the writing process is closed")
            process = self._process
            if process is None or process.returncode is not None:  # not started, or ended between batches
                process = await self._start()
            self._number += 1
            number = self._number
            frame = pickle.dumps((number, self._unsure, sessions, exchanges), protocol=pickle.HIGHEST_PROTOCOL)
            stdin, stdout = process.stdin, process.stdout
            assert stdin is not None  # noqa: S101 - both are pipes (see _start)
            assert stdout is not None  # noqa: S101
            try:
                stdin.write(len(frame).to_bytes(HEADER, "big") + frame)
                await stdin.drain()
                answer = await stdout.readline()
            except ConnectionError:  # the pipe broke: the process is gone
                answer = b""
            except BaseException:  # cancelled mid-batch: the answer would answer the next one; start afresh
                self._unsure = True
                self._kill()
                raise
            if answer == f"ok {number}\n".encode():
                self._unsure = False
                return
            refused = f"error {number} ".encode()
            if answer.startswith(refused) and answer.endswith(b"\n"):  # rolled back; uncertainty, if any, stays
                kind = answer[len(refused) : -1].decode("utf-8", "replace")
                log.warning("conversation_batch_refused", error=kind)
                raise WritingProcessError(f"refused: {kind}")
            # No answer (the process died) or not this batch's: its fate is unknown, and the process is not trusted.
            self._unsure = True
            self._kill()
            code = await process.wait()
            log.warning("conversation_writing_process_lost", exit_code=code, answered=bool(answer))
            raise WritingProcessError(f"the writing process ended ({code}) without answering")

    async def close(self) -> None:
        """Once the batch under way is answered (the lock), end the process's input and wait for it to exit; kill it
        after ``CLOSE_TIMEOUT_S``."""
        async with self._lock:
            self._closed = True
            process, self._process = self._process, None
            if process is None:
                return
            assert process.stdin is not None  # noqa: S101
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def _start(self) -> asyncio.subprocess.Process:
        self._process = await asyncio.create_subprocess_exec(
            *command(self._url),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # out of the terminal's process group (POSIX; ignored elsewhere)
        )
        log.info("conversation_writing_process_started", pid=self._process.pid)
        return self._process

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()


def command(database_url: str) -> list[str]:
    """How the server starts the writing process (its stdin and stdout then carry the batches and the answers)."""
    return [sys.executable, "-P", "-c", BOOT, PACKAGE_ROOT, database_url]


def for_database(database_url: str) -> WritingProcess | None:
    """A :class:`WritingProcess` for an SQLite file; None for a server database (its async driver writes from the
    event loop, holding no thread) and for an in-memory SQLite database (another process would open another one)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return WritingProcess(database_url)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    """``size`` bytes, or None at the end of the stream (before or inside them: a server gone mid-frame). A
    buffered reader's ``read`` already waits for all of them unless the stream ends first."""
    data = stream.read(size)
    return data if len(data) == size else None


def main(database_url: str, answers_fd: int) -> None:
    """The child (started by ``BOOT``): write each batch read from stdin, answer each on ``answers_fd``, exit at
    the end of stdin or once the server has gone."""
    import sqlalchemy  # noqa: PLC0415 - the child's own imports: the server's side needs none of them
    from sqlalchemy import event  # noqa: PLC0415

    from helpline.store.db import sqlite_options, sqlite_pragmas  # noqa: PLC0415
    from helpline.store.repositories import write_rows  # noqa: PLC0415

    frames = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(answers_fd, "wb", buffering=0)
    # hide_parameters: an error's text never carries a shopper's message, wherever it might end up.
    url = make_url(database_url).set(drivername="sqlite+pysqlite")
    engine = sqlalchemy.create_engine(url, hide_parameters=True, **sqlite_options())
    event.listen(engine, "connect", sqlite_pragmas)
    try:
        while (header := _read_exactly(frames, HEADER)) is not None:
            frame = _read_exactly(frames, int.from_bytes(header, "big"))
            if frame is None:
                break
            number, idempotent, sessions, exchanges = pickle.loads(frame)  # noqa: S301 - the server that started us
            try:
                with engine.begin() as connection:
                    write_rows(connection, sessions, exchanges, idempotent=idempotent)
            except Exception as error:  # noqa: BLE001 - rolled back; the server retries the batch
                answer = f"error {number} {type(error).__name__}\n"
            else:
                answer = f"ok {number}\n"
            try:
                answers.write(answer.encode())
            except BrokenPipeError:  # the server has gone: so do we
                break
    finally:
        engine.dispose()
