"""HTTP check-in throughput and latency under wrk, against a bare Flask baseline.

Both servers run under gunicorn with the same settings (gthread, workers x threads, preload).
The load is wrk on loopback (32 connections by default), POSTing check-ins for 10,000
different devices (valid IMEIs) from a few client IPs. Prints requests/s, p50 and p99 for
each and the ratio regionlock / baseline. Needs `wrk` (Debian package `wrk`).

    python -m bench.bench_http [--seconds 10] [--connections 32] [--workers 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from stdnum import luhn

from service.store.server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent

WRK_SCRIPT = """
local imeis = {%(imeis)s}
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
request = function()
  n = n + 1
  local imei = imeis[(n %% #imeis) + 1]
  local body = '{"imei":"' .. imei .. '","sim":{"network":"45400","imsi":"454001234567890"},' ..
               '"gps":{"lat":22.3193,"lon":114.1694},"model":"M2101K6G","firmware":"14.0.3"}'
  return wrk.format(nil, "/v1/checkin", nil, body)
end
"""


def imeis(count: int) -> list[str]:
    """COUNT valid IMEIs: half in hk-global's TAC, half unknown devices."""
    out = []
    for i in range(count):
        tac = "35387923" if i % 2 else "49015420"
        body = f"{tac}{i:06d}"
        out.append(body + luhn.calc_check_digit(body))
    return out


def wait_ready(url: str, timeout_s: float = 60) -> None:
    """Wait until URL answers (any status below 500)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def gunicorn(app_spec: str, port: int, workers: int, threads: int, env: dict) -> subprocess.Popen:
    """Start gunicorn with the benchmark's settings."""
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        app_spec,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--preload",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(args, cwd=ROOT, env=env)


def run_wrk(port: int, script: Path, seconds: int, connections: int) -> dict:
    """Run wrk and parse requests/s, p50, p99 and errors."""
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(pct: str) -> float:
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def measure(app_spec, env, token, args, script_dir) -> dict:
    """Serve APP_SPEC, warm it up, load it with wrk, stop it."""
    port = free_port()
    script = Path(script_dir) / f"checkin-{port}.lua"
    script.write_text(
        WRK_SCRIPT % {"imeis": ",".join(f'"{i}"' for i in imeis(10_000)), "token": token}
    )
    server = gunicorn(app_spec, port, args.workers, args.threads, env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        run_wrk(port, script, 2, args.connections)  # warm-up: GPS tree, policy, connections
        return run_wrk(port, script, args.seconds, args.connections)
    finally:
        server.terminate()
        server.wait(30)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench_http: skipped: wrk is not installed (Debian: apt-get install wrk)")
        return
    import redis

    from service.store.tokens import TokenStore

    with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as folder:
        with EmbeddedRedis(Path(folder) / "redis") as server:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            token = TokenStore(client).create("bench", "device")
            env = {
                **os.environ,
                "REGIONLOCK_REDIS_URL": server.url,
                "REGIONLOCK_VAR_DIR": str(Path(folder) / "var"),
                # Counted as in production (same round trip), never reached by the load's
                # 10,000 IMEIs however long it runs.
                "REGIONLOCK_CHECKIN_DEVICE_LIMIT": "1000000/minute",
            }
            base = measure("bench.bare_app:create_bare_app()", env, token, args, folder)
            ours = measure("service.app:create_app()", env, token, args, folder)
            devices = len(list(client.scan_iter("rl:dev:{*}", count=10_000)))
    print(
        f"HTTP check-in, wrk {args.connections} connections, {args.seconds}s, gunicorn "
        f"{args.workers} workers x {args.threads} threads (gthread, preload)"
    )
    for name, row in (("bare Flask (baseline)", base), ("regionlock /v1/checkin", ours)):
        print(
            f"  {name:24s} {row['rps']:9.0f} req/s   p50 {row['p50_ms']:6.2f} ms   "
            f"p99 {row['p99_ms']:6.2f} ms   non-2xx {row['non_2xx']}"
        )
    print(
        f"  ratio regionlock/baseline: {ours['rps'] / base['rps']:.2f} "
        f"(target >= 0.60; p99 target < 25 ms); devices recorded: {devices}"
    )


if __name__ == "__main__":
    main()
