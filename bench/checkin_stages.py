"""Where one check-in's time goes: µs per stage, from an in-process run.

The real app (create_app) on an embedded Redis, requests through Flask's test client (no
server, no sockets but Redis's): every stage's function is wrapped with a timer for the run
(nothing in the service is changed), and the stages are

    auth       the token (TokenCache: the worker's cache, confirmed in the device read)
    validate   the body's validation (the check-in schema)
    evidence   IP, GPS, network and SIM -> places (GeoIP, reverse geocoding, MCC)
    read       the device read (one pipelined round trip: record, override, counters, token)
    decide     the engine, the override, building the record and the answer (the rest of
               the check-in service)
    write      the write (one Lua call)
    sign       the Ed25519 signature of the answer
    serialize  the answer's JSON
    framework  Flask, routing, the limiter's filter, logs, metrics: the request's total time
               minus the stages above

    python -m bench.checkin_stages [--requests 3000]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

STAGES = (
    "auth",
    "validate",
    "evidence",
    "read",
    "decide",
    "write",
    "sign",
    "serialize",
    "framework",
)


class _Timers:
    """Wall time and this thread's CPU time per stage (their difference: waiting, mostly on
    Redis's replies, and on the other processes sharing the cores)."""

    def __init__(self):
        self.total = defaultdict(float)
        self.cpu = defaultdict(float)

    def wrap(self, stage: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[stage] += time.perf_counter() - started
                self.cpu[stage] += time.thread_time() - cpu

        return timed


def body_of(imei: str) -> bytes:
    """The benchmark's check-in body (the same as bench_http's wrk script)."""
    return (
        b'{"imei":"%s","sim":{"network":"45400","imsi":"454001234567890"},'
        b'"gps":{"lat":22.3193,"lon":114.1694},"model":"M2101K6G","firmware":"14.0.3"}'
        % imei.encode()
    )


def measure(requests: int = 3000, devices: int = 2000) -> dict[str, float]:
    """µs per check-in of each stage (and ``total``), averaged over REQUESTS check-ins."""
    import redis

    import service.api.checkin.routes as routes
    from bench.bench_http import imeis
    from service.api.checkin.schemas import CheckinSchema
    from service.app import create_app
    from service.store.server import EmbeddedRedis
    from service.store.tokens import TokenStore
    from service.web.logs import configure_logging

    phones = imeis(devices)
    with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as folder:
        with EmbeddedRedis(Path(folder) / "redis", appendonly=False) as server:
            token = TokenStore(redis.Redis.from_url(server.url)).create("stages", "device")
            app = create_app(
                {
                    "redis_url": server.url,
                    "var_dir": Path(folder) / "var",
                    "metrics_dir": Path(folder) / "metrics",  # as under `regionlock serve`
                    "checkin_device_limit": (1_000_000, 60),
                }
            )
            rl = app.extensions["regionlock"]
            # The JSON request log as the server writes it (to stderr there, /dev/null here).
            configure_logging()
            devnull = open(os.devnull, "w")  # noqa: SIM115 (closed below)
            logging.getLogger().handlers[0].setStream(devnull)
            client = app.test_client()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            env = {"REMOTE_ADDR": "203.186.10.20"}

            def post(i: int):
                return client.post(
                    "/v1/checkin",
                    data=body_of(phones[i % devices]),
                    headers=headers,
                    environ_base=env,
                )

            for i in range(300):  # warm-up: scripts, token, GPS tree, connections
                assert post(i).status_code == 200

            timers = _Timers()
            # (``principal``: the token lookup of trees from before issue 17, for a before/after)
            lookup = "for_checkin" if hasattr(rl.tokens, "for_checkin") else "principal"
            setattr(rl.tokens, lookup, timers.wrap("auth", getattr(rl.tokens, lookup)))
            original_load = CheckinSchema.load
            CheckinSchema.load = timers.wrap("validate", original_load)
            service = rl.checkin
            service.evidence.gather = timers.wrap("evidence", service.evidence.gather)
            service.devices.snapshot = timers.wrap("read", service.devices.snapshot)
            service.devices.record_checkin = timers.wrap("write", service.devices.record_checkin)
            service.decide = timers.wrap("checkin", service.decide)
            rl.keys.sign = timers.wrap("sign", rl.keys.sign)
            real_orjson = routes.orjson

            class _TimedJson:
                dumps = staticmethod(timers.wrap("serialize", real_orjson.dumps))
                OPT_SORT_KEYS = real_orjson.OPT_SORT_KEYS

            routes.orjson = _TimedJson
            try:
                started, cpu_started = time.perf_counter(), time.thread_time()
                for i in range(requests):
                    assert post(i).status_code == 200
                total = time.perf_counter() - started
                cpu_total = time.thread_time() - cpu_started
            finally:
                CheckinSchema.load = original_load
                routes.orjson = real_orjson
            rl.policies.stop()
            devnull.close()
    bare = _bare_flask_us(requests, phones)

    def per_request(times: dict, whole: float) -> dict[str, float]:
        us = {name: times[name] / requests * 1e6 for name in times}
        out = {name: us.get(name, 0.0) for name in STAGES}
        out["decide"] = us["checkin"] - us["evidence"] - us["read"] - us["write"]
        out["total"] = whole / requests * 1e6
        out["framework"] = out["total"] - sum(out[name] for name in STAGES if name != "framework")
        return out

    wall = per_request(timers.total, total)
    wall["cpu"] = per_request(timers.cpu, cpu_total)
    wall["bare"] = bare
    return wall


def _bare_flask_us(requests: int, phones: list[str]) -> float:
    """µs per request of bench_http's bare Flask baseline through the same test client."""
    from bench.bare_app import create_bare_app

    client = create_bare_app().test_client()
    headers = {"Content-Type": "application/json"}
    for i in range(300):
        client.post("/v1/checkin", data=body_of(phones[i % len(phones)]), headers=headers)
    started = time.perf_counter()
    for i in range(requests):
        client.post("/v1/checkin", data=body_of(phones[i % len(phones)]), headers=headers)
    return (time.perf_counter() - started) / requests * 1e6


def report(stages: dict[str, float]) -> str:
    """The breakdown as printed lines."""
    cpu = stages["cpu"]
    lines = [
        "  per-stage breakdown of one check-in (in-process, µs per check-in; wall time, and the"
        " CPU time of the worker's thread in it)",
        f"    {'total':10s} {stages['total']:7.0f} µs  {'':6s} cpu {cpu['total']:6.0f} µs",
    ]
    for name in STAGES:
        share = stages[name] / stages["total"] * 100
        lines.append(
            f"    {name:10s} {stages[name]:7.0f} µs  {share:4.1f} %  cpu {cpu[name]:6.0f} µs"
        )
    lines.append(
        f"    (a bare Flask request through the same test client: {stages['bare']:.0f} µs, "
        "the test client's own work included)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    print(report(measure(args.requests)))


if __name__ == "__main__":
    main()
