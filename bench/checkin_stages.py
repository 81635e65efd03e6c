"""Where one check-in's time goes: µs per stage, from an in-process run.

The real app (create_app) on an embedded Redis, each check-in handed to the server's direct
path (api/checkin/fast.py ``DirectCheckin.handle``, what ``regionlock serve`` calls for
``POST /v1/checkin``; no sockets but Redis's): every stage's function is wrapped with a timer
for the run (nothing in the service is changed), and the stages are

    auth       the token (TokenCache: the worker's cache, confirmed in the device read)
    validate   the body's JSON and its validation (the compiled check-in validator)
    evidence   IP, GPS, network and SIM -> places (GeoIP, reverse geocoding, MCC)
    read       the device read (one round trip, one script call: record, override, counters,
               token, alias index)
    decide     the engine, the override, building the record and the answer (the rest of
               the check-in service)
    write      the write (one Lua call)
    sign       the Ed25519 signature of the answer
    serialize  the answer's JSON
    framework  the direct path's own work (headers, request id, the log line, metrics): the
               request's total time minus the stages above

Besides, the Redis server's CPU per check-in (INFO cpu, over the timed run): what the two
round trips cost on the other side.

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


#: A Hong Kong address (the bench's check-ins come from Hong Kong).
PEER = "203.186.10.20"


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

    import service.api.checkin.answer as answer_module
    from bench.bench_http import imeis
    from service.api.checkin.fast import DirectCheckin
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
            direct = DirectCheckin(app)
            headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            rl.tokens.for_checkin(token)  # the worker verified the token once

            def post(i: int):
                answer = direct.handle(headers, body_of(phones[i % devices]), PEER, False)
                return answer[0] if answer is not None else None

            for i in range(300):  # warm-up: scripts, token, GPS tree, connections
                assert post(i) == 200

            timers = _Timers()
            rl.tokens.cached_for_checkin = timers.wrap("auth", rl.tokens.cached_for_checkin)
            direct.load = timers.wrap("validate", direct.load)
            service = rl.checkin
            service.evidence.gather = timers.wrap("evidence", service.evidence.gather)
            service.devices.snapshot = timers.wrap("read", service.devices.snapshot)
            service.devices.record_checkin = timers.wrap("write", service.devices.record_checkin)
            service.decide = timers.wrap("checkin", service.decide)
            rl.keys.sign = timers.wrap("sign", rl.keys.sign)
            real_orjson = answer_module.orjson

            class _TimedJson:
                dumps = staticmethod(timers.wrap("serialize", real_orjson.dumps))
                OPT_SORT_KEYS = real_orjson.OPT_SORT_KEYS

            answer_module.orjson = _TimedJson
            redis_cpu_before = _redis_cpu(rl.redis)
            try:
                started, cpu_started = time.perf_counter(), time.thread_time()
                for i in range(requests):
                    assert post(i) == 200
                total = time.perf_counter() - started
                cpu_total = time.thread_time() - cpu_started
            finally:
                answer_module.orjson = real_orjson
            redis_cpu = _redis_cpu(rl.redis) - redis_cpu_before
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
    wall["redis_cpu"] = redis_cpu / requests * 1e6
    return wall


def _redis_cpu(client) -> float:
    """Seconds of CPU the Redis server has used (its main thread, user and system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


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
    lines.append(f"    the Redis server's CPU per check-in: {stages['redis_cpu']:.0f} µs")
    lines.append(
        f"    (a bare Flask request through Flask's test client: {stages['bare']:.0f} µs, "
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
