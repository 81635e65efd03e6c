"""An asyncio Redis connection that sends every command queued in one turn of the event loop
as one write, and reads the replies in order (auto-pipelining).

A worker serving check-ins on its event loop (web/rsgi.py, api/checkin/fast.py) has many in
flight at once: their device reads, then their writes, are sent together, one ``send`` and
one wake-up of redis-server for a dozen commands instead of one each. Redis answers a
connection's commands in order, so each reply goes to the oldest waiting call.

Failures are those of the blocking client (redis-py's exception classes, so ``is_outage``
sorts them): a refused or lost connection is a ``ConnectionError``, a reply later than the
timeout a ``TimeoutError`` (the connection is then dropped with every call waiting on it, since
their replies can no longer be matched; nothing is sent again: a write's outcome is then
unknown, as with the blocking client, whose timeouts are not retried either), an error reply
the class redis-py gives it (``LOADING`` a ``BusyLoadingError``…). A script Redis does not know
(``NOSCRIPT``: after a restart or a ``SCRIPT FLUSH``) is loaded and called again.

Only plain TCP and Unix sockets are spoken (``username``/``password``, ``db``); a TLS or
Cluster client returns no connection from :func:`connection_for` and the caller stays on the
blocking client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
import redis
from redis._parsers.base import BaseParser


class CoalescedConnection(asyncio.Protocol):
    """One connection; ``await call(*args)`` sends ARGS with whatever else is queued."""

    def __init__(self, options: dict[str, Any], timeout_s: float):
        self._options = options
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future | None = None
        self._reader = hiredis.Reader(encoding="utf-8", replyError=redis.exceptions.ResponseError)
        self._waiting: deque[asyncio.Future] = deque()
        self._queued: list[bytes] = []
        self._flush_at_end_of_turn = False
        # Commands written and replies read on the current connection (the _connections-th).
        self._connections = self._sent = self._read = 0

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._read += 1
            if not self._waiting:
                self._drop(redis.exceptions.ConnectionError("a reply nobody asked for"))
                return
            waiter = self._waiting.popleft()
            if waiter.done():  # its caller is gone (cancelled): the reply is nobody's
                continue
            if isinstance(reply, redis.exceptions.ResponseError):
                waiter.set_exception(BaseParser.parse_error(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc) -> None:
        current = self._transport
        if current is not None and not current.is_closing():
            return  # the late word of a connection dropped before: the current one is alive
        self._transport = None
        self._fail_all(redis.exceptions.ConnectionError("connection to Redis lost"))

    # --- calls --------------------------------------------------------------------------

    async def call(self, *args: Any) -> Any:
        """Send ARGS (a command and its arguments); its reply."""
        if self._connecting is not None or self._transport is None or self._transport.is_closing():
            await self._connect()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiting.append(waiter)
        self._queued.append(hiredis.pack_command(args))
        if not self._flush_at_end_of_turn:
            self._flush_at_end_of_turn = True
            loop.call_soon(self._flush)
        return await waiter

    async def evalsha(self, sha: str, source: str, keys: list, args: list) -> Any:
        """EVALSHA of the script SOURCE (SHA its digest), loading it first if Redis lacks it."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self.call("SCRIPT", "LOAD", source)
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    def close(self) -> None:
        """Drop the connection (calls waiting on it fail)."""
        self._drop(redis.exceptions.ConnectionError("connection closed"))

    # --- inside ---------------------------------------------------------------------

    def _expire(self, connection: int, sent: int) -> None:
        """The timeout of the commands written up to the SENT-th on the CONNECTION-th
        connection: when their replies have not all been read, Redis is late."""
        if connection == self._connections and self._read < sent:
            # Replies can no longer be matched to calls: drop the connection and every call
            # waiting on it (the next call connects anew).
            self._drop(redis.exceptions.TimeoutError("Timeout reading from Redis"))

    def _flush(self) -> None:
        self._flush_at_end_of_turn = False
        if not self._queued:
            return
        data, commands = b"".join(self._queued), len(self._queued)
        self._queued.clear()
        if self._transport is None or self._transport.is_closing():
            self._fail_all(redis.exceptions.ConnectionError("connection to Redis lost"))
            return
        self._write(data, commands)

    def _write(self, data: bytes, commands: int) -> None:
        """Send DATA (COMMANDS commands) and time their replies from now: the loop runs the
        replies it has read before the timers that are due, so a worker paused longer than the
        timeout (a busy or descheduled machine) fails no call whose reply came meanwhile, and
        a call queued during a long turn of the loop is timed from when it left."""
        self._transport.write(data)
        self._sent += commands
        asyncio.get_running_loop().call_later(
            self._timeout_s, self._expire, self._connections, self._sent
        )

    async def _connect(self) -> None:
        if self._connecting is not None:  # another call is connecting: wait for it
            await asyncio.shield(self._connecting)
            return
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            async with asyncio.timeout(self._timeout_s):
                if "path" in self._options:
                    await loop.create_unix_connection(lambda: self, self._options["path"])
                else:
                    await loop.create_connection(
                        lambda: self, self._options["host"], self._options["port"]
                    )
                self._reader = hiredis.Reader(
                    encoding="utf-8", replyError=redis.exceptions.ResponseError
                )
                self._connections += 1
                self._sent = self._read = 0
                for command in _handshake(self._options):
                    reply = loop.create_future()
                    self._waiting.append(reply)
                    self._write(hiredis.pack_command(command), 1)
                    await reply
            self._connecting.set_result(None)
        except (OSError, TimeoutError) as exc:
            self._drop(None)
            error = redis.exceptions.ConnectionError(f"Error connecting to Redis: {exc}")
            self._connecting.set_exception(error)
            self._connecting.exception()  # retrieved: no "never retrieved" warning
            raise error from None
        except BaseException as exc:
            self._drop(None)
            self._connecting.set_exception(exc)
            self._connecting.exception()
            raise
        finally:
            self._connecting = None

    def _drop(self, error: Exception | None) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        self._queued.clear()
        self._fail_all(error or redis.exceptions.ConnectionError("connection to Redis lost"))

    def _fail_all(self, error: Exception) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)


def _handshake(options: dict[str, Any]) -> list[tuple]:
    """The commands a new connection sends before any call: AUTH, SELECT."""
    commands: list[tuple] = []
    if options.get("password") is not None:
        if options.get("username"):
            commands.append(("AUTH", options["username"], options["password"]))
        else:
            commands.append(("AUTH", options["password"]))
    if options.get("db"):
        commands.append(("SELECT", options["db"]))
    return commands


def connection_for(client, timeout_s: float) -> CoalescedConnection | None:
    """A coalescing connection to the server CLIENT (a blocking redis-py client) talks to, or
    None when it is not one this module speaks (Cluster, TLS, another connection class)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or pool.connection_class not in (
        redis.connection.Connection,
        redis.connection.UnixDomainSocketConnection,
    ):
        return None
    kwargs = pool.connection_kwargs
    if not kwargs.get("decode_responses"):
        return None  # replies are decoded as the service's client decodes them
    wanted = ("host", "port", "path", "username", "password", "db")
    return CoalescedConnection({k: kwargs[k] for k in wanted if k in kwargs}, timeout_s)
