"""HTTP check-in throughput and latency under wrk, against bare Flask baselines (issue 17).

Four servers, one after the other in the same run, each loaded by wrk on loopback (32
connections by default) POSTing check-ins for 10,000 different devices (valid IMEIs):

- bare Flask (a JSON endpoint: no auth, no Redis) under gunicorn gthread, workers x threads,
  preload: the ordinary deployment, the issue's fixed baseline;
- bare Flask under the project's default server (granian + the RSGI bridge, bench.serve_app);
- ``POST /v1/checkin`` under ``regionlock serve`` (the default server, as deployed: JSON logs,
  multiprocess metrics), on an embedded Redis;
- ``POST /v1/checkin`` under gunicorn gthread (the same app on the old server, for comparison).

Prints requests/s, p50/p99/p99.9 (wrk's own histogram), non-2xx and socket errors for each, the
two ratios of the issue (check-in / bare Flask under gunicorn; check-in / bare Flask on the
default server), then checks a sample of answers (verdicts expected from where the sample says
it is, every signature verified against GET /v1/keys) and prints a per-stage breakdown of a
check-in's time from an in-process run (bench/checkin_stages.py). Also the CPU each request
cost (the server's processes, redis-server and wrk, from /proc) and the ratios by CPU. With
``--rounds N`` every server is measured N times in turns and the median ratios and p99 are
printed last: on a shared machine a single run moves by ±15 %. Needs `wrk` (Debian package
`wrk`).

    python -m bench.bench_http [--seconds 10] [--connections 32] [--workers 2] [--threads 4]
        [--rounds 1] [--no-gunicorn-checkin] [--no-stages]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
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
done = function(summary, latency, requests)
  io.write(string.format("PERCENTILES %%d %%d %%d\\n", latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9)))
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
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    row = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    }
    # The script's done(): wrk's histogram at 50, 99 and 99.9 % (µs).
    percentiles = re.search(r"^PERCENTILES (\d+) (\d+) (\d+)$", out, re.M)
    if percentiles:
        row["p50_ms"], row["p99_ms"], row["p999_ms"] = (int(n) / 1000 for n in percentiles.groups())
    return row


def granian(app_spec: str, port: int, workers: int, threads: int, env: dict) -> subprocess.Popen:
    """Serve APP_SPEC as the project's default server does (granian + the RSGI bridge)."""
    args = [sys.executable, "-m", "bench.serve_app", app_spec, "--server", "granian-rsgi"]
    args += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads)]
    return subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)


def regionlock_serve(port: int, workers: int, threads: int, env: dict) -> subprocess.Popen:
    """``regionlock serve`` itself (granian, JSON request logs to stderr: here /dev/null)."""
    args = [sys.executable, "-m", "service", "serve", "--workers", str(workers)]
    args += ["--threads", str(threads)]
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env={**env, "REGIONLOCK_BIND": f"127.0.0.1:{port}"},
        stderr=subprocess.DEVNULL,
    )


def measure(start, token: str, args, script_dir) -> dict:
    """Start a server with START(port), warm it up, load it with wrk, stop it."""
    port = free_port()
    script = Path(script_dir) / f"checkin-{port}.lua"
    script.write_text(
        WRK_SCRIPT % {"imeis": ",".join(f'"{i}"' for i in imeis(10_000)), "token": token}
    )
    server = start(port)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        run_wrk(port, script, 2, args.connections)  # warm-up: GPS tree, policy, connections
        watched = [server.pid, *args.redis_pids]
        before, wrk_before = cpu_seconds(watched), _children_cpu()
        row = run_wrk(port, script, args.seconds, args.connections)
        used = cpu_seconds(watched) - before + _children_cpu() - wrk_before
        row["cpu_us"] = used / max(1.0, row["rps"] * args.seconds) * 1e6
        if args.check_answers is not None:
            row["checked"] = args.check_answers(port)
        return row
    finally:
        server.terminate()
        server.wait(30)


def cpu_seconds(roots: list[int]) -> float:
    """CPU seconds (user + system) used so far by ROOTS and every process descended from them
    (a server's workers), read from /proc: what a run cost, whatever else the machine did."""
    clock = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # After the command: state, ppid, ... utime (14th field), stime (15th).
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / clock)
    wanted, total = set(roots), 0.0
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    for pid in wanted:
        if pid in stats:
            total += stats[pid][1]
    return total


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended (wrk, once it exits)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: The sample of answers checked after the load: (network, device kind, expected verdict).
#: Sanctions lock on the serving network alone (policies/10-sanctions.yaml: CU, min 1 signal);
#: a new hk-global phone first seen in France is a gray import (20-gray-market.yaml, bound at
#: activation); an unknown device is allowed anywhere but a sanctioned place.
SAMPLE = (
    ("36801", "hk", "lock"),
    ("36801", "unknown", "lock"),
    ("45400", "hk", "allow"),
    ("20801", "hk", "lock"),
    ("20801", "unknown", "allow"),
)


def check_answers(port: int, token: str, per_case: int = 40) -> dict:
    """POST a sample of fresh devices' check-ins; count wrong verdicts, bad signatures and
    non-2xx answers."""
    import json

    from service.crypto.signing import verify_with_jwk

    def call(path: str, body: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {}

    status, jwks = call("/v1/keys")
    keys = {key["kid"]: key for key in jwks.get("keys", [])}
    counts = {"answers": 0, "non_2xx": 0, "wrong_verdict": 0, "bad_signature": 0}
    fresh = iter(range(900_000, 1_000_000))
    for network, kind, expected in SAMPLE:
        for _ in range(per_case):
            i = next(fresh)
            tac = "35387923" if kind == "hk" else "49015420"
            imei = f"{tac}{i:06d}"
            imei += luhn.calc_check_digit(imei)
            status, answer = call("/v1/checkin", {"imei": imei, "sim": {"network": network}})
            counts["answers"] += 1
            if status != 200:
                counts["non_2xx"] += 1
                continue
            counts["wrong_verdict"] += answer.get("verdict") != expected
            jwk = keys.get(answer.get("kid"))
            counts["bad_signature"] += jwk is None or not verify_with_jwk(answer, jwk)
    return counts


NAMES = {
    "bare_gunicorn": "bare Flask, gunicorn gthread (fixed baseline)",
    "bare_default": "bare Flask, granian + RSGI bridge (default server)",
    "checkin_default": "POST /v1/checkin, regionlock serve (default server)",
    "checkin_gunicorn": "POST /v1/checkin, gunicorn gthread",
}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every server this many times, in turns, and print the median ratios "
        "too (a shared machine's noise moves single runs)",
    )
    parser.add_argument(
        "--no-gunicorn-checkin",
        dest="gunicorn_checkin",
        action="store_false",
        help="skip the check-in under gunicorn (only for comparison)",
    )
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown")
    parser.add_argument("--stage-requests", type=int, default=3000)
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench_http: skipped: wrk is not installed (Debian: apt-get install wrk)")
        return
    import redis

    from service.store.tokens import TokenStore

    ratios: list[tuple[float, float, float]] = []
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
            args.redis_pids = [server.process.pid]
            for number in range(1, args.rounds + 1):
                load_before = f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
                rows = _round(args, token, env, folder)
                devices = len(list(client.scan_iter("rl:dev:{*}", count=10_000)))
                label = f"round {number} of {args.rounds}, " if args.rounds > 1 else ""
                ratios.append(_report(args, rows, devices, label, load_before))
    if args.rounds > 1:
        gunicorn_ratio, p99, default_ratio = (
            statistics.median(column) for column in zip(*ratios, strict=True)
        )
        print(
            f"median of {args.rounds} rounds: check-in / bare Flask under gunicorn "
            f"{gunicorn_ratio:.2f} (target >= 0.5), check-in p99 {p99:.2f} ms (target < 25), "
            f"check-in / bare Flask on the default server {default_ratio:.2f} (target >= 0.25)"
        )
    if not args.no_stages:
        from bench.checkin_stages import measure as stages
        from bench.checkin_stages import report

        print(report(stages(args.stage_requests)))


def _round(args, token: str, env: dict, folder: str) -> dict:
    """One measurement of every server, one after the other."""
    w, t = args.workers, args.threads
    bare = "bench.bare_app:create_bare_app()"
    ours = "service.app:create_app()"
    args.check_answers = None
    rows = {
        "bare_gunicorn": measure(lambda p: gunicorn(bare, p, w, t, env), token, args, folder),
        "bare_default": measure(
            lambda p: granian(bare.rstrip("()"), p, w, t, env), token, args, folder
        ),
    }
    args.check_answers = lambda port: check_answers(port, token)
    rows["checkin_default"] = measure(lambda p: regionlock_serve(p, w, t, env), token, args, folder)
    if args.gunicorn_checkin:
        args.check_answers = None
        rows["checkin_gunicorn"] = measure(
            lambda p: gunicorn(ours, p, w, t, env), token, args, folder
        )
    return rows


def _report(args, rows: dict, devices: int, label: str, load_before: str):
    """Print one round; its (ratio to gunicorn, check-in p99, ratio to the default server)."""
    print(
        f"HTTP check-in, {label}wrk {args.connections} connections, {args.seconds}s each, "
        f"{args.workers} workers x {args.threads} threads; load average before {load_before}"
    )
    for key, row in rows.items():
        print(
            f"  {NAMES[key]:53s} {row['rps']:7.0f} req/s  p50 {row['p50_ms']:6.2f}  "
            f"p99 {row['p99_ms']:6.2f}  p99.9 {row.get('p999_ms', float('nan')):6.2f} ms  "
            f"non-2xx {row['non_2xx']}  socket errors {row['socket_errors']}  "
            f"cpu {row['cpu_us']:5.0f} µs/req"
        )
    ours = rows["checkin_default"]
    to_gunicorn = ours["rps"] / rows["bare_gunicorn"]["rps"]
    to_default = ours["rps"] / rows["bare_default"]["rps"]
    print(
        f"  ratio check-in / bare Flask under gunicorn gthread: {to_gunicorn:.2f} "
        "(target >= 0.5, p99 < 25 ms)"
    )
    print(
        f"  ratio check-in / bare Flask on the default server:  {to_default:.2f} (target >= 0.25)"
    )
    by_cpu = [rows[key]["cpu_us"] / ours["cpu_us"] for key in ("bare_gunicorn", "bare_default")]
    print(
        "  the same ratios by CPU (µs of server + Redis + wrk CPU per request, which other "
        f"jobs on the machine disturb less): {by_cpu[0]:.2f} and {by_cpu[1]:.2f}"
    )
    checked = ours["checked"]
    print(
        f"  sample of answers after the load: {checked['answers']} check-ins of fresh devices, "
        f"{checked['non_2xx']} non-2xx, {checked['wrong_verdict']} wrong verdicts, "
        f"{checked['bad_signature']} signatures that do not verify; devices recorded: {devices}"
    )
    print(f"  load average after the round: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return to_gunicorn, ours["p99_ms"], to_default


if __name__ == "__main__":
    main()
