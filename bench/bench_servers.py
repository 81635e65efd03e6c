"""Which HTTP server: throughput under wrk, and check-ins while 40 clients trickle.

Serves the bare Flask baseline and the real check-in app under gunicorn (gthread, the old
default), granian's own WSGI interface, and granian with regionlock's RSGI bridge (the
default of `regionlock serve`), each with the same workers x threads. Then, for each server,
40 connections send a request one byte a second (headers, or a body after full headers) while
check-ins are timed. Needs `wrk` (Debian package `wrk`).

    python -m bench.bench_servers [--seconds 8] [--connections 32] [--workers 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.bench_http import WRK_SCRIPT, imeis, run_wrk, wait_ready
from service.store.server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("gunicorn", "granian-wsgi", "granian-rsgi")
APPS = {"bare": "bench.bare_app:create_bare_app", "checkin": "service.app:create_app"}


def start(server: str, app: str, port: int, args, env: dict) -> subprocess.Popen:
    """Serve APP under SERVER on PORT."""
    command = [sys.executable, "-m", "bench.serve_app", APPS[app], "--server", server]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", str(args.workers)]
    command += ["--threads", str(args.threads)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)


def checkin(port: int, token: str, timeout_s: float = 5.0) -> float | None:
    """Seconds one check-in took, None when it failed or timed out."""
    body = json.dumps({"imei": "353879234252633", "sim": {"network": "45400"}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/checkin",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
            return time.monotonic() - started if response.status == 200 else None
    except OSError:
        return None


def trickle(port: int, token: str, what: str, clients: int, seconds: float) -> dict:
    """Check-ins timed for SECONDS while CLIENTS connections trickle WHAT (header or body)."""
    stop = threading.Event()
    head = (
        "POST /v1/checkin HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\n"
    ).encode()
    body = b'{"imei": "353879234252633"}' + b" " * 200

    def one() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                if what == "body":
                    sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
                    slow = body
                else:
                    slow = head + b"X-Slow: " + b"a" * 200
                for byte in slow:
                    if stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    time.sleep(1)
        except OSError:
            return

    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    times: list[float | None] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        times.append(checkin(port, token))
        time.sleep(0.2)
    stop.set()
    answered = [t for t in times if t is not None]
    return {
        "checkins": len(times),
        "failed": len(times) - len(answered),
        "max_ms": round(max(answered) * 1000, 1) if answered else None,
    }


def main(argv: list[str] | None = None) -> None:
    """Run every server and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--trickle-seconds", type=float, default=10.0)
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench_servers: skipped: wrk is not installed (Debian: apt-get install wrk)")
        return
    import redis

    from service.store.tokens import TokenStore

    rows = []
    with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as folder:
        with EmbeddedRedis(Path(folder) / "redis") as server:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            token = TokenStore(client).create("bench", "device")
            env = {
                **os.environ,
                "REGIONLOCK_REDIS_URL": server.url,
                "REGIONLOCK_VAR_DIR": str(Path(folder) / "var"),
            }
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            script = Path(folder) / "checkin.lua"
            script.write_text(
                WRK_SCRIPT % {"imeis": ",".join(f'"{i}"' for i in imeis(10_000)), "token": token}
            )
            for app in args.apps.split(","):
                for name in args.servers.split(","):
                    port = free_port()
                    process = start(name, app, port, args, env)
                    try:
                        wait_ready(f"http://127.0.0.1:{port}/v1/checkin")
                        run_wrk(port, script, 2, args.connections)  # warm-up
                        row = {"app": app, "server": name}
                        row.update(run_wrk(port, script, args.seconds, args.connections))
                        if app == "checkin":
                            for what in ("header", "body"):
                                row[what] = trickle(port, token, what, 40, args.trickle_seconds)
                        rows.append(row)
                    finally:
                        process.terminate()
                        process.wait(30)
    print(
        f"wrk {args.connections} connections, {args.seconds}s; {args.workers} workers x "
        f"{args.threads} threads; trickle: 40 clients, 1 byte/s, check-ins timed for "
        f"{args.trickle_seconds:.0f}s (5 s client timeout)"
    )
    for row in rows:
        line = (
            f"  {row['app']:8s} {row['server']:13s} {row['rps']:8.0f} req/s  "
            f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  non-2xx {row['non_2xx']}"
        )
        for what in ("header", "body"):
            if what in row:
                t = row[what]
                line += f"  | {what} trickle: {t['failed']}/{t['checkins']} failed, "
                line += f"max {t['max_ms']} ms"
        print(line)


if __name__ == "__main__":
    main()
