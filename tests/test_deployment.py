"""One deployment, many hosts (SPEC §15): two instances on one Redis, each with its own var
folder, agree on keys, sessions and secrets; calls alternate between them."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis as redis_lib

from service.crypto.secrets import SecretMismatch, create_secret_file, secret_id
from service.crypto.signing import KEK_NAME, verify_with_jwk
from service.store import keys
from service.store.server import EmbeddedRedis, free_port
from service.store.tokens import TokenStore
from tests.conftest import bearer
from tests.imeis import HK, UNKNOWN
from tests.test_console import COOKIE, Console
from tests.test_signing import firmware_verifies

HAVANA = {"lat": 23.1136, "lon": -82.3666}


@pytest.fixture
def shared(tmp_path):
    """What the deployment hands every host: the KEK file, the console's secret key and the
    unlock master key."""
    folder = tmp_path / "handed-out"
    kek = folder / "signing-kek"
    secret = folder / "console-secret-key"
    master = folder / "unlock-master-key"
    create_secret_file(kek)
    create_secret_file(secret)
    create_secret_file(master)
    return {"signing_kek_file": kek, "secret_key_file": secret, "unlock_master_key_file": master}


@pytest.fixture
def hosts(make_app, shared, tmp_path):
    """Two hosts: own var folders (so own default key folders), the same handed-out secrets."""

    def host(name: str, **overrides):
        return make_app(var_dir=tmp_path / name, **{**shared, **overrides})

    return host


def _jwks(client, token) -> dict[str, dict]:
    response = client.get("/v1/keys", headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return {jwk["kid"]: jwk for jwk in response.get_json()["keys"]}


def _checkin(client, token, imei=UNKNOWN, **body) -> dict:
    response = client.post("/v1/checkin", json={"imei": imei, **body}, headers=bearer(token))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_verdicts_of_either_host_verify_with_the_keys_of_the_other(hosts, tokens):
    a, b = hosts("a").test_client(), hosts("b").test_client()
    pairs = [(a, b), (b, a)] * 3
    kids = set()
    for signer, other in pairs:
        answer = _checkin(signer, tokens["device"], gps=HAVANA)
        assert firmware_verifies(answer, _jwks(other, tokens["device"]))
        kids.add(answer["kid"])
    assert len(kids) == 1  # one key for the deployment, not one per host
    assert _jwks(a, tokens["device"]) == _jwks(b, tokens["device"])


def test_rotation_with_zero_grace_under_load_leaves_no_verdict_unverifiable(hosts, tokens, redis):
    # Issue 12.10: verdicts signed with a new key met a /v1/keys that did not list it yet, and
    # with --grace-days 0 the old key was withdrawn while still in use.
    options = {"keys_refresh_s": 0.1, "key_activation_delay_s": 0.6}
    apps = [hosts("a", **options), hosts("b", **options)]
    first_kid = apps[0].extensions["regionlock"].keys.active_kid
    stop = threading.Event()
    failures: list[str] = []
    seen: set[str] = set()

    def load(offset: int) -> None:
        clients = [app.test_client() for app in apps]
        n = offset
        while not stop.is_set():
            signer = clients[n % 2]
            answer = _checkin(signer, tokens["device"], nonce=f"{offset}-{n}")
            seen.add(answer["kid"])
            # What firmware does next: fetch the set (from whichever host the balancer picks).
            for client in clients:
                jwks = _jwks(client, tokens["device"])
                if not firmware_verifies(answer, jwks):
                    failures.append(f"{answer['kid']} not verifiable with {sorted(jwks)}")
            n += 1

    workers = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)
        # Rotation from a third process's point of view: the CLI.
        from service.crypto.secrets import load_shared_secret
        from service.crypto.signing import KeyRing
        from service.store.signing_keys import SigningKeyStore

        settings = apps[0].config["SETTINGS"]
        kek = load_shared_secret(KEK_NAME, settings.key_ring_dir, settings.signing_kek_file)
        new = KeyRing(SigningKeyStore(redis), kek, refresh_s=0.1, activation_delay_s=0.6).rotate(
            grace_days=0
        )
        # Past the activation, and past the old key's unpublication (activation + delay).
        while time.time() < new.active_from + 0.6 + 0.5:
            time.sleep(0.05)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not failures, failures[:5]
    assert seen == {first_kid, new.kid}
    for app in apps:
        assert list(_jwks(app.test_client(), tokens["device"])) == [new.kid]


def test_console_session_started_on_one_host_works_and_ends_on_the_other(hosts, tokens):
    a_app, b_app = hosts("a"), hosts("b")
    a = Console(a_app.test_client())
    assert a.sign_in(tokens["agent"]).status_code == 302
    cookie = a.client.get_cookie(COOKIE, path="/console").value
    b = Console(b_app.test_client())
    b.client.set_cookie(COOKIE, cookie, path="/console")

    assert b.get("/console/devices").status_code == 200
    assert a.get("/console/devices").status_code == 200
    # A form rendered on A is accepted on B (the CSRF secret lives with the session in Redis).
    csrf = a.page_csrf()
    assert b.client.post("/console/sign-out", data={"csrf_token": csrf}).status_code == 302
    response = a.get("/console/devices")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/console/sign-in")


def test_token_revocation_ends_console_sessions_on_every_host(hosts, tokens, redis):
    a_app, b_app = hosts("a"), hosts("b")
    a = Console(a_app.test_client())
    assert a.sign_in(tokens["editor"]).status_code == 302
    b = Console(b_app.test_client())
    b.client.set_cookie(COOKIE, a.client.get_cookie(COOKIE, path="/console").value, path="/console")
    assert b.get("/console/policy").status_code == 200
    TokenStore(redis).revoke("test-editor")
    for console in (b, a):
        assert console.get("/console/policy").status_code == 302
    assert redis.keys("rl:console-session:*") == []


def test_a_host_with_another_kek_refuses_to_start_naming_both_ids(hosts, shared, tmp_path):
    hosts("a")
    stray = tmp_path / "stray-kek"
    create_secret_file(stray)
    with pytest.raises(SecretMismatch) as refused:
        hosts("b", signing_kek_file=stray)
    message = str(refused.value)
    recorded = secret_id(bytes.fromhex(shared["signing_kek_file"].read_text()))
    local = secret_id(bytes.fromhex(stray.read_text()))
    assert recorded in message and local in message and str(stray) in message
    assert KEK_NAME in message


def test_a_host_with_another_unlock_master_key_refuses_to_start_naming_both_ids(
    hosts, shared, tmp_path, redis
):
    hosts("a")
    recorded = secret_id(bytes.fromhex(shared["unlock_master_key_file"].read_text()))
    assert redis.hget(keys.SECRET_IDS, "unlock-master-key") == recorded
    # Without a file handed out, host b makes its own under its keys folder: refused.
    with pytest.raises(SecretMismatch) as refused:
        hosts("b", unlock_master_key_file=None)
    made = tmp_path / "b" / "keys" / "unlock-master-key"
    assert made.stat().st_mode & 0o777 == 0o600
    local = secret_id(bytes.fromhex(made.read_text()))
    message = str(refused.value)
    assert recorded in message and local in message and "unlock-master-key" in message


def test_a_host_with_another_console_key_refuses_to_start_naming_both_ids(
    hosts, shared, monkeypatch
):
    hosts("a")
    monkeypatch.setenv("REGIONLOCK_SECRET_KEY", "not-the-deployment-key-at-all")
    with pytest.raises(SecretMismatch) as refused:
        hosts("b", secret_key_file=None)
    recorded = secret_id(bytes.fromhex(shared["secret_key_file"].read_text()))
    assert refused.value.recorded_id == recorded
    assert refused.value.local_id == secret_id(b"not-the-deployment-key-at-all")
    assert recorded in str(refused.value) and "$REGIONLOCK_SECRET_KEY" in str(refused.value)


def test_single_hosts_need_no_set_up_and_agree_through_the_key_folder(make_app, tmp_path, redis):
    # Two processes of one host (same var folder): the files made on first start are shared.
    first = make_app(var_dir=tmp_path / "var")
    second = make_app(var_dir=tmp_path / "var")
    assert first.secret_key == second.secret_key
    assert (tmp_path / "var" / "keys" / KEK_NAME).exists()
    recorded = redis.hgetall(keys.SECRET_IDS)
    assert set(recorded) == {KEK_NAME, "console-secret-key", "unlock-master-key"}


def test_a_mismatch_found_after_an_outage_at_start_up_refuses_to_serve(
    make_app, shared, tmp_path, tokens, caplog
):
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    try:
        make_app(var_dir=tmp_path / "a", redis_url=server.url, **shared)
        TokenStore(redis_lib.Redis.from_url(server.url, decode_responses=True)).create(
            name="fw", role="device"
        )
        server.stop()
        # Host B starts while Redis is away, with a KEK of its own: nothing to compare with yet.
        b = make_app(var_dir=tmp_path / "b", redis_url=server.url)
        server.start()
        caplog.set_level(logging.ERROR)
        client = b.test_client()
        deadline = time.monotonic() + 10
        while not b.extensions["regionlock"].deployment.refused and time.monotonic() < deadline:
            response = client.get("/healthz")
            time.sleep(0.1)
        response = client.post("/v1/checkin", json={"imei": HK}, headers=bearer("rl_x"))
        assert response.status_code == 503
        assert client.get("/console/sign-in").status_code == 503
        assert "refusing to serve" in caplog.text and KEK_NAME in caplog.text
    finally:
        server.stop()


def _serve(port: int, var_dir: Path, redis_url: str, shared: dict) -> subprocess.Popen:
    env = {
        **os.environ,
        "REGIONLOCK_BIND": f"127.0.0.1:{port}",
        "REGIONLOCK_VAR_DIR": str(var_dir),
        "REGIONLOCK_REDIS_URL": redis_url,
        "REGIONLOCK_SIGNING_KEK_FILE": str(shared["signing_kek_file"]),
        "REGIONLOCK_SECRET_KEY_FILE": str(shared["secret_key_file"]),
        "REGIONLOCK_UNLOCK_MASTER_KEY_FILE": str(shared["unlock_master_key_file"]),
        "REGIONLOCK_KEY_ACTIVATION_DELAY_S": "1.5",
        "PROMETHEUS_MULTIPROC_DIR": str(var_dir / "prometheus"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--workers", "1", "--threads", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _http(method: str, url: str, headers: dict | None = None, body: dict | None = None):
    """(status, JSON) of one call, with nothing but the standard library."""
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _wait_ready(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        try:
            if _http("GET", f"{base}/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base} did not start")


def test_two_real_servers_on_one_redis(redis, redis_url, shared, tmp_path):
    device = TokenStore(redis).create(name="fw", role="device")
    servers, bases = [], []
    begun = time.monotonic()
    try:
        for name in ("a", "b"):
            port = free_port()
            servers.append(_serve(port, tmp_path / name, redis_url, shared))
            bases.append(f"http://127.0.0.1:{port}")
        for base, process in zip(bases, servers, strict=True):
            _wait_ready(base, process)
        print(f"ready after {time.monotonic() - begun:.1f} s")
        headers = bearer(device)
        rotated_kid = None
        last_kid: dict[str, str] = {}
        started = time.monotonic()
        for n in range(200):
            signer, other = bases[n % 2], bases[(n + 1) % 2]
            status, answer = _http("POST", f"{signer}/v1/checkin", headers, {"imei": UNKNOWN})
            assert status == 200
            status, jwks = _http("GET", f"{other}/v1/keys", headers)
            assert status == 200
            jwks = jwks["keys"]
            [jwk] = [k for k in jwks if k["kid"] == answer["kid"]]
            assert verify_with_jwk(answer, jwk)
            if n == 5:  # rotate from the command line halfway through
                result = subprocess.run(
                    [sys.executable, "-m", "service", "keys", "rotate", "--grace-days", "0"],
                    env={
                        **os.environ,
                        "REGIONLOCK_REDIS_URL": redis_url,
                        "REGIONLOCK_SIGNING_KEK_FILE": str(shared["signing_kek_file"]),
                        "REGIONLOCK_KEY_ACTIVATION_DELAY_S": "1.5",
                        "REGIONLOCK_VAR_DIR": str(tmp_path / "cli"),
                    },
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert result.returncode == 0, result.stderr
                rotated_kid = result.stdout.strip()
            last_kid[signer] = answer["kid"]
            if rotated_kid and set(last_kid.values()) == {rotated_kid}:
                break  # both hosts sign with the new key (and it verified on the other)
            time.sleep(0.05)
        assert rotated_kid is not None and set(last_kid.values()) == {rotated_kid}
        print(f"alternated {n + 1} check-ins in {time.monotonic() - started:.1f} s")
    finally:
        for process in servers:
            process.terminate()
        for process in servers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr:
                process.stderr.close()


def test_shared_secret_ids_are_the_first_8_hex_digits_of_the_sha256():
    value = bytes(range(32))
    assert secret_id(value) == hashlib.sha256(value).hexdigest()[:8]
    assert re.fullmatch(r"[0-9a-f]{8}", secret_id(value))


def test_a_replaced_console_key_is_accepted_once_its_id_is_forgotten(
    hosts, shared, redis, redis_url, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    from service.cli import main
    from service.store.audit import AuditStore

    hosts("a")
    fresh = tmp_path / "new-console-key"
    create_secret_file(fresh)
    with pytest.raises(SecretMismatch):
        hosts("b", secret_key_file=fresh)
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    runner = CliRunner()
    refused = runner.invoke(main, ["keys", "forget-id", KEK_NAME])
    assert refused.exit_code == 2 and redis.hget(keys.SECRET_IDS, KEK_NAME)
    done = runner.invoke(main, ["keys", "forget-id", "console-secret-key", "--actor", "ops-1"])
    assert done.exit_code == 0, done.output
    hosts("b", secret_key_file=fresh)  # records the new id
    assert redis.hget(keys.SECRET_IDS, "console-secret-key") == secret_id(
        bytes.fromhex(fresh.read_text())
    )
    [entry] = AuditStore(redis).query(action="secrets.forget_id")[0]
    assert entry["actor"] == "ops-1" and entry["detail"] == {"name": "console-secret-key"}
    again = runner.invoke(main, ["keys", "forget-id", "no-such-secret"])
    assert again.exit_code == 2 and len(AuditStore(redis).query(action="secrets.forget_id")[0]) == 1
