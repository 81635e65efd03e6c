"""The RSGI bridge of `regionlock serve` (service/web/rsgi.py): bodies read with a deadline and
a size cap before the app is called, and the WSGI environ built from granian's scope. The
protocol object stands in for granian's (the real server is tested in test_serve.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from flask import Flask, jsonify, request

from service.web.rsgi import RsgiBridge, wsgi_environ


class Headers:
    """granian's header mapping: lower-case names, get_all for repeated ones."""

    def __init__(self, pairs):
        self.pairs = [(k.lower(), v) for k, v in pairs]

    def keys(self):
        return [k for k, _ in self.pairs]

    def get(self, key, default=None):
        return next((v for k, v in self.pairs if k == key), default)

    def get_all(self, key):
        return [v for k, v in self.pairs if k == key]

    def __contains__(self, key):
        return any(k == key for k, _ in self.pairs)


class Scope:
    def __init__(self, method="GET", path="/", query_string="", headers=(), client="10.1.2.3:5555"):
        self.proto = "http"
        self.http_version = "1.1"
        self.server = "127.0.0.1:8080"
        self.client = client
        self.scheme = "http"
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = Headers(headers)
        self.authority = None


class Protocol:
    """A request body that arrives in CHUNKS, DELAY seconds apart; records the response."""

    def __init__(self, chunks=(), delay=0.0):
        self.chunks, self.delay = list(chunks), delay
        self.response = None

    async def __call__(self):
        return b"".join([chunk async for chunk in self])

    async def __aiter__(self):
        for chunk in self.chunks:
            await asyncio.sleep(self.delay)
            yield chunk

    def response_bytes(self, status, headers, body):
        self.response = (status, dict(headers), body)


@pytest.fixture
def echo():
    app = Flask(__name__)

    @app.route("/echo/<path:rest>", methods=["GET", "POST"])
    def echo_view(rest):
        return jsonify(
            rest=rest,
            args=request.args.to_dict(),
            body=request.get_data(as_text=True),
            content_type=request.content_type,
            remote=request.remote_addr,
            cookies=request.cookies.to_dict(),
            forwarded=request.headers.getlist("X-Forwarded-For"),
            host=request.host,
        )

    return app


def _run(bridge, scope, protocol):
    bridge.__rsgi_init__(None)
    try:
        asyncio.run(bridge.__rsgi__(scope, protocol))
    finally:
        bridge.__rsgi_del__(None)
    return protocol.response


def test_the_app_sees_the_request_as_sent(echo):
    body = json.dumps({"imei": "353879234252633"}).encode()
    scope = Scope(
        "POST",
        "/echo/a b/é",
        "x=1&y=2",
        [
            ("Host", "regionlock.test"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-For", "2.2.2.2"),
        ],
        client="[2001:db8::1]:4000",
    )
    status, headers, content = _run(RsgiBridge(echo, 2), scope, Protocol([body[:5], body[5:]]))
    assert status == 200 and headers["Content-Type"] == "application/json"
    seen = json.loads(content)
    assert seen == {
        "rest": "a b/é",
        "args": {"x": "1", "y": "2"},
        "body": body.decode(),
        "content_type": "application/json",
        "remote": "2001:db8::1",
        "cookies": {"a": "1", "b": "2"},
        "forwarded": ["1.1.1.1,2.2.2.2"],
        "host": "regionlock.test",
    }


def test_a_body_too_slow_is_answered_408_without_the_app(echo):
    called = []
    echo.before_request(lambda: called.append(1))
    bridge = RsgiBridge(echo, 1, body_timeout_s=0.2, min_body_rate=1 << 30)
    scope = Scope("POST", "/echo/x", headers=[("Content-Length", "3")])
    status, headers, content = _run(bridge, scope, Protocol([b"a", b"b", b"c"], delay=0.15))
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(content)["error"]["code"] == "request_timeout"
    assert called == []


def test_a_body_too_large_is_answered_413_declared_or_chunked(echo):
    bridge = RsgiBridge(echo, 1, max_body_bytes=10)
    declared = Scope("POST", "/echo/x", headers=[("Content-Length", "11")])
    assert _run(bridge, declared, Protocol([b"x" * 11]))[0] == 413
    chunked = Scope("POST", "/echo/x", headers=[("Transfer-Encoding", "chunked")])
    assert _run(bridge, chunked, Protocol([b"x" * 6, b"x" * 6]))[0] == 413
    fits = Scope("POST", "/echo/x", headers=[("Transfer-Encoding", "chunked")])
    status, _, content = _run(bridge, fits, Protocol([b"x" * 5, b"x" * 5]))
    assert status == 200 and json.loads(content)["body"] == "x" * 10


def test_a_bad_content_length_is_answered_400(echo):
    scope = Scope("POST", "/echo/x", headers=[("Content-Length", "-5")])
    assert _run(RsgiBridge(echo, 1), scope, Protocol())[0] == 400
    scope = Scope("POST", "/echo/x", headers=[("Content-Length", "ten")])
    assert _run(RsgiBridge(echo, 1), scope, Protocol())[0] == 400


def test_environ_follows_pep_3333():
    environ = wsgi_environ(Scope("GET", "/v1/€", headers=[("Accept", "*/*")]), b"")
    assert environ["PATH_INFO"] == "/v1/€".encode().decode("latin-1")
    assert environ["SERVER_NAME"] == "127.0.0.1" and environ["SERVER_PORT"] == "8080"
    assert environ["REMOTE_ADDR"] == "10.1.2.3" and environ["REMOTE_PORT"] == "5555"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1" and environ["CONTENT_LENGTH"] == "0"
    assert environ["HTTP_ACCEPT"] == "*/*" and environ["wsgi.input"].read() == b""


class _Direct:
    """A direct route (as api/checkin/fast.py's): answers bodies starting with "mine"."""

    method, path = "POST", "/echo/direct"

    def __init__(self):
        self.calls = []

    async def handle_async(self, headers, body, peer, secure):
        self.calls.append((headers.get("x-test"), body, peer, secure))
        if body.startswith(b"mine"):
            return 201, [("Content-Type", "text/plain")], b"direct: " + body
        return None


def test_a_direct_route_answers_before_the_app_or_hands_the_request_on(echo):
    route = _Direct()
    bridge = RsgiBridge(echo, 1, direct=[route])
    headers = [("X-Test", "t"), ("Content-Length", "6")]
    mine = _run(bridge, Scope("POST", "/echo/direct", "", headers), Protocol([b"mine!!"]))
    assert mine == (201, {"Content-Type": "text/plain"}, b"direct: mine!!")
    assert route.calls == [("t", b"mine!!", "10.1.2.3", False)]
    other = _run(bridge, Scope("POST", "/echo/direct", "", headers), Protocol([b"yours!"]))
    assert other[0] == 200 and json.loads(other[2])["body"] == "yours!"  # the app answered
    # Another method or path never reaches the route.
    _run(bridge, Scope("GET", "/echo/direct"), Protocol())
    _run(bridge, Scope("POST", "/echo/else", "", headers), Protocol([b"mine!!"]))
    assert len(route.calls) == 2
