"""Fleet overview (SPEC §14): what the counters cost a check-in, and the locked export's memory.

    python -m bench.bench_stats --checkins 20000 --rounds 6 --locked 1000000

Starts its own embedded Redis (temporary folder, append-only off), then

1. the check-in's decision + write loop in process (the service's CheckinService: device
   read, engine decision, the one Lua script) over a pool of devices, in alternating rounds
   with the fleet-overview counters and locked index ON (REGIONLOCK_STATS=on) and OFF, on the
   same Redis: check-ins per second of each (median round) and the cost of the counters;
2. the locked-devices export: N index entries written by a fast loader (pipelined HSETs into
   the slot shards, as check-ins would leave them), then exported by StatsService in a child
   process to /dev/null: seconds, rows/s, and that process's peak RSS against its RSS before
   the export (bounded memory: the export holds one shard's page and one CSV chunk at a time).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis as redis_lib
from stdnum import luhn

from service.devices.checkin import CheckinLimits, CheckinService
from service.devices.stats import StatsService
from service.engine.compiler import compile_bundle
from service.engine.loading import load_bundle_dir
from service.engine.model import Place
from service.policy.runtime import ActivePolicy
from service.store import keys
from service.store.audit import AuditStore
from service.store.devices import DeviceStore
from service.store.fleet_stats import StatsStore
from service.store.server import EmbeddedRedis
from service.store.shards import slot_tag

ROOT = Path(__file__).resolve().parent.parent
TACS = ("35387923", "35332211", "35875421", "49015420", "86012345")
# Where a check-in comes from: mostly allowed at home, some gray imports, some sanctioned.
PLACE_SETS = (
    {"ip": "HK", "network": "HK"},
    {"ip": "US", "network": "US"},
    {"ip": "FR", "network": "FR"},
    {"ip": "DE", "network": "DE"},
    {"network": "BR"},
    {"ip": "CU", "network": "CU"},
    {"gps": "UA-43"},
    {},
)


def imei_of(i: int) -> str:
    body = f"{TACS[i % len(TACS)]}{i // len(TACS):06d}"
    return body + luhn.calc_check_digit(body)


class FixedEvidence:
    """Evidence already turned into places (the same cost with counters on or off)."""

    def __init__(self):
        self.places = None

    def gather(self, **_):
        return self.places


class FixedPolicy:
    """The seed bundle, compiled once (the policy cache's ``current()``)."""

    def __init__(self):
        self.active = ActivePolicy(1, compile_bundle(load_bundle_dir(ROOT / "policies")))

    def current(self) -> ActivePolicy:
        return self.active


def checkin_rounds(
    url: str, pool: int, per_round: int, rounds: int, travel: float, seed: int = 7
) -> None:
    """Alternate rounds ON / OFF over the same devices; print the medians and the cost, in
    check-ins per second (this process) and in Redis time per check-in script."""
    client = redis_lib.Redis.from_url(url, decode_responses=True)
    policy = FixedPolicy()
    evidence = FixedEvidence()
    services = {}
    for name, on in (("on", True), ("off", False)):
        services[name] = CheckinService(
            evidence,
            DeviceStore(client, overview=on),
            policy,
            lambda imsi: None,
            limits=CheckinLimits(),
        )
    rng = random.Random(seed)
    devices = [imei_of(i) for i in range(pool)]
    place_sets = [{s: Place.parse(label) for s, label in labels.items()} for labels in PLACE_SETS]
    # Each device has a home (where most of its check-ins come from); TRAVEL of check-ins come
    # from a random place, so verdicts change and the index moves now and then.
    home = [place_sets[rng.randrange(len(place_sets))] for _ in devices]
    for i, imei in enumerate(devices):  # every device recorded (and indexed) once
        evidence.places = home[i]
        services["on"].decide({"imei": imei}, None, time.time())
    results: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    server_us: dict[str, list[float]] = {"on": [], "off": []}
    order = ["on", "off"]
    for round_no in range(rounds):
        for name in order if round_no % 2 == 0 else reversed(order):
            service = services[name]
            plan = []
            for _ in range(per_round):
                i = rng.randrange(pool)
                away = rng.random() < travel
                plan.append(
                    (devices[i], place_sets[rng.randrange(len(place_sets))] if away else home[i])
                )
            client.config_resetstat()

            def one_round(service=service, plan=plan):
                for imei, places in plan:
                    evidence.places = places
                    service.decide({"imei": imei}, None, time.time())

            _measure(client, one_round, per_round, results[name], cpu[name])
            stats = client.info("commandstats").get("cmdstat_evalsha", {})
            server_us[name].append(stats.get("usec_per_call", 0.0))
    on_us, off_us = statistics.median(server_us["on"]), statistics.median(server_us["off"])
    print(
        f"check-ins (decision + write, in process), {pool:,} devices, {travel:.0%} away from "
        f"home, {rounds} rounds of {per_round:,} each:"
    )
    _summary(results, cpu)
    print(
        f"  Redis time of the check-in script: OFF {off_us:.1f} us, ON {on_us:.1f} us "
        f"({on_us - off_us:+.1f} us per check-in)"
    )
    client.close()


NETWORKS = ("45400", "310260", "20801", "26201", "72405", "36801", "25001")


def app_rounds(
    url: str, folder: Path, pool: int, per_round: int, rounds: int, travel: float, seed: int = 11
) -> None:
    """The whole check-in through the app in process (Flask test client: auth, validation,
    evidence, decision, the write, signing), two apps on one Redis, REGIONLOCK_STATS on and
    off, alternating rounds."""
    from service.app import create_app
    from service.store.tokens import TokenStore

    apps = {}
    for name in ("on", "off"):
        apps[name] = create_app(
            {
                "redis_url": url,
                "var_dir": folder / "var",
                "stats": name,
                "checkin_device_limit": None,
                # A shared, loaded machine: a slow reply is not an outage here.
                "redis_timeout_s": 10.0,
                "rate_limits": {},
            }
        )
    client = redis_lib.Redis.from_url(url, decode_responses=True)
    token = TokenStore(client).create("bench-device", "device")
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(seed)
    devices = [imei_of(i) for i in range(pool)]
    home = [NETWORKS[rng.randrange(len(NETWORKS))] for _ in devices]
    clients = {name: app.test_client() for name, app in apps.items()}

    def post(http, imei, network):
        body = {"imei": imei, "sim": {"network": network}, "model": "M2101K6G"}
        response = http.post("/v1/checkin", json=body, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)

    for i, imei in enumerate(devices):
        post(clients["on"], imei, home[i])
    results: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    order = ["on", "off"]
    for round_no in range(rounds):
        for name in order if round_no % 2 == 0 else reversed(order):
            plan = []
            for _ in range(per_round):
                i = rng.randrange(pool)
                away = rng.random() < travel
                plan.append(
                    (devices[i], NETWORKS[rng.randrange(len(NETWORKS))] if away else home[i])
                )

            def one_round(http=clients[name], plan=plan):
                for imei, network in plan:
                    post(http, imei, network)

            _measure(client, one_round, per_round, results[name], cpu[name])
    print(f"check-ins through the app (Flask test client), {rounds} rounds of {per_round:,}:")
    _summary(results, cpu)
    client.close()


def _server_cpu_s(client) -> float:
    """The Redis server's CPU seconds so far (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _measure(client, one_round, count: int, rates: list[float], cpu_us: list[float]) -> None:
    """Run ONE_ROUND (COUNT check-ins): append its check-ins per second (wall clock) to RATES
    and its CPU microseconds per check-in (this process + the Redis server) to CPU_US."""
    server = _server_cpu_s(client)
    cpu = time.process_time()
    started = time.perf_counter()
    one_round()
    wall = time.perf_counter() - started
    used = (time.process_time() - cpu) + (_server_cpu_s(client) - server)
    rates.append(count / wall)
    cpu_us.append(1e6 * used / count)


def _summary(results: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    """Medians of each, and the cost two ways: the median of the paired rounds' wall-clock
    ratios (a round ON and the round OFF next to it ran under the same load), and the CPU a
    check-in takes (this process + Redis; what bounds throughput when the cores are busy, and
    far less disturbed by the other jobs of a shared machine than the wall clock)."""
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    ratios = [a / b for a, b in zip(results["on"], results["off"], strict=True)]
    cost = 100 * (1 - statistics.median(ratios))
    spread = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [min(ratios), max(ratios)]
    cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    print(f"  counters OFF (baseline): {off:,.0f} check-ins/s, CPU {cpu_off:,.0f} us/check-in")
    print(f"  counters ON:             {on:,.0f} check-ins/s, CPU {cpu_on:,.0f} us/check-in")
    print(
        f"  cost of the counters: wall clock {cost:+.1f} % (median of {len(ratios)} paired "
        f"rounds; interquartile ON/OFF {spread[0]:.3f}..{spread[-1]:.3f}); "
        f"CPU per check-in {100 * (cpu_on - cpu_off) / cpu_off:+.1f} % (throughput at full "
        f"load: {100 * (1 - cpu_off / cpu_on):+.1f} %)"
    )


def _rounded(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:,.0f}" for v in values) + "]"


def load_locked(url: str, count: int, batch: int = 20_000) -> float:
    """Write COUNT locked-index entries as check-ins would leave them; seconds taken."""
    client = redis_lib.Redis.from_url(url)
    started = time.perf_counter()
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        imei = imei_of(i)
        if i % 3 == 0:
            entry = f"{now}\tt,r:sanctioned_region,g:CU,c:CU\tsanctioned_region\tCU\t\t"
        else:
            entry = (
                f"{now}\tt,r:outside_territory,g:US,c:US,d:hk-global\toutside_territory\tUS"
                "\thk-global\t"
            )
        pipe.hset(keys.locked_index(slot_tag(imei)), imei, entry)
        if (i + 1) % batch == 0:
            pipe.execute()
    pipe.execute()
    client.close()
    return time.perf_counter() - started


def report_timing(url: str, devices: int = 200_000) -> None:
    """GET /v1/stats's read: 400 days, each a roll-up key but today (16,384 shards), with the
    counters of DEVICES devices spread over the shards; and a day never rolled up."""
    from datetime import UTC, datetime, timedelta

    client = redis_lib.Redis.from_url(url)
    store = StatsStore(client)
    service = StatsService(store, AuditStore(client))
    today = datetime.now(UTC).date()
    fields = {"n": 1000, "lock:t": 10, "lock:r:sanctioned_region": 7, "lock:g:CU": 7}
    fields |= {f"allow:c:{c}": 5 for c in ("US", "FR", "DE", "HK", "BR", "CU", "UA", "RU")}
    pipe = client.pipeline(transaction=False)
    for back in range(1, 400):
        day = (today - timedelta(days=back)).strftime("%Y%m%d")
        pipe.hset(keys.stats_day(day), mapping={"_": 1, **fields})
    for i in range(devices):
        tag = slot_tag(imei_of(i))
        pipe.hincrby(keys.stats_shard(tag, today.strftime("%Y%m%d")), "n", 1)
        pipe.hincrby(keys.locked_counts(tag), "t", 1)
        if (i + 1) % 20_000 == 0:
            pipe.execute()
    pipe.execute()
    started = time.perf_counter()
    report = service.report(today - timedelta(days=399), today)
    full = time.perf_counter() - started
    assert report["days"][-1]["checkins"] == devices and report["locked_now"]["total"] == devices
    started = time.perf_counter()
    service.report(today, today)
    one = time.perf_counter() - started
    print(
        f"GET /v1/stats read: 400 days (399 rolled up + today's 16,384 shards + the 16,384 "
        f"locked-count shards) {1000 * full:.0f} ms; today alone {1000 * one:.0f} ms "
        f"(so a day never rolled up costs about {1000 * (one / 2):.0f} ms more)"
    )
    client.close()


def rss_kib(field: str = "VmRSS") -> int:
    """This process's resident set now (VmRSS) or its peak (VmHWM), KiB, from /proc (the
    peak of getrusage would count the parent's from before the exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def export_child(url: str) -> None:
    """In a fresh process: export every locked device to /dev/null; print the figures."""
    client = redis_lib.Redis.from_url(url, decode_responses=True)
    service = StatsService(StatsStore(client), AuditStore(client))
    baseline = rss_kib()
    peak_before = rss_kib("VmHWM")
    started = time.perf_counter()
    rows = -1  # the header
    size = 0
    with open(os.devnull, "w") as sink:
        for piece in service.locked_devices_csv("bench", "admin"):
            rows += piece.count("\n")
            size += len(piece)
            sink.write(piece)
    seconds = time.perf_counter() - started
    peak = rss_kib("VmHWM")
    print(
        f"  exported {rows:,} rows ({size / 1e6:.0f} MB of CSV) in {seconds:.1f} s, "
        f"{rows / seconds:,.0f} rows/s"
    )
    print(
        f"  exporting process: RSS before the export {baseline / 1024:.0f} MiB "
        f"(peak so far {peak_before / 1024:.0f} MiB), peak during it {peak / 1024:.0f} MiB "
        f"(+{(peak - max(baseline, peak_before)) / 1024:.1f} MiB)"
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkins", type=int, default=20_000, help="check-ins per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each (alternating)")
    parser.add_argument("--pool", type=int, default=50_000, help="distinct devices")
    parser.add_argument(
        "--travel", type=float, default=0.05, help="share of check-ins away from home"
    )
    parser.add_argument("--locked", type=int, default=1_000_000, help="locked devices to export")
    parser.add_argument(
        "--app-checkins", type=int, default=3_000, help="check-ins per round through the app"
    )
    parser.add_argument("--report-only", action="store_true", help="only time GET /v1/stats")
    parser.add_argument("--export-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export_child:
        export_child(args.export_child)
        return
    if args.report_only:
        with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as folder:
            with EmbeddedRedis(Path(folder), appendonly=False) as server:
                report_timing(server.url)
        return
    print(f"== bench_stats: {args.rounds}x{args.checkins} check-ins, {args.locked:,} locked")
    with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as folder:
        with EmbeddedRedis(Path(folder), appendonly=False) as server:
            checkin_rounds(server.url, args.pool, args.checkins, args.rounds, args.travel)
            if args.app_checkins:
                app_rounds(
                    server.url,
                    Path(folder),
                    min(args.pool, 5_000),
                    args.app_checkins,
                    args.rounds,
                    args.travel,
                )
            redis_lib.Redis.from_url(server.url).flushall()
            report_timing(server.url)
            if args.locked:
                redis_lib.Redis.from_url(server.url).flushall()
                seconds = load_locked(server.url, args.locked)
                print(f"locked export: loaded {args.locked:,} index entries in {seconds:.1f} s")
                subprocess.run(
                    [sys.executable, "-m", "bench.bench_stats", "--export-child", server.url],
                    check=True,
                    cwd=ROOT,
                )


if __name__ == "__main__":
    main()
