"""Soak test: `regionlock serve` under mixed load while its Redis is restarted once.

Starts its own embedded Redis (append-only file on, in a temporary folder) and
`regionlock serve` on a free loopback port, creates tokens, then for --seconds runs check-ins,
unlocks, locks and policy publishes from several threads. A third of the way in, Redis is
stopped, left down for --outage seconds and started again on the same folder and port.

Afterwards it checks that nothing acknowledged was lost (every override and audit entry
answered with 201 is there, every published version is in the history, every token still
works), that no request got a 5xx other than the documented 503 (with Retry-After), and that
every verdict's signature verifies with the published keys. Prints a summary; exits 1 when a
check fails. Loopback only.

    python -m bench.soak [--seconds 120] [--outage 2] [--workers 2] [--checkin-threads 3]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_lib
from stdnum import luhn

from service.crypto.signing import verify_with_jwk
from service.store.server import EmbeddedRedis, free_port
from service.store.tokens import TokenStore

ROOT = Path(__file__).resolve().parent.parent

# Far above what a few threads send: the soak is about outages, not about 429s.
RATE_LIMITS = ",".join(
    f"{role}=1000000/minute"
    for role in ("device", "agent", "compliance", "editor", "auditor", "admin", "anonymous")
)
PLACES = [
    {"gps": {"lat": 23.1136, "lon": -82.3666}},  # Havana: sanctions lock
    {"gps": {"lat": 48.8566, "lon": 2.3522}},  # Paris
    {"gps": {"lat": 22.3193, "lon": 114.1694}, "sim": {"network": "45400"}},  # Hong Kong
    {"sim": {"network": "310260"}},  # a US network
    {},
]


BUNDLE_FIELDS = ("name", "next_checkin_s", "max_new_lock_ratio", "rules", "distributors")


def imei(n: int, tac: str = "35387923") -> str:
    """A valid IMEI: TAC + 6-digit serial + Luhn digit."""
    body = f"{tac}{n % 1_000_000:06d}"
    return body + luhn.calc_check_digit(body)


@dataclass
class Stats:
    """What every load thread reports, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    checkin_ms: list[float] = field(default_factory=list)
    bad_5xx: list[str] = field(default_factory=list)
    missing_retry_after: int = 0
    connection_errors: int = 0
    bad_signatures: int = 0
    acked_overrides: dict[str, tuple[str, str]] = field(default_factory=dict)
    acked_versions: list[int] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    first_503: float | None = None
    last_503: float | None = None

    def record(self, kind: str, status: int, headers: dict[str, str], took_ms: float) -> None:
        """Count one answer."""
        with self.lock:
            self.statuses[(kind, status)] += 1
            if kind == "checkin" and status == 200:
                self.checkin_ms.append(took_ms)
            if status == 503:
                now = time.monotonic()
                self.first_503 = self.first_503 or now
                self.last_503 = now
                if not headers.get("retry-after", "").isdigit():
                    self.missing_retry_after += 1
            elif status >= 500:
                self.bad_5xx.append(f"{kind} {status}")


class Client:
    """One keep-alive HTTP connection to the server, reopened after errors."""

    def __init__(self, port: int, stats: Stats):
        self.port = port
        self.stats = stats
        self.conn: http.client.HTTPConnection | None = None

    def call(self, kind: str, method: str, path: str, token: str, body=None):
        """(status, parsed body, headers); status 0 when the connection failed."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request(method, path, body=data, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            with self.stats.lock:
                self.stats.connection_errors += 1
            return 0, None, {}
        took_ms = (time.perf_counter() - started) * 1000
        self.stats.record(kind, response.status, answer_headers, took_ms)
        is_json = "json" in answer_headers.get("content-type", "")
        parsed = json.loads(raw) if raw and is_json else None
        return response.status, parsed, answer_headers


def _wait_ready(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("soak: the server did not become ready")


def main(argv: list[str] | None = None) -> int:
    """Run the soak; returns the exit status (0: every check passed)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the load")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds Redis stays down")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--checkin-threads", type=int, default=3, help="check-in threads")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="regionlock-soak-") as folder:
        return _soak(Path(folder), args)


def _soak(folder: Path, args) -> int:
    server_redis = EmbeddedRedis(folder / "redis", appendonly=True).start()
    port = free_port()
    env = {
        **os.environ,
        "REGIONLOCK_REDIS_URL": server_redis.url,
        "REGIONLOCK_BIND": f"127.0.0.1:{port}",
        "REGIONLOCK_VAR_DIR": str(folder / "var"),
        "REGIONLOCK_POLICIES": str(ROOT / "policies"),
        "REGIONLOCK_RATE_LIMITS": RATE_LIMITS,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--workers", str(args.workers)],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        _wait_ready(port, 60)
        store = TokenStore(redis_lib.Redis.from_url(server_redis.url, decode_responses=True))
        tokens = {
            role: store.create(name=f"soak-{role}", role=role)
            for role in ("device", "compliance", "editor", "auditor")
        }
        stats = Stats()
        report = _run_load(port, tokens, stats, server_redis, args)
        problems = _verify(port, tokens, stats)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_redis.stop()
    token_leaks = sum(log_path.read_text().count(t) for t in tokens.values())
    if token_leaks:
        problems.append(f"{token_leaks} token(s) found in the server log")
    _print_summary(stats, report, problems, args)
    return 1 if problems else 0


def _run_load(port: int, tokens: dict[str, str], stats: Stats, server_redis, args) -> dict:
    stop = threading.Event()
    jwks: dict[str, dict] = {}
    jwks_lock = threading.Lock()
    counter = iter(range(10**9))
    counter_lock = threading.Lock()

    def next_n() -> int:
        with counter_lock:
            return next(counter)

    def keys_for(kid: str) -> dict | None:
        with jwks_lock:
            for _ in range(100):  # another worker may still answer 503 just after an outage
                if kid in jwks:
                    break
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request(
                    "GET", "/v1/keys", headers={"Authorization": f"Bearer {tokens['device']}"}
                )
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    time.sleep(0.1)
                    continue
                for jwk in json.loads(body)["keys"]:
                    jwks[jwk["kid"]] = jwk
            return jwks.get(kid)

    def checkins() -> None:
        client = Client(port, stats)
        rng = random.Random()
        while not stop.is_set():
            body = {
                "imei": imei(rng.randrange(50_000), rng.choice(["35387923", "49015420"])),
                "nonce": f"n{rng.getrandbits(48):x}",
                **rng.choice(PLACES),
            }
            status, answer, _ = client.call(
                "checkin", "POST", "/v1/checkin", tokens["device"], body
            )
            if status == 200:
                jwk = keys_for(answer["kid"])
                if (
                    jwk is None
                    or not verify_with_jwk(answer, jwk)
                    or (answer["nonce"] != body["nonce"])
                ):
                    with stats.lock:
                        stats.bad_signatures += 1

    def support() -> None:
        client = Client(port, stats)
        while not stop.is_set():
            n = next_n()
            device = imei(n, "86012345")  # a fresh device per action: its final state is known
            ticket = f"SOAK-{n}"
            if n % 3:
                status, _, _ = client.call(
                    "unlock",
                    "POST",
                    f"/v1/devices/{device}/unlock",
                    tokens["compliance"],
                    {"reason": "soak", "ticket": ticket},
                )
                kind = "unlock"
            else:
                status, _, _ = client.call(
                    "lock",
                    "POST",
                    f"/v1/devices/{device}/lock",
                    tokens["compliance"],
                    {"reason": "soak", "ticket": ticket},
                )
                kind = "lock"
            if status == 201:
                with stats.lock:
                    stats.acked_overrides[device] = (kind, ticket)
            time.sleep(0.01)

    def publisher() -> None:
        client = Client(port, stats)
        n = 0
        while not stop.wait(1.5):
            status, active, _ = client.call("policy.get", "GET", "/v1/policy", tokens["editor"])
            if status != 200:
                continue
            n += 1
            # GET /v1/policy answers the bundle's fields beside the version's metadata.
            bundle = {k: active[k] for k in BUNDLE_FIELDS if k in active}
            status, published, _ = client.call(
                "policy.publish",
                "POST",
                "/v1/policy",
                tokens["editor"],
                {
                    "bundle": bundle,
                    "note": f"soak {n}",
                    "expected_version": active["version"],
                    "force": True,
                },
            )
            if status == 201:
                with stats.lock:
                    stats.acked_versions.append(published["version"])

    def guarded(target):
        # A crashed load thread is a failed soak, not a quietly smaller load.
        def run() -> None:
            try:
                target()
            except Exception as exc:  # reported in the summary
                with stats.lock:
                    stats.crashes.append(f"{target.__name__}: {type(exc).__name__}: {exc}")

        return threading.Thread(target=run, daemon=True)

    threads = [guarded(checkins) for _ in range(args.checkin_threads)]
    threads += [guarded(support), guarded(publisher)]
    started = time.monotonic()
    for thread in threads:
        thread.start()

    report: dict = {}
    time.sleep(args.seconds / 3)
    report["redis_stopped_at"] = time.monotonic() - started
    server_redis.stop()
    time.sleep(args.outage)
    server_redis.start()  # same folder, same port
    restarted = time.monotonic()
    report["redis_down_s"] = restarted - started - report["redis_stopped_at"]
    # Recovery: the first check-in answered 200 after Redis is back.
    probe = Client(port, stats)
    while time.monotonic() - restarted < 30:
        status, _, _ = probe.call(
            "probe", "POST", "/v1/checkin", tokens["device"], {"imei": imei(1)}
        )
        if status == 200:
            break
        time.sleep(0.05)
    report["recovered_after_s"] = time.monotonic() - restarted

    remaining = args.seconds - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    report["elapsed_s"] = time.monotonic() - started
    return report


def _verify(port: int, tokens: dict[str, str], stats: Stats) -> list[str]:
    """Everything acknowledged is still there; every token still works."""
    problems: list[str] = []
    check = Stats()  # verification traffic is not part of the load figures
    client = Client(port, check)
    for device, (kind, ticket) in stats.acked_overrides.items():
        status, record, _ = client.call(
            "verify", "GET", f"/v1/devices/{device}", tokens["compliance"]
        )
        override = (record or {}).get("override") or {}
        if status != 200 or override.get("kind") != kind or override.get("ticket") != ticket:
            problems.append(f"override of {device} ({kind} {ticket}) lost: {status} {override}")
            continue
        status, page, _ = client.call(
            "verify", "GET", f"/v1/audit?imei={device}", tokens["auditor"]
        )
        actions = [e["action"] for e in (page or {}).get("entries", [])]
        if status != 200 or f"device.{kind}" not in actions:
            problems.append(f"audit entry of {device} ({kind}) lost: {status} {actions}")
    status, history, _ = client.call("verify", "GET", "/v1/policy/versions", tokens["editor"])
    known = {v["version"] for v in (history or {}).get("versions", [])} if status == 200 else set()
    lost_versions = sorted(set(stats.acked_versions) - known)
    if lost_versions:
        problems.append(f"published versions lost: {lost_versions}")
    for role, token in tokens.items():
        path, method, body = {
            "device": ("/v1/checkin", "POST", {"imei": imei(2)}),
            "compliance": (f"/v1/devices/{imei(2)}", "GET", None),
            "editor": ("/v1/policy", "GET", None),
            "auditor": ("/v1/audit?limit=1", "GET", None),
        }[role]
        status, _, _ = client.call("verify", method, path, token, body)
        if status != 200:
            problems.append(f"the {role} token no longer works ({status})")
    if stats.bad_5xx:
        problems.append(f"5xx other than 503: {collections.Counter(stats.bad_5xx)}")
    if stats.missing_retry_after:
        problems.append(f"{stats.missing_retry_after} answers of 503 without Retry-After")
    if stats.bad_signatures:
        problems.append(f"{stats.bad_signatures} verdicts failed signature/nonce verification")
    for what, done in (
        ("check-in answered 200", stats.statuses[("checkin", 200)]),
        ("override acknowledged", len(stats.acked_overrides)),
        ("publish acknowledged", len(stats.acked_versions)),
        ("503 during the outage", sum(n for (_, s), n in stats.statuses.items() if s == 503)),
    ):
        if not done:
            problems.append(f"no {what}: the load did not exercise it")
    problems.extend(f"load thread crashed: {crash}" for crash in stats.crashes)
    if stats.connection_errors:
        problems.append(f"{stats.connection_errors} requests got no HTTP answer")
    return problems


def _print_summary(stats: Stats, report: dict, problems: list[str], args) -> None:
    total = sum(stats.statuses.values())
    elapsed = report.get("elapsed_s", args.seconds)
    print(
        f"soak: {elapsed:.0f} s, {args.workers} workers, {args.checkin_threads} check-in "
        f"threads + 1 support + 1 publisher; {total} requests ({total / elapsed:.0f}/s)"
    )
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (kind, status), count in stats.statuses.items():
        by_kind[kind][status] += count
    for kind in sorted(by_kind):
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(by_kind[kind].items()))
        print(f"  {kind:15} {shown}")
    if stats.checkin_ms:
        ordered = sorted(stats.checkin_ms)
        p99 = ordered[int(len(ordered) * 0.99) - 1]
        print(
            f"  check-in latency (200): p50 {statistics.median(ordered):.1f} ms, "
            f"p99 {p99:.1f} ms, max {ordered[-1]:.1f} ms"
        )
    print(
        f"  Redis stopped at {report.get('redis_stopped_at', 0):.1f} s for "
        f"{report.get('redis_down_s', 0):.1f} s; check-ins answered 200 again "
        f"{report.get('recovered_after_s', 0):.2f} s after it was back"
    )
    if stats.first_503 is not None and stats.last_503 is not None:
        print(f"  503 answers spanned {stats.last_503 - stats.first_503:.1f} s")
    print(
        f"  acknowledged: {len(stats.acked_overrides)} overrides (+ audit entries), "
        f"{len(stats.acked_versions)} policy publishes"
    )
    if problems:
        print("FAILED:")
        for problem in problems:
            print(f"  - {problem}")
    else:
        print(
            "OK: nothing acknowledged was lost, every token works, no 5xx but 503, "
            "every verdict verified"
        )


if __name__ == "__main__":
    sys.exit(main())
