"""Overrides under concurrency and slow replies: atomic removal with If-Match (issue 12.5),
writes applied at most once with Idempotency-Key (12.7), overlapping bulk unlocks (12.11).

Real threads against the real Redis; slow replies come from a real TCP proxy between the app
and Redis that holds back chosen replies.
"""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlparse

import orjson
import pytest

from service.devices.overrides import OverrideService, anonymous_operation, named_operation
from service.store import keys
from service.store.audit import AuditStore
from service.store.devices import ANY, DeviceStore
from service.store.tokens import Principal
from tests.conftest import audit_entries, bearer
from tests.imeis import UNKNOWN, UNKNOWN2, imei

AGENT = Principal(name="test-agent", role="agent")


def _actions(redis, action: str, imei: str | None = None) -> list[dict]:
    return [
        f
        for f in audit_entries(redis)
        if f["action"] == action and (imei is None or f["imei"] == imei)
    ]


def _fleet(count: int) -> list[str]:
    return [imei(f"49015420{n:06d}") for n in range(count)]


def _together(count: int, work) -> list:
    """Run WORK(i) in COUNT threads released at the same moment; their results, in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results


# --- 12.5: removals -------------------------------------------------------------------------


def test_concurrent_removals_answer_one_204_and_write_one_entry_each(app, tokens, redis):
    rounds, racers = 20, 8
    for n in range(rounds):
        locked = app.test_client().post(
            f"/v1/devices/{UNKNOWN}/lock", json={"reason": f"r{n}"}, headers=bearer(tokens["agent"])
        )
        assert locked.status_code == 201

        def remove(_i):
            return (
                app.test_client()
                .delete(f"/v1/devices/{UNKNOWN}/override", headers=bearer(tokens["agent"]))
                .status_code
            )

        statuses = _together(racers, remove)
        assert sorted(statuses) == [204] + [404] * (racers - 1), statuses
    removals = _actions(redis, "device.override_removed")
    assert len(removals) == rounds
    assert [orjson.loads(f["detail"])["removed"]["reason"] for f in removals] == [
        f"r{n}" for n in range(rounds)
    ]


def test_concurrent_removals_with_if_match_answer_one_204(app, tokens, redis):
    client = app.test_client()
    locked = client.post(
        f"/v1/devices/{UNKNOWN}/lock", json={"reason": "stolen"}, headers=bearer(tokens["agent"])
    )
    etag = locked.headers["ETag"]

    def remove(_i):
        return (
            app.test_client()
            .delete(
                f"/v1/devices/{UNKNOWN}/override",
                headers={**bearer(tokens["agent"]), "If-Match": etag},
            )
            .status_code
        )

    statuses = _together(8, remove)
    assert sorted(statuses) == [204] + [412] * 7
    assert len(_actions(redis, "device.override_removed")) == 1


def test_removal_with_a_stale_etag_keeps_the_new_lock(client, tokens, redis):
    headers = bearer(tokens["agent"])
    first = client.post(f"/v1/devices/{UNKNOWN}/lock", json={"reason": "old"}, headers=headers)
    seen = client.get(f"/v1/devices/{UNKNOWN}", headers=headers).get_json()["override"]
    assert seen["etag"] == first.headers["ETag"] == first.get_json()["etag"]
    second = client.post(f"/v1/devices/{UNKNOWN}/lock", json={"reason": "new"}, headers=headers)
    assert second.headers["ETag"] != seen["etag"]

    stale = client.delete(
        f"/v1/devices/{UNKNOWN}/override", headers={**headers, "If-Match": seen["etag"]}
    )
    assert stale.status_code == 412
    assert stale.get_json()["error"]["code"] == "precondition_failed"
    assert redis.get(keys.device_override(UNKNOWN)) is not None
    assert _actions(redis, "device.override_removed") == []

    fresh = client.delete(
        f"/v1/devices/{UNKNOWN}/override", headers={**headers, "If-Match": second.headers["ETag"]}
    )
    assert fresh.status_code == 204
    [removed] = _actions(redis, "device.override_removed")
    assert orjson.loads(removed["detail"])["removed"]["reason"] == "new"
    gone = client.delete(
        f"/v1/devices/{UNKNOWN}/override", headers={**headers, "If-Match": second.headers["ETag"]}
    )
    assert gone.status_code == 412


def test_removal_racing_a_new_lock_describes_what_it_removed(app, redis):
    """Whatever the interleaving, the removal's audit entry names the override it removed, and
    the device holds the other one (or none) afterwards."""
    rl = app.extensions["regionlock"]
    service = OverrideService(rl.devices, rl.audit)
    for n in range(30):
        service.lock(UNKNOWN, AGENT, f"old{n}")

        def act(i, n=n):
            if i == 0:
                return service.remove(UNKNOWN, AGENT).status
            service.lock(UNKNOWN, AGENT, f"new{n}")
            return "locked"

        status, _ = _together(2, act)
        removed = [
            orjson.loads(f["detail"])["removed"]["reason"]
            for f in _actions(redis, "device.override_removed")
        ]
        left = rl.devices.override(UNKNOWN)
        if status == "removed":
            # It removed either the old lock (the new one stays) or the new one (none stays).
            assert (removed[-1], left and left.reason) in (
                (f"old{n}", f"new{n}"),
                (f"new{n}", None),
            )
        service.remove(UNKNOWN, AGENT)


# --- 12.7: at most once -----------------------------------------------------------------------


def test_the_same_write_sent_twice_is_applied_once(app, redis):
    """What redis-py does after a lost reply on a broken connection: the same script call again."""
    rl = app.extensions["regionlock"]
    service = OverrideService(rl.devices, rl.audit)
    operation = anonymous_operation()
    first = service.lock(UNKNOWN, AGENT, "stolen", operation=operation)
    again = service.lock(UNKNOWN, AGENT, "stolen", operation=operation)
    assert again.replayed and again.etag == first.etag
    assert len(_actions(redis, "device.lock")) == 1


def test_idempotency_key_replays_lock_unlock_and_removal(client, tokens, redis):
    headers = {**bearer(tokens["agent"]), "Idempotency-Key": "k-lock"}
    first = client.post(f"/v1/devices/{UNKNOWN}/lock", json={"reason": "stolen"}, headers=headers)
    again = client.post(f"/v1/devices/{UNKNOWN}/lock", json={"reason": "stolen"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(_actions(redis, "device.lock")) == 1

    other = client.post(f"/v1/devices/{UNKNOWN}/lock", json={"reason": "lost"}, headers=headers)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.get_json()["error"]["fields"]
    assert len(_actions(redis, "device.lock")) == 1

    unlock_headers = {**bearer(tokens["agent"]), "Idempotency-Key": "k-unlock"}
    body = {"reason": "receipt", "expires_in_s": 3600}
    one = client.post(f"/v1/devices/{UNKNOWN}/unlock", json=body, headers=unlock_headers)
    two = client.post(f"/v1/devices/{UNKNOWN}/unlock", json=body, headers=unlock_headers)
    assert one.status_code == two.status_code == 201 and one.get_json() == two.get_json()
    assert len(_actions(redis, "device.unlock")) == 1

    remove_headers = {**bearer(tokens["agent"]), "Idempotency-Key": "k-remove"}
    assert (
        client.delete(f"/v1/devices/{UNKNOWN}/override", headers=remove_headers).status_code == 204
    )
    replay = client.delete(f"/v1/devices/{UNKNOWN}/override", headers=remove_headers)
    assert replay.status_code == 204 and replay.headers["Idempotent-Replayed"] == "true"
    assert len(_actions(redis, "device.override_removed")) == 1
    # Without the key a second removal is a plain 404.
    assert (
        client.delete(
            f"/v1/devices/{UNKNOWN}/override", headers=bearer(tokens["agent"])
        ).status_code
        == 404
    )


def test_idempotency_keys_are_per_token(client, tokens, redis):
    body = {"reason": "stolen"}
    for role in ("agent", "compliance"):
        headers = {**bearer(tokens[role]), "Idempotency-Key": "same"}
        assert (
            client.post(f"/v1/devices/{UNKNOWN}/lock", json=body, headers=headers).status_code
            == 201
        )
    assert len(_actions(redis, "device.lock")) == 2


@pytest.mark.parametrize("key", ["", "x" * 201, "caf\u00e9"])
def test_bad_idempotency_key_is_a_422_naming_the_header(client, tokens, redis, key):
    response = client.post(
        f"/v1/devices/{UNKNOWN}/lock",
        json={"reason": "stolen"},
        headers={**bearer(tokens["agent"]), "Idempotency-Key": key},
    )
    assert response.status_code == 422
    assert list(response.get_json()["error"]["fields"]) == ["Idempotency-Key"]
    assert redis.get(keys.device_override(UNKNOWN)) is None


def test_openapi_documents_the_headers(client):
    spec = client.get("/v1/openapi.json").get_json()
    paths = spec["paths"]

    def header_names(path, method):
        return {p["name"] for p in paths[path][method].get("parameters", []) if p["in"] == "header"}

    for path, method in (
        ("/v1/devices/{imei}/lock", "post"),
        ("/v1/devices/{imei}/unlock", "post"),
        ("/v1/devices/unlock", "post"),
        ("/v1/devices/{imei}/override", "delete"),
    ):
        assert "Idempotency-Key" in header_names(path, method), path
    assert "If-Match" in header_names("/v1/devices/{imei}/override", "delete")
    assert "412" in paths["/v1/devices/{imei}/override"]["delete"]["responses"]


class SlowReplies:
    """A TCP proxy to Redis that holds back, by DELAY_S, the replies to the next COUNT commands
    whose bytes contain every one of TRIGGER."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.trigger: tuple[bytes, ...] = ()
        self.count = 0
        self.delay_s = 0.0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.generation = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self, *trigger: bytes, count: int, delay_s: float) -> None:
        with self.lock:
            self.trigger, self.count, self.delay_s = trigger, count, delay_s
            self.generation += 1

    def close(self) -> None:
        self.closed = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            held = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, held), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, held), daemon=True).start()

    def _up(self, client, upstream, held) -> None:
        # A command may arrive in several reads (redis-py sends a large argument on its own):
        # the triggers are looked for in all that arrived since hold() was called (or since the
        # last hold began), not in one read.
        window, generation = b"", None
        try:
            while data := client.recv(65536):
                with self.lock:
                    if generation != self.generation:
                        window, generation = b"", self.generation
                    window = (window + data)[-(1 << 20) :]
                    if self.trigger and self.count and all(t in window for t in self.trigger):
                        self.count -= 1
                        window = b""
                        held.set()
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()

    def _down(self, upstream, client, held) -> None:
        try:
            while data := upstream.recv(65536):
                if held.is_set():
                    held.clear()
                    time.sleep(self.delay_s)
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()


@pytest.fixture
def slow(redis_url):
    parsed = urlparse(redis_url)
    proxy = SlowReplies(parsed.hostname, parsed.port)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("held", [1, 2])
def test_a_write_whose_reply_is_late_is_applied_once_and_said_unknown(
    make_app, slow, redis_url, tokens, redis, held
):
    """Issue 12.7: with the reply held back past the client's timeout (once, or also for any
    second sending) the lock answered 201 or 503 and was applied twice. Now: applied once,
    answered 503 "outcome unknown", and the retry with the same key replays the result."""
    db = urlparse(redis_url).path or "/0"
    app = make_app(redis_url=f"redis://127.0.0.1:{slow.port}{db}", redis_timeout_s=1.0)
    client = app.test_client()
    headers = bearer(tokens["agent"])
    # Loads the script, so the held reply is the write's own.
    assert client.post(f"/v1/devices/{UNKNOWN2}/lock", json={"reason": "warm"}, headers=headers)
    slow.hold(b"EVALSHA", b":override", count=held, delay_s=2.0)
    headers = {**headers, "Idempotency-Key": "lock-1"}
    response = client.post(
        f"/v1/devices/{UNKNOWN}/lock", json={"reason": "stolen"}, headers=headers
    )
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "outcome_unknown"
    assert "Idempotency-Key" in error["message"] and "nothing" not in error["message"].lower()
    assert response.headers["Retry-After"]
    time.sleep(2.5)  # the held reply arrives; the breaker closes again
    assert redis.get(keys.device_override(UNKNOWN)) is not None
    assert len(_actions(redis, "device.lock", UNKNOWN)) == 1

    retried = client.post(f"/v1/devices/{UNKNOWN}/lock", json={"reason": "stolen"}, headers=headers)
    assert retried.status_code == 201 and retried.headers["Idempotent-Replayed"] == "true"
    assert retried.get_json()["reason"] == "stolen"
    assert len(_actions(redis, "device.lock", UNKNOWN)) == 1


# --- bulk unlock: 12.7 (resume) and 12.11 (overlap) ----------------------------------------


def test_bulk_unlock_with_a_key_replays_and_resumes(app, client, tokens, redis):
    fleet = _fleet(6)
    body = {"imeis": fleet, "reason": "recall", "ticket": "R-1"}
    headers = {**bearer(tokens["agent"]), "Idempotency-Key": "bulk-1"}
    # A first run cut off after two devices (the process died, the answer was lost...).
    rl = app.extensions["regionlock"]
    from service.devices.overrides import request_fingerprint

    operation = named_operation(
        "test-agent", "bulk-1", request_fingerprint("POST", "/v1/devices/unlock", body)
    )
    rows = OverrideService(rl.devices, rl.audit).bulk_unlock(
        enumerate(fleet, start=1), AGENT, "recall", "R-1", None, operation=operation
    )
    assert [next(rows)["status"], next(rows)["status"]] == ["applied", "applied"]
    rows.close()
    assert len(_actions(redis, "device.bulk_unlock")) == 2

    resumed = client.post("/v1/devices/unlock", json=body, headers=headers)
    assert resumed.status_code == 200
    answer = resumed.get_json()
    assert answer["applied"] == 6 and answer["unchanged"] == 0
    assert [r["imei"] for r in answer["results"]] == fleet
    assert {r["status"] for r in answer["results"]} == {"applied"}
    assert len(_actions(redis, "device.bulk_unlock")) == 6

    replay = client.post("/v1/devices/unlock", json=body, headers=headers)
    assert replay.get_json() == answer and replay.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/devices/unlock", json={**body, "reason": "x"}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.get_json()["error"]["fields"]
    # Without a key, the same IMEIs again change nothing either.
    again = client.post("/v1/devices/unlock", json=body, headers=bearer(tokens["agent"]))
    assert again.get_json()["unchanged"] == 6 and again.get_json()["applied"] == 0
    assert len(_actions(redis, "device.bulk_unlock")) == 6


def test_overlapping_bulk_unlocks_write_one_entry_per_device(app, redis):
    """Issue 12.11: two bulk unlocks over overlapping IMEIs at once wrote duplicate entries."""
    fleet = _fleet(60)
    rl = app.extensions["regionlock"]
    # Both walk the shared devices in the same order, so they reach each one at about the same
    # time; each has devices of its own besides.
    halves = [fleet[:50], fleet[:40] + fleet[50:]]

    def run(i):
        service = OverrideService(DeviceStore(rl.devices.redis), AuditStore(rl.devices.redis))
        return list(service.bulk_unlock(enumerate(halves[i], start=1), AGENT, "recall", "R-2"))

    results = _together(2, run)
    entries = _actions(redis, "device.bulk_unlock")
    assert sorted(f["imei"] for f in entries) == sorted(fleet)
    applied = [r["imei"] for rows in results for r in rows if r["status"] == "applied"]
    assert sorted(applied) == sorted(fleet)
    unchanged = [r["imei"] for rows in results for r in rows if r["status"] == "unchanged"]
    assert sorted(unchanged) == sorted(fleet[:40])


def test_change_override_checks_what_it_replaces(app, redis):
    devices = app.extensions["regionlock"].devices
    service = OverrideService(devices, app.extensions["regionlock"].audit)
    service.lock(UNKNOWN, AGENT, "a")
    seen = devices.override_raw(UNKNOWN)
    service.lock(UNKNOWN, AGENT, "b")
    change = devices.change_override(
        UNKNOWN,
        new=None,
        ttl_s=None,
        expected=seen,
        operation=anonymous_operation(),
        result={},
        audit_fields=None,
    )
    assert change.outcome == "changed" and change.current == devices.override_raw(UNKNOWN)
    assert devices.override(UNKNOWN).reason == "b"
    removed = devices.change_override(
        UNKNOWN,
        new=None,
        ttl_s=None,
        expected=ANY,
        operation=anonymous_operation(),
        result={},
        audit_fields=None,
    )
    assert removed.outcome == "done" and devices.override(UNKNOWN) is None


def test_console_says_the_outcome_is_unknown_and_resending_applies_once(
    make_app, slow, redis_url, tokens, redis
):
    from tests.test_console import Console, _hidden

    db = urlparse(redis_url).path or "/0"
    app = make_app(redis_url=f"redis://127.0.0.1:{slow.port}{db}", redis_timeout_s=1.0)
    agent = Console(app.test_client())
    assert agent.sign_in(tokens["agent"]).status_code == 302
    headers = bearer(tokens["agent"])
    app.test_client().post(f"/v1/devices/{UNKNOWN2}/lock", json={"reason": "w"}, headers=headers)
    review = agent.post(f"/console/devices/{UNKNOWN}/lock", {"reason": "stolen"})
    form = {"reason": "stolen", "step": "confirm"}
    form["operation"] = _hidden(review.get_data(as_text=True), "operation")

    slow.hold(b"EVALSHA", b":override", count=1, delay_s=2.0)
    page = agent.post(f"/console/devices/{UNKNOWN}/lock", form)
    assert page.status_code == 503 and page.headers["Retry-After"]
    shown = page.get_data(as_text=True)
    assert "may or may not have been applied" in shown
    assert "nothing was changed" not in shown.lower()
    time.sleep(2.5)
    assert agent.post(f"/console/devices/{UNKNOWN}/lock", form).status_code == 302
    assert len(_actions(redis, "device.lock", UNKNOWN)) == 1
