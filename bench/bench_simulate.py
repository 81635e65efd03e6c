"""Impact simulation at scale: replay N recorded devices under two bundles.

    python -m bench.bench_simulate --devices 1000000

Starts its own embedded Redis (temporary folder, append-only off), writes N device records
through a pipeline as check-ins would have left them, then times

- the baseline: SCAN + pipelined HMGET of the same fields, without deciding anything, and
- the simulation: the same reads plus two decisions per device (active and candidate bundle),

and prints both, devices per second and their ratio (the cost of deciding on top of reading).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import orjson
import redis as redis_lib
from stdnum import luhn

from service.engine.compiler import compile_bundle
from service.engine.loading import load_bundle_dir
from service.engine.model import Facts, Override, Place
from service.policy.simulate import REPLAY_FIELDS, SCAN_COUNT, simulate
from service.store import keys
from service.store.devices import DeviceStore
from service.store.records import (
    DeviceRecord,
    HistoryLine,
    LastCheckin,
    encode_override,
)
from service.store.server import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent

# TACs of the seed bundle's distributors and one nobody holds (unknown devices).
TACS = ("35387923", "35332211", "35875421", "49015420", "86012345")
# Where devices last checked in: mostly at home, some travelling, a few in sanctioned regions.
PLACE_SETS = (
    {"ip": "HK", "gps": "HK", "network": "HK"},
    {"ip": "US", "gps": "US-NY", "network": "US"},
    {"ip": "FR", "network": "FR"},
    {"ip": "DE", "gps": "DE-BE", "network": "DE", "sim": "DE"},
    {"network": "BR"},
    {"ip": "RU", "network": "RU"},
    {"ip": "CU", "gps": "CU"},
    {"gps": "UA-43"},
    {"sim": "HK"},
    {},
)


def generate(client, count: int, seed: int = 1, batch: int = 10_000) -> None:
    """Write COUNT device records and ~1% overrides, as check-ins under the seed bundle would
    have left them."""
    rng = random.Random(seed)
    active = compile_bundle(load_bundle_dir(ROOT / "policies"))
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        body = f"{TACS[i % len(TACS)]}{i // len(TACS):06d}"
        imei = body + luhn.calc_check_digit(body)
        labels = PLACE_SETS[rng.randrange(len(PLACE_SETS))]
        at = now - rng.randrange(90 * 86_400)
        places = {signal: Place.parse(label) for signal, label in labels.items()}
        decision = active.decide(Facts(imei=imei, places=places, now=at))
        reasons = [r.to_dict() for r in decision.reasons]
        # The fields a check-in leaves (service/devices/checkin.py); only facts and state are
        # read back.
        record = DeviceRecord(
            first_seen=at,
            facts=LastCheckin(at=at, places=labels),
            device={"model": "M2101K6G", "firmware": "14.0.3"},
            verdict=decision.verdict,
            reasons=reasons,
            state=decision.state,
            distributor=decision.distributor,
            policy_version=1,
            history=(HistoryLine("sig", repr(at), 1, history_entry(at, decision, labels)),),
        )
        stored = {name: value for name, value in record.encode().items() if value is not None}
        pipe.hset(keys.device(imei), mapping=stored)
        if rng.random() < 0.01:
            override = Override(
                kind="unlock", lifts=frozenset({"distributor_territory"}), reason="bench"
            )
            pipe.set(keys.device_override(imei), encode_override(override))
        if (i + 1) % batch == 0:
            pipe.execute()
    pipe.execute()


def history_entry(at: float, decision, labels: dict[str, str]) -> str:
    """A decision history entry as a check-in writes it."""
    return orjson.dumps(
        {
            "at": int(at),
            "verdict": decision.verdict,
            "reasons": [{"code": r.code, "rule": r.rule} for r in decision.reasons],
            "places": labels,
            "policy_version": 1,
        }
    ).decode()


def candidate_bundle() -> dict:
    """The seed bundle with Russia added to the sanctioned regions."""
    bundle = load_bundle_dir(ROOT / "policies")
    bundle["rules"][0]["regions"].append("RU")
    return bundle


def run(count: int, batch: int) -> dict[str, float]:
    """Generate COUNT devices in a fresh embedded Redis and time baseline and simulation."""
    with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as folder:
        with EmbeddedRedis(Path(folder), appendonly=False) as server:
            client = redis_lib.Redis.from_url(server.url, decode_responses=True)
            started = time.perf_counter()
            generate(client, count)
            print(f"generated {count} devices in {time.perf_counter() - started:.1f} s")

            started = time.perf_counter()
            active = compile_bundle(load_bundle_dir(ROOT / "policies"))
            candidate = compile_bundle(candidate_bundle())
            compile_s = time.perf_counter() - started

            started = time.perf_counter()
            devices = DeviceStore(client)
            devices.overrides_by_imei(batch=batch, scan_count=SCAN_COUNT)
            read = sum(
                len(rows)
                for rows in devices.field_batches(REPLAY_FIELDS, batch=batch, scan_count=SCAN_COUNT)
            )
            baseline_s = time.perf_counter() - started

            started = time.perf_counter()
            report = simulate(devices, candidate, active, batch=batch)
            simulate_s = time.perf_counter() - started
            client.close()
    assert read == count and report.evaluated == count, (read, report.evaluated)
    print(f"compiled both bundles in {compile_s:.3f} s")
    print(
        f"baseline (SCAN + HMGET, no decisions): {baseline_s:.2f} s, "
        f"{count / baseline_s:,.0f} devices/s"
    )
    print(f"simulation: {simulate_s:.2f} s, {count / simulate_s:,.0f} devices/s")
    print(f"ratio simulation / baseline: {simulate_s / baseline_s:.2f}")
    print(f"changes: {report.changes}")
    return {"baseline_s": baseline_s, "simulate_s": simulate_s}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000, help="recorded devices")
    parser.add_argument("--batch", type=int, default=1_000, help="devices per pipelined read")
    args = parser.parse_args(argv)
    print(f"== bench_simulate: {args.devices} devices")
    run(args.devices, args.batch)


if __name__ == "__main__":
    main()
