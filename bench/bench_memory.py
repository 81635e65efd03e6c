"""Redis bytes per recorded device, after one check-in and after a device's steady state.

Records N devices through the real check-in service (evidence, engine, store) against an
embedded Redis, then reads `used_memory` (baseline: the same server before the devices) and
divides. Two fleets: phones that stay home (same outcome at every check-in: the history keeps
one merged entry) and phones that move at every check-in (the history fills up: worst case).

    python -m bench.bench_memory [--devices 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stdnum import luhn

from service.store.server import EmbeddedRedis

PLACES = [
    ("203.186.10.20", (22.3193, 114.1694), "45400", "454001234567890"),
    ("24.24.24.24", (40.7128, -74.0060), "310260", "310260123456789"),
    ("2.0.5.6", (48.8566, 2.3522), "20801", "208011234567890"),
]


def device_imei(i: int) -> str:
    """The i-th test IMEI (half hk-global, half unknown devices)."""
    body = ("35387923" if i % 2 else "49015420") + f"{i:06d}"
    return body + luhn.calc_check_digit(body)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20_000)
    args = parser.parse_args(argv)
    from service.app import create_app
    from service.store import keys

    n = args.devices
    with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as folder:
        with EmbeddedRedis(Path(folder) / "redis", appendonly=False) as server:
            app = create_app(
                {
                    "redis_url": server.url,
                    "policy_poll_s": 0,
                    "var_dir": Path(folder) / "var",
                    # The per-device rate counter lives 61 s after a check-in: a fleet that
                    # checks in daily holds 1/1440 of them at a time (about 0.06 B/device), but
                    # this run, checking every device in within seconds, would count them all.
                    "checkin_device_limit": None,
                }
            )
            rl = app.extensions["regionlock"]
            client = rl.redis
            rl.policies.current()
            kept = rl.settings.decisions_kept

            def used() -> int:
                # The facts stream is a fixed-size ring shared by the fleet: not per device.
                return client.info("memory")["used_memory"] - (
                    client.memory_usage(keys.CHECKIN_FACTS) or 0
                )

            def checkin_all(first: int, travels: bool, round_no: int) -> float:
                started = time.perf_counter()
                for i in range(first, first + n):
                    ip, gps, network, imsi = PLACES[(i + round_no) % 3 if travels else i % 3]
                    body = {
                        "imei": device_imei(i),
                        "gps": {"lat": gps[0], "lon": gps[1]},
                        "sim": {"network": network, "imsi": imsi},
                        "model": "M2101K6G",
                        "firmware": "14.0.3",
                    }
                    rl.checkin.decide(body, ip, time.time())
                return n / (time.perf_counter() - started)

            rows = []
            for label, first, travels in (
                ("stays home", 0, False),
                ("moves every check-in", 500_000, True),
            ):
                baseline = used()
                rate = checkin_all(first, travels, 0)
                one = (used() - baseline) / n
                for round_no in range(1, kept + 2):
                    checkin_all(first, travels, round_no)
                full = (used() - baseline) / n
                rows.append((label, one, full, rate))
            stream_entries = client.xlen(keys.CHECKIN_FACTS)
            stream_bytes = client.memory_usage(keys.CHECKIN_FACTS) or 0
    print(
        f"Redis memory per recorded device ({n} devices per scenario; baseline: the same "
        "server before them)"
    )
    for label, one, full, rate in rows:
        print(
            f"  {label:22s} after 1 check-in {one:6.0f} B/device, after {kept + 2} check-ins "
            f"{full:6.0f} B/device   ({rate:,.0f} check-ins/s in-process)"
        )
    print(
        f"  check-in facts stream: {stream_bytes / max(stream_entries, 1):.0f} B/entry, "
        f"a ring of facts_stream_maxlen entries for the whole fleet (not per device)"
    )
    print("  target: <= 1024 B/device")


if __name__ == "__main__":
    main()
