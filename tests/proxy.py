"""A TCP proxy on 127.0.0.1 that can hold the server's replies, to force interleavings."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class HoldingProxy:
    """Forward 127.0.0.1:<port> to a server; `hold` queues server→client bytes until `release`.

    Requests still reach the server while replies are held, so a test can let the server
    answer a command, keep that answer away from the client, do something else, and then
    deliver it.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.held_bytes = 0
        self._reply_held = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._blocked = False

    @property
    def url(self) -> str:
        """Redis URL pointing at the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def block(self) -> None:
        """Cut every open connection and refuse new ones until `unblock` (a partition)."""
        self._blocked = True
        for writer in list(self._writers):
            writer.close()

    def unblock(self) -> None:
        """Accept connections again."""
        self._blocked = False

    def hold(self) -> None:
        """Keep replies from reaching clients until `release`."""
        self.held_bytes = 0
        self._reply_held.clear()
        self._flowing.clear()

    def release(self) -> None:
        """Deliver held replies and let later ones flow."""
        self._flowing.set()

    async def wait_reply_held(self, within: float = 5.0) -> None:
        """Wait until the server has answered something that is now being held."""
        await asyncio.wait_for(self._reply_held.wait(), within)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._blocked:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.update((writer, up_writer))
        for coro in (
            self._pump(reader, up_writer, hold=False),
            self._pump(up_reader, writer, hold=True),
        ):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if hold and not self._flowing.is_set():
                    self.held_bytes += len(data)
                    self._reply_held.set()
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()
            self._writers.discard(writer)
