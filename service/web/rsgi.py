"""Serve a WSGI app (Flask) through granian's RSGI interface, reading bodies asynchronously.

Routes given as ``direct`` (``POST /v1/checkin``: api/checkin/fast.py) are offered the request
first, with its body read, and answer it without the WSGI app, or hand it on (None).

granian's own WSGI interface reads the request body from the Python thread that runs the
app: 40 clients trickling a body one byte a second hold 40 threads and the service stalls,
and granian offers no body read timeout. Here the whole body is read on the worker's event
loop (in Rust, no thread held) within a deadline, and only then is the app called, in a pool
of threads, with the body in memory. A body too slow is answered 408, one larger than
``max_body_bytes`` 413, both without the app. Headers are granian's to time out
(``header_read_timeout``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

log = logging.getLogger("regionlock.request")

_WSGI_BASE = {
    "SCRIPT_NAME": "",
    "wsgi.version": (1, 0),
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    # The body is all there: werkzeug may read it without a Content-Length.
    "wsgi.input_terminated": True,
}
_PROTOCOLS = {"1": "HTTP/1.0", "1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2"}


class BodyTooLarge(Exception):
    """The body is larger than the bridge accepts."""


class RsgiBridge:
    """An RSGI application that runs WSGI_APP in THREADS threads per worker process.

    The body must arrive within ``body_timeout_s`` plus one second per ``min_body_rate``
    bytes declared (so a large upload on a slow link still fits, while a trickle is cut).
    """

    def __init__(
        self,
        wsgi_app: Callable[..., Iterable[bytes]],
        threads: int,
        body_timeout_s: float = 10.0,
        min_body_rate: int = 64 << 10,
        max_body_bytes: int = 64 << 20,
        direct: Iterable = (),
    ):
        self.wsgi_app = wsgi_app
        # (method, path) -> the route: ``await handle_async(headers, body, peer, secure)``
        # answers, or None for the app.
        self.direct = {(route.method, route.path): route.handle_async for route in direct}
        self.threads = threads
        self.body_timeout_s = body_timeout_s
        self.min_body_rate = min_body_rate
        self.max_body_bytes = max_body_bytes
        self._pool: ThreadPoolExecutor | None = None

    # --- RSGI ------------------------------------------------------------------------

    def __rsgi_init__(self, loop) -> None:
        """In each worker, before it serves: the request threads."""
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="request")

    def __rsgi_del__(self, loop) -> None:
        """In each worker, when it stops: let the threads finish what they hold."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def __rsgi__(self, scope, protocol) -> None:
        """One HTTP request: read the body (deadline, size cap), call the app in a thread."""
        started = time.perf_counter()
        declared = scope.headers.get("content-length")
        try:
            length = int(declared) if declared is not None else None
        except ValueError:
            length = -1
        if length is not None and length < 0:
            return self._refuse(protocol, scope, started, 400, "bad_request", "bad Content-Length")
        if length is not None and length > self.max_body_bytes:
            return self._refuse(
                protocol, scope, started, 413, "payload_too_large", "body too large"
            )
        if length == 0 or (length is None and "transfer-encoding" not in scope.headers):
            body = b""
        else:
            budget = length if length is not None else self.max_body_bytes
            try:
                async with asyncio.timeout(self.body_timeout_s + budget / self.min_body_rate):
                    body = await (protocol() if length is not None else self._read_body(protocol))
            except TimeoutError:
                return self._refuse(
                    protocol, scope, started, 408, "request_timeout", "request body too slow"
                )
            except BodyTooLarge:
                return self._refuse(
                    protocol, scope, started, 413, "payload_too_large", "body too large"
                )
            except Exception:  # the client went away mid-body: nobody to answer
                return None
        loop = asyncio.get_running_loop()
        direct = self.direct.get((scope.method, scope.path))
        if direct is not None:
            # On the event loop itself, not in a pool thread: a check-in is CPU and two short
            # Redis calls the loop awaits while it serves others (docs/performance.md,
            # "Check-in speed").
            answer = await direct(
                scope.headers, body, _host_port(scope.client)[0], scope.scheme == "https"
            )
            if answer is not None:
                protocol.response_bytes(*answer)
                return None
        status, headers, content = await loop.run_in_executor(
            self._pool, self._call_app, scope, body
        )
        protocol.response_bytes(status, headers, content)
        return None

    async def _read_body(self, protocol) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in protocol:
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    # --- WSGI ------------------------------------------------------------------------

    def _call_app(self, scope, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run the WSGI app on one request (in a pool thread); its status, headers, body."""
        started: list[Any] = []

        def start_response(status: str, headers, exc_info=None):
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return _no_write

        result = self.wsgi_app(wsgi_environ(scope, body), start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        return int(status.split(" ", 1)[0]), list(headers), content

    def _refuse(self, protocol, scope, started: float, status: int, code: str, message: str):
        """Answer STATUS without calling the app (the connection is closed after it)."""
        body = orjson.dumps({"error": {"code": code, "message": message}})
        protocol.response_bytes(
            status,
            [
                ("content-type", "application/json"),
                ("x-content-type-options", "nosniff"),
                ("cache-control", "no-store"),
                ("connection", "close"),
            ],
            body,
        )
        log.info(
            "request",
            extra={
                "method": scope.method,
                "path": scope.path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the WSGI write() callable is not supported")


def _host_port(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def wsgi_environ(scope, body: bytes) -> dict[str, Any]:
    """The PEP 3333 environ of an RSGI HTTP scope whose body has been read."""
    server_name, server_port = _host_port(scope.server)
    remote_addr, remote_port = _host_port(scope.client)
    environ = dict(_WSGI_BASE)
    environ.update(
        {
            "REQUEST_METHOD": scope.method,
            # WSGI carries the decoded path as latin-1 code points of its bytes.
            "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": _PROTOCOLS.get(scope.http_version, "HTTP/1.1"),
            "REMOTE_ADDR": remote_addr,
            "REMOTE_PORT": remote_port,
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": io.BytesIO(body),
            "CONTENT_LENGTH": str(len(body)),
        }
    )
    headers = scope.headers
    for name in set(headers.keys()):
        if name == "content-length":
            continue
        values = headers.get_all(name)
        if name == "content-type":
            environ["CONTENT_TYPE"] = values[0]
            continue
        joined = "; ".join(values) if name == "cookie" else ",".join(values)
        environ["HTTP_" + name.upper().replace("-", "_")] = joined
    if "HTTP_HOST" not in environ and scope.authority:
        environ["HTTP_HOST"] = scope.authority
    return environ
