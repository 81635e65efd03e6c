"""Redis outages (SPEC §4): a bounded 503 with Retry-After, never a guessed verdict and never a
hung worker; recovery by itself once Redis is back, with nothing acknowledged lost."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis as redis_lib

from service.store.server import EmbeddedRedis
from service.store.tokens import TokenStore
from service.web.errors import is_outage
from tests.conftest import bearer
from tests.imeis import HK, UNKNOWN

# Generous: the client gives up after 0.5 s socket timeouts and one retry.
BOUND_S = 10.0


@pytest.fixture
def blackhole():
    """A TCP port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@pytest.fixture
def closed_port():
    """A port nothing listens on (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of this test alone, append-only file on, that the test may stop and restart."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


def _timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _assert_unavailable(response) -> None:
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert response.get_json()["error"]["code"] == "unavailable"


@pytest.mark.parametrize("where", ["blackhole", "closed_port"])
def test_unreachable_redis_is_a_quick_503(make_app, request, where):
    url = request.getfixturevalue(where)
    app = make_app(redis_url=url, redis_timeout_s=0.5)  # the production fail-fast budget
    app.extensions["regionlock"].breaker.pause_s = 60  # stays open for the whole test
    client = app.test_client()
    token = "rl_" + "x" * 43
    response, took = _timed(
        lambda: client.post("/v1/checkin", json={"imei": HK}, headers=bearer(token))
    )
    _assert_unavailable(response)
    assert took < BOUND_S
    ready, took = _timed(lambda: client.get("/readyz"))
    assert ready.status_code == 503 and took < BOUND_S
    # Liveness needs no Redis; /v1 calls now fail fast (the outage breaker is open).
    assert client.get("/healthz").status_code == 200
    # The key set is served from memory, but this worker never read it, nor knew the token.
    response, took = _timed(lambda: client.get("/v1/keys", headers=bearer(token)))
    _assert_unavailable(response)
    assert took < BOUND_S
    assert client.get("/v1/keys").status_code == 401  # no token: no Redis needed to say so


def test_keys_are_served_from_memory_during_an_outage(make_app, private_redis):
    # Issue 12.13: /v1/keys answered 503 during an outage though it could be served from memory.
    store = TokenStore(redis_lib.Redis.from_url(private_redis.url, decode_responses=True))
    device = store.create(name="fw", role="device")
    stranger = store.create(name="never-seen", role="device")
    app = make_app(redis_url=private_redis.url)  # token_cache_s=0: no fresh cache to lean on
    client = app.test_client()
    before = client.get("/v1/keys", headers=bearer(device))
    assert before.status_code == 200

    private_redis.stop()
    for _ in range(3):  # the first call meets the outage, the next ones the open breaker
        during, took = _timed(lambda: client.get("/v1/keys", headers=bearer(device)))
        assert during.status_code == 200 and took < BOUND_S
        assert during.get_json() == before.get_json()
    # A token this worker never verified cannot be checked: the outage's 503, not a 401.
    _assert_unavailable(client.get("/v1/keys", headers=bearer(stranger)))
    assert client.get("/v1/keys", headers=bearer("rl_" + "y" * 43)).status_code == 503
    assert client.get("/v1/keys").status_code == 401
    private_redis.start()


def test_redis_stopped_mid_run_then_back(make_app, private_redis):
    store = TokenStore(redis_lib.Redis.from_url(private_redis.url, decode_responses=True))
    device = store.create(name="fw", role="device")
    agent = store.create(name="agent-1", role="agent")
    auditor = store.create(name="auditor-1", role="auditor")
    # A long token cache: the check-in token is known without Redis, so the first thing to
    # meet the outage is the rate limiter's storage. It must give the same 503.
    app = make_app(redis_url=private_redis.url, token_cache_s=600)
    client = app.test_client()

    assert client.post("/v1/checkin", json={"imei": HK}, headers=bearer(device)).status_code == 200
    unlock = client.post(
        f"/v1/devices/{UNKNOWN}/unlock",
        json={"reason": "investigated", "ticket": "SUP-1"},
        headers=bearer(agent),
    )
    assert unlock.status_code == 201

    private_redis.stop()
    for call in (
        lambda: client.post("/v1/checkin", json={"imei": HK}, headers=bearer(device)),
        lambda: client.post(f"/v1/devices/{HK}/lock", json={"reason": "x"}, headers=bearer(agent)),
        lambda: client.get("/v1/audit", headers=bearer(auditor)),
    ):
        response, took = _timed(call)
        _assert_unavailable(response)
        assert took < BOUND_S
    assert client.get("/readyz").status_code == 503

    private_redis.start()  # same folder, same port
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = client.post("/v1/checkin", json={"imei": HK}, headers=bearer(device))
        if response.status_code == 200:
            break
        time.sleep(0.2)
    assert response.status_code == 200, response.get_json()
    assert client.get("/readyz").status_code == 200

    record = client.get(f"/v1/devices/{UNKNOWN}", headers=bearer(agent)).get_json()
    assert record["override"]["kind"] == "unlock" and record["override"]["ticket"] == "SUP-1"
    entries = client.get(f"/v1/audit?imei={UNKNOWN}", headers=bearer(auditor)).get_json()
    assert [e["action"] for e in entries["entries"]] == ["device.unlock"]
    assert {row["name"] for row in store.list()} == {"fw", "agent-1", "auditor-1"}
    # Nothing was recorded for the refused lock.
    assert client.get(f"/v1/devices/{HK}", headers=bearer(agent)).get_json()["override"] is None


def test_data_survives_a_restart_of_the_embedded_redis(tmp_path: Path):
    """What the service relies on: appendonly on, SIGTERM flushes it."""
    server = EmbeddedRedis(tmp_path / "r", appendonly=True).start()
    try:
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        client.set("rl:probe", "kept")
        client.close()
        server.stop()
        server.start()
        assert redis_lib.Redis.from_url(server.url, decode_responses=True).get("rl:probe") == "kept"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (redis_lib.ConnectionError("refused"), True),
        (redis_lib.TimeoutError("slow"), True),
        (redis_lib.exceptions.BusyLoadingError("loading"), True),
        (redis_lib.exceptions.ReadOnlyError("replica"), True),
        (redis_lib.exceptions.OutOfMemoryError("oom"), True),
        (redis_lib.exceptions.ClusterDownError("down"), True),
        (redis_lib.ResponseError("WRONGTYPE"), False),
    ],
)
def test_only_outages_are_503(exc, outage):
    assert is_outage(exc) is outage


def test_after_an_outage_calls_fail_fast_then_probe_again(make_app, private_redis):
    """Once Redis was found away, /v1 calls answer 503 without trying it for a short pause;
    the first call after the pause tries Redis again."""
    device = TokenStore(redis_lib.Redis.from_url(private_redis.url, decode_responses=True)).create(
        name="fw", role="device"
    )
    app = make_app(redis_url=private_redis.url, token_cache_s=600)
    breaker = app.extensions["regionlock"].breaker
    breaker.pause_s = 30  # long enough that the pause cannot end during the check below
    client = app.test_client()

    def checkin():
        return client.post("/v1/checkin", json={"imei": HK}, headers=bearer(device))

    assert checkin().status_code == 200
    private_redis.stop()
    _assert_unavailable(checkin())
    assert breaker.is_open()
    private_redis.start()
    # Redis is back, but the breaker is open: answered at once, Redis not even asked.
    _assert_unavailable(checkin())
    assert client.get("/v1/openapi.json").status_code == 200
    breaker.pause_s = 0
    breaker.trip()  # a pause of zero: the next call probes
    assert checkin().status_code == 200


def test_a_ready_answer_closes_the_outage_breaker(make_app, private_redis):
    """/readyz always probes Redis for real; when it answers, the worker's breaker closes, so a
    worker that says ready never answers /v1 calls 503 for the rest of its pause."""
    device = TokenStore(redis_lib.Redis.from_url(private_redis.url, decode_responses=True)).create(
        name="fw", role="device"
    )
    app = make_app(redis_url=private_redis.url, token_cache_s=600)
    breaker = app.extensions["regionlock"].breaker
    breaker.pause_s = 30
    client = app.test_client()

    def checkin():
        return client.post("/v1/checkin", json={"imei": HK}, headers=bearer(device))

    private_redis.stop()
    _assert_unavailable(checkin())
    assert client.get("/readyz").status_code == 503
    assert breaker.is_open()  # an unready probe leaves it open
    private_redis.start()
    _assert_unavailable(checkin())
    assert client.get("/readyz").status_code == 200
    assert not breaker.is_open()
    assert checkin().status_code == 200


def test_embedded_redis_does_not_outlive_a_killed_parent(tmp_path: Path):
    """A `regionlock serve` killed with SIGKILL must not leave its redis-server running."""
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from service.store.server import EmbeddedRedis\n"
        f"server = EmbeddedRedis(Path({str(tmp_path / 'r')!r})).start()\n"
        "print(server.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child_pid, signal.SIGKILL)
        raise AssertionError("redis-server outlived its parent")
