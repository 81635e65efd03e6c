"""`regionlock serve` itself: start-up checks, slow clients, SIGTERM, and the embedded Redis
restarted when it dies. Each test runs the real command in a subprocess on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis as redis_lib

from service.store.server import free_port
from service.store.tokens import TokenStore
from service.web.errors import OutageBreaker
from tests.conftest import ROOT
from tests.imeis import HK


def test_bad_seed_bundle_stops_start_up_naming_the_path(tmp_path, redis_url):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "10-rules.yaml").write_text(
        "rules:\n  - id: s\n    type: sanctioned_region\n    regions: [CU, XX]\n    signals: [ip]\n"
    )
    env = {
        **os.environ,
        "REGIONLOCK_POLICIES": str(policies),
        "REGIONLOCK_REDIS_URL": redis_url,
        "REGIONLOCK_VAR_DIR": str(tmp_path / "var"),
        "REGIONLOCK_BIND": "127.0.0.1:1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"the seed bundle in {policies} is invalid" in result.stderr
    assert "10-rules.yaml:rules.0.regions.1: unknown country code 'XX'" in result.stderr


# --- the real server -------------------------------------------------------------------


class Served:
    """A running `regionlock serve` (its process, base URL and stderr file)."""

    def __init__(self, tmp_path: Path, redis_url: str | None, *args: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.var = tmp_path / "var"
        env = {
            **os.environ,
            "REGIONLOCK_BIND": f"127.0.0.1:{self.port}",
            "REGIONLOCK_VAR_DIR": str(self.var),
            "REGIONLOCK_POLICIES": str(ROOT / "policies"),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.pop("REGIONLOCK_REDIS_URL", None)
        if redis_url:
            env["REGIONLOCK_REDIS_URL"] = redis_url
        self.stderr = tmp_path / "stderr.log"
        with self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.stderr.read_text()[-2000:]
            if self.call("/healthz")[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError("regionlock serve did not come up")

    def call(self, path: str, token: str | None = None, body: dict | None = None, timeout=5.0):
        """(status, JSON body or None); status None when no answer came within TIMEOUT."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, None
        except OSError:
            return None, None

    def log_entries(self) -> list[dict]:
        return [json.loads(line) for line in self.stderr.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _checkin_head(token: str, length: int) -> bytes:
    return (
        "POST /v1/checkin HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_checkins_answer_while_clients_trickle_and_sigterm_stops_within_5s(
    redis, redis_url, tmp_path
):
    """Slow clients (issue 12.3): 40 connections send their headers one byte a second and 40
    more their body; check-ins keep answering, each within 2 s. Then SIGTERM: requests in
    flight are answered and the server is gone within 5 s, trickling clients or not."""
    token = TokenStore(redis).create(name="fw-trickle", role="device")
    served = Served(tmp_path, redis_url)
    stop = threading.Event()
    sockets: list[tuple[socket.socket, bytes]] = []
    try:
        body = json.dumps({"imei": HK}).encode() + b" " * 100
        for n in range(80):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            if n % 2:  # full headers, then the body byte by byte
                sock.sendall(_checkin_head(token, len(body)))
                sockets.append((sock, body))
            else:  # the headers byte by byte
                sockets.append((sock, _checkin_head(token, len(body))[:-4] + b"X-Pad: " * 40))

        def trickle() -> None:
            for i in range(len(body)):
                for sock, data in sockets:
                    try:
                        sock.send(data[i : i + 1])
                    except OSError:
                        pass
                if stop.wait(1.0):
                    return

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1.5)
        timings = []
        until = time.monotonic() + 7
        while time.monotonic() < until:
            started = time.monotonic()
            status, _ = served.call("/v1/checkin", token, {"imei": HK}, timeout=4)
            timings.append((status, round(time.monotonic() - started, 3)))
            time.sleep(0.2)
        assert all(status == 200 for status, _ in timings), timings
        assert max(seconds for _, seconds in timings) < 2.0, timings

        # Three check-ins in flight (headers and half their body sent) when SIGTERM comes.
        payload = json.dumps({"imei": HK}).encode()
        in_flight = []
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            sock.sendall(_checkin_head(token, len(payload)) + payload[:8])
            in_flight.append(sock)
        time.sleep(0.3)
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        answers = []
        for sock in in_flight:
            sock.sendall(payload[8:])
            answers.append(sock.recv(64).split(b"\r\n", 1)[0])
            sock.close()
        assert answers == [b"HTTP/1.1 200 OK"] * 3
        served.process.wait(timeout=10)
        assert time.monotonic() - signalled < 5.0
        assert served.process.returncode == 0
    finally:
        stop.set()
        for sock, _ in sockets:
            sock.close()
        served.close()
    entries = served.log_entries()  # every line is one JSON object
    assert any(e.get("logger") == "_granian" for e in entries)
    assert token not in served.stderr.read_text()


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_embedded_redis_is_restarted_after_kill_9(tmp_path):
    """Issue 12.6: kill -9 the embedded redis-server under a running `regionlock serve`:
    /readyz says 503 until it is back, check-ins answer again within seconds, nothing written
    before is lost, both events are logged. The restarted server still dies with serve."""
    served = Served(tmp_path, None)
    try:
        redis_dir = served.var / "redis"
        client = redis_lib.Redis.from_url(
            (redis_dir / "redis.url").read_text(), decode_responses=True
        )
        device = TokenStore(client).create(name="fw", role="device")
        agent = TokenStore(client).create(name="alice", role="agent")
        client.close()
        assert served.call("/v1/checkin", device, {"imei": HK})[0] == 200
        status, before = served.call(f"/v1/devices/{HK}", agent)
        assert status == 200 and before["first_seen"]

        old_pid = int((redis_dir / "redis.pid").read_text())
        os.kill(old_pid, signal.SIGKILL)
        killed = time.monotonic()
        readiness = []
        while time.monotonic() - killed < 15:
            readiness.append(served.call("/readyz")[0])
            if served.call("/v1/checkin", device, {"imei": HK})[0] == 200:
                break
            time.sleep(0.1)
        back_after = time.monotonic() - killed
        assert readiness[0] == 503, readiness
        assert back_after < 8, (back_after, readiness)
        # A worker that met the outage answers /v1 calls 503 at once for the outage breaker's
        # pause after it last tripped (by design: docs/performance.md), unless a /readyz
        # answer closed it; no worker tripped after the 200 above, so one pause later every
        # worker serves again (each reconnects on its own first call).
        time.sleep(OutageBreaker().pause_s + 0.2)
        deadline = time.monotonic() + 3
        while served.call("/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [served.call("/readyz")[0] for _ in range(4)] == [200] * 4
        new_pid = int((redis_dir / "redis.pid").read_text())
        assert new_pid != old_pid and _alive(new_pid)
        status, after = served.call(f"/v1/devices/{HK}", agent)
        assert status == 200 and after["first_seen"] == before["first_seen"]

        deadline = time.monotonic() + 5  # the supervisor polls PING: it may log a bit later
        while time.monotonic() < deadline:
            messages = {
                e["msg"]: e for e in served.log_entries() if e.get("logger") == "regionlock.redis"
            }
            if "embedded redis-server restarted" in messages:
                break
            time.sleep(0.1)
        assert messages["embedded redis-server exited"]["pid"] == old_pid
        assert messages["embedded redis-server exited"]["exit_code"] == -9
        assert messages["embedded redis-server restarted"]["pid"] == new_pid

        # kill -9 of serve itself: the restarted Redis and the workers do not outlive it.
        workers = _children(served.process.pid) - {new_pid}
        assert workers
        served.process.kill()
        served.process.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers | {new_pid}):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers | {new_pid})
    finally:
        served.close()


def test_a_worker_that_cannot_stop_gracefully_dies_with_a_killed_serve(tmp_path):
    """kill -9 of `regionlock serve` takes its workers with it even when one could not run a
    graceful stop (here: stopped with SIGSTOP, so a SIGTERM would stay pending for ever; the
    same as a SIGTERM lost before the worker's handlers exist, or a stop that hangs with no
    master left to kill it)."""
    served = Served(tmp_path, None)
    stopped: set[int] = set()
    try:
        redis_pid = int((served.var / "redis" / "redis.pid").read_text())
        workers = _children(served.process.pid) - {redis_pid}
        assert len(workers) >= 2
        stopped = {min(workers)}
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        served.process.kill()
        served.process.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers | {redis_pid}):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers | {redis_pid})
    finally:
        for pid in stopped:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        served.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_serve_runs_simulation_jobs_in_its_own_worker_which_dies_with_it(
    redis, redis_url, tmp_path
):
    """SPEC §12.5: `regionlock serve` starts one job worker (a child process): a job posted to
    the API is done without any other command, and the worker is gone with serve."""
    from tests.fleet import load_fleet, sanctioning_russia

    load_fleet(redis, 300, 30)
    token = TokenStore(redis).create(name="editor-jobs", role="editor")
    served = Served(tmp_path, redis_url)
    try:
        workers = [pid for pid in _children(served.process.pid) if " worker" in _cmdline(pid)]
        deadline = time.monotonic() + 10
        while not workers and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = [p for p in _children(served.process.pid) if " worker" in _cmdline(p)]
        assert len(workers) == 1
        status, body = served.call(
            "/v1/policy/simulations", token, {"bundle": sanctioning_russia()}
        )
        assert status == 202
        deadline = time.monotonic() + 60
        job = None
        while time.monotonic() < deadline:
            _, job = served.call(f"/v1/policy/simulations/{body['id']}", token)
            if job["state"] == "done":
                break
            time.sleep(0.3)
        assert job["state"] == "done" and job["report"]["changes"] == {"allow->lock": 30}
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(workers[0]):
            time.sleep(0.1)
        assert not _alive(workers[0])
    finally:
        served.close()
