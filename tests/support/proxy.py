"""A TCP proxy on 127.0.0.1 between cache instances and a server, to inject network faults.

It forwards bytes both ways and can: hold the server's replies (`hold`/`release`, to force
interleavings or stall clients), cut every connection and refuse new ones (`block`, a
partition), half-close connections (`half_close`: the client reads EOF while its own
writes still reach the server), delay every reply by a fixed latency (`delay_replies`), and
do any of these to the subscriber connections only
(those that sent ``SUBSCRIBE``), so the invalidation bus can be lost while L2 works.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class _Link:
    """One proxied connection: the client side, the server side, and what it is."""

    __slots__ = ("client", "delayed", "subscriber", "tail", "upstream")

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.subscriber = False
        self.tail = b""
        """The last bytes sent upstream while `HoldingProxy.hold_requests` looks for a marker."""
        # (due time, bytes) of server→client data, once the link's replies were delayed.
        self.delayed: asyncio.Queue[tuple[float, bytes]] | None = None

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.close()


class HoldingProxy:
    """Forward 127.0.0.1:<port> to a server; `hold` queues server→client bytes until `release`.

    Requests still reach the server while replies are held, so a test can let the server
    answer a command, keep that answer away from the client, do something else, and then
    deliver it. `hold_requests` does the opposite for one command: it keeps a request
    away from the server (its connection stalls) while other connections flow.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._hold_subscribers = True
        self._hold_commands = True
        self.held_bytes = 0
        self._reply_held = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()
        self._blocked = False
        self._subscribers_blocked = False
        self._reply_delay = 0.0
        self._delay_subscribers = False
        self._request_marker: bytes | None = None
        self._requests_flowing = asyncio.Event()
        self._requests_flowing.set()
        self._request_held = asyncio.Event()
        self.accepted = 0
        """Connections accepted so far (refused ones included)."""

    @property
    def url(self) -> str:
        """Redis URL pointing at the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def open_connections(self) -> int:
        """Connections currently proxied."""
        return len(self._links)

    def block(self) -> None:
        """Cut every open connection and refuse new ones until `unblock` (a partition)."""
        self._blocked = True
        for link in list(self._links):
            link.close()

    def unblock(self) -> None:
        """Accept connections again."""
        self._blocked = False

    def block_subscribers(self) -> None:
        """Cut the subscriber connections, and any that sends SUBSCRIBE, until unblocked."""
        self._subscribers_blocked = True
        for link in list(self._links):
            if link.subscriber:
                link.close()

    def unblock_subscribers(self) -> None:
        """Let SUBSCRIBE through again."""
        self._subscribers_blocked = False

    def half_close(self) -> None:
        """Send EOF to every client (server→client direction closed) and stop forwarding
        replies; the clients' writes still reach the server until they close."""
        for link in list(self._links):
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                if link.client.can_write_eof():
                    link.client.write_eof()

    def hold(self, *, subscribers: bool = True, subscribers_only: bool = False) -> None:
        """Keep replies from reaching clients until `release`.

        ``subscribers=False``: the subscriber connections keep flowing (only command
        replies are held). ``subscribers_only=True``: only subscribers are held (a slow
        subscriber: the proxy stops reading from the server for them).
        """
        self.held_bytes = 0
        self._hold_subscribers = subscribers
        self._hold_commands = not subscribers_only
        self._reply_held.clear()
        self._flowing.clear()

    def hold_requests(self, containing: bytes) -> None:
        """Keep client→server data containing ``containing`` (upper case, e.g. ``b"SCAN"``)
        from the server until `release_requests`; its connection stalls there, the others
        flow."""
        self._request_marker = containing
        self._request_held.clear()
        self._requests_flowing.clear()

    def release_requests(self) -> None:
        """Send the held request on and let later ones through."""
        self._request_marker = None
        self._requests_flowing.set()

    async def wait_request_held(self, within: float = 5.0) -> None:
        """Wait until a request is being held by `hold_requests`."""
        await asyncio.wait_for(self._request_held.wait(), within)

    def delay_replies(self, seconds: float, *, subscribers: bool = False) -> None:
        """Deliver each server→client chunk ``seconds`` after the proxy received it.

        Requests are not delayed: the server executes a command at once and its client
        learns the outcome ``seconds`` later (a slow return path). Replies stay in order,
        and several in flight are each delayed by ``seconds``, not queued behind each
        other. Subscriber connections are delayed only with ``subscribers=True``. ``0``
        ends the delay for data received from then on.
        """
        self._reply_delay = seconds
        self._delay_subscribers = subscribers

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
        self.release_requests()
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._blocked:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()  # the server is down: the client sees the connection reset
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        for coro in (
            self._pump(reader, link, upstream=True),
            self._pump(up_reader, link, upstream=False),
        ):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, link: _Link, *, upstream: bool) -> None:
        """Copy one direction: client→server when ``upstream``, else server→client."""
        writer = link.upstream if upstream else link.client
        try:
            while data := await reader.read(65536):
                if upstream:
                    if b"SUBSCRIBE" in data.upper():
                        link.subscriber = True
                        if self._subscribers_blocked:
                            break
                    marker = self._request_marker
                    if marker is not None:
                        # the last bytes of the previous read too: a marker split across reads
                        seen = link.tail + data.upper()
                        link.tail = seen[-len(marker) :]
                        if marker in seen:
                            self._request_held.set()
                            await self._requests_flowing.wait()
                elif not self._flowing.is_set() and (
                    self._hold_subscribers if link.subscriber else self._hold_commands
                ):
                    self.held_bytes += len(data)
                    self._reply_held.set()
                    await self._flowing.wait()
                if not upstream and link.client.is_closing():
                    break
                if not upstream and (
                    link.delayed is not None
                    or (self._reply_delay and (self._delay_subscribers or not link.subscriber))
                ):
                    self._deliver_later(link, data)
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            pass
        finally:
            link.close()
            self._links.discard(link)

    def _deliver_later(self, link: _Link, data: bytes) -> None:
        """Queue server→client ``data`` for delivery after the current reply delay.

        Once a link has a queue, all its replies go through it (keeping their order).
        """
        loop = asyncio.get_running_loop()
        if link.delayed is None:
            link.delayed = asyncio.Queue()
            task = asyncio.create_task(self._deliver(link, link.delayed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        delay = self._reply_delay if self._delay_subscribers or not link.subscriber else 0.0
        link.delayed.put_nowait((loop.time() + delay, data))

    async def _deliver(self, link: _Link, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())  # the injected latency itself
                if link.client.is_closing():
                    break
                link.client.write(data)
                await link.client.drain()
        except (ConnectionError, OSError, RuntimeError):
            pass
        finally:
            link.close()
            self._links.discard(link)
