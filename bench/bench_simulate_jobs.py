"""Simulation jobs at fleet scale (SPEC §12.5): estimate a big fleet from a sample.

    python -m bench.bench_simulate_jobs --devices 10000000 --sample 1000000

Starts its own embedded Redis (temporary folder, append-only off) and records DEVICES devices
with the fast loader (``SamplingIndex.load``: pipelined HSETs of the record a check-in leaves,
and the sampling index written by slot; no check-ins). Where each device last checked in and
which distributor holds it are drawn from a seeded generator, and the loader decides every
device under the active and the candidate bundle as it goes, so the exact number of each
verdict change is known from how the fleet was built. Then it times

- the job: a simulation job of SAMPLE devices, run by the worker's own code (``JobRunner``:
  draw, read, decide, checkpoints every 10,000 devices), and prints each count's estimate, its
  95 % interval, the exact count and the error;
- the baseline, in the same run: the exact replay of every device (``simulate``, the SCAN of
  ``POST /v1/policy/simulate``), unless --skip-full.
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
from service.engine.model import Facts, Place
from service.policy.simulate import simulate
from service.policy.simulation_jobs import JobRunner, WorkerContext
from service.store import keys
from service.store.devices import DeviceStore
from service.store.policy import PolicyStore
from service.store.records import encode_outcome, encode_state
from service.store.sampling import SamplingIndex
from service.store.server import EmbeddedRedis
from service.store.simulations import SimulationStore

ROOT = Path(__file__).resolve().parent.parent

# TACs of the seed bundle's distributors (86012345: hk-global's range holds its first 100,000
# serials) and TACs nobody holds (unknown devices); 1,000,000 serials each, 10,000,000 devices.
TACS = ("35387923", "35332211", "35875421", "86012345") + tuple(
    f"490154{n:02d}" for n in range(20, 26)
)
# Where devices last checked in, with weights: mostly at home, some travelling, ~3 % in Russia
# (which the candidate sanctions), a few in sanctioned regions already.
PLACE_SETS = (
    ({"ip": "HK", "gps": "HK", "network": "HK"}, 30),
    ({"ip": "US", "gps": "US-NY", "network": "US"}, 30),
    ({"ip": "FR", "network": "FR"}, 15),
    ({"ip": "DE", "gps": "DE-BE", "network": "DE", "sim": "DE"}, 10),
    ({"network": "BR"}, 6),
    ({"ip": "RU", "network": "RU"}, 3),
    ({"ip": "CU", "gps": "CU"}, 1),
    ({"gps": "UA-43"}, 1),
    ({"sim": "HK"}, 3),
    ({}, 1),
)


def candidate_bundle() -> dict:
    """The seed bundle with Russia added to the sanctioned regions."""
    bundle = load_bundle_dir(ROOT / "policies")
    bundle["rules"][0]["regions"].append("RU")
    return bundle


def fleet(count: int, seed: int, exact: dict[str, int]):
    """(imei, record fields) of COUNT devices; EXACT gets the count of each verdict change."""
    rng = random.Random(seed)
    active = compile_bundle(load_bundle_dir(ROOT / "policies"))
    candidate = compile_bundle(candidate_bundle())
    labels = [p for p, _ in PLACE_SETS]
    weights = [w for _, w in PLACE_SETS]
    now = time.time()
    # A device's record depends only on its distributor, its rollout groups and exceptions, and
    # its places (no grace periods in the seed bundle): built once per such key, shared by
    # every device like it.
    made: dict[tuple, tuple[dict[str, str], str | None]] = {}
    if count > len(TACS) * 1_000_000:
        raise SystemExit(f"at most {len(TACS) * 1_000_000:,} devices")
    for i in range(count):
        body = f"{TACS[i % len(TACS)]}{i // len(TACS):06d}"
        imei = body + luhn.calc_check_digit(body)
        which = rng.choices(range(len(labels)), weights)[0]
        # Staged rollouts and exceptions (SPEC §12.1, §12.2) read the IMEI itself.
        key = (
            active.distributor_of(imei),
            active.device_key(imei),
            candidate.device_key(imei),
            which,
        )
        if key not in made:
            places = labels[which]
            facts = Facts(imei=imei, places={s: Place.parse(v) for s, v in places.items()}, now=now)
            before, after = active.decide(facts), candidate.decide(facts)
            change = (
                None if before.verdict == after.verdict else f"{before.verdict}->{after.verdict}"
            )
            # The fields every check-in writes (service/devices/checkin.py), kept short: the
            # facts and state are what a replay reads.
            record = {
                "first_seen": repr(now),
                "facts": orjson.dumps({"at": now, "places": places}).decode(),
                "verdict": before.verdict,
                "policy_version": "1",
                # One compact history line (records.HistoryLine), as the check-in writes it.
                "history": f"{int(now)}|1|0|1|"
                + encode_outcome(
                    before.verdict,
                    [{"code": r.code, "rule": r.rule, "region": r.region} for r in before.reasons],
                    places,
                ),
            }
            state = encode_state(before.state)
            if state:
                record["state"] = state
            if before.distributor:
                record["distributor"] = before.distributor
            made[key] = (record, change)
        record, change = made[key]
        if change is not None:
            exact[change] = exact.get(change, 0) + 1
        yield imei, record


def run(count: int, sample: int, seed: int, skip_full: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="regionlock-bench-jobs-") as folder:
        with EmbeddedRedis(Path(folder), appendonly=False) as server:
            client = redis_lib.Redis.from_url(server.url, decode_responses=True)
            index = SamplingIndex(client)
            policies = PolicyStore(client)
            seed_bundle = compile_bundle(load_bundle_dir(ROOT / "policies"))
            policies.publish(
                seed_bundle.bundle,
                published_by="bench",
                note="seed",
                expected_version=None,
                audit_fields={"actor": "bench", "action": "policy.publish"},
                compiled=seed_bundle.to_snapshot(),
            )
            before = client.info("memory")["used_memory"]
            exact: dict[str, int] = {}
            started = time.perf_counter()
            index.load(fleet(count, seed, exact), batch=5000, index_flush=500_000)
            load_s = time.perf_counter() - started
            used = client.info("memory")["used_memory"] - before
            one = client.memory_usage(
                keys.device(next(iter(client.scan_iter("rl:dev:*"))).split("{")[1][:-1])
            )
            print(
                f"loaded {count:,} devices in {load_s:.1f} s ({count / load_s:,.0f}/s); "
                f"Redis memory +{used / 2**30:.2f} GiB ({used / count:.0f} B per device, "
                f"records and index; one record: {one} B)"
            )

            jobs = SimulationStore(client)
            candidate = compile_bundle(candidate_bundle())
            job_id = jobs.create(
                {
                    "bundle": candidate.bundle,
                    "active_version": 1,
                    "sample": sample,
                    "seed": seed,
                    "done": 0,
                }
            )
            context = WorkerContext.on(client)
            started = time.perf_counter()
            state = JobRunner(context).run(job_id)
            job_s = time.perf_counter() - started
            job = jobs.get(job_id)
            assert state == "done", job.get("error")
            report = job["report"]
            print(
                f"job: {report['evaluated']:,} sampled devices of {report['fleet']:,} in "
                f"{job_s:.1f} s ({report['evaluated'] / job_s:,.0f} devices/s)"
            )
            errors = []
            for change, interval in report["intervals"]["changes"].items():
                truth = exact.get(change, 0)
                error = interval["estimate"] - truth
                errors.append(abs(error) / truth if truth else 0.0)
                print(
                    f"  {change}: estimate {interval['estimate']:,} "
                    f"(95 % {interval['low']:,}–{interval['high']:,}), exact {truth:,}, "
                    f"error {error:+,} ({error / truth:+.3%})"
                    + ("" if interval["low"] <= truth <= interval["high"] else "  OUTSIDE")
                )
            for change in sorted(set(exact) - set(report["intervals"]["changes"])):
                print(f"  {change}: not in the sample, exact {exact[change]:,}")
            result = {"load_s": load_s, "job_s": job_s, "max_rel_error": max(errors or [0])}
            if not skip_full:
                started = time.perf_counter()
                full = simulate(DeviceStore(client), candidate, seed_bundle)
                full_s = time.perf_counter() - started
                assert full.changes == exact, (full.changes, exact)
                print(
                    f"baseline: exact replay of all {full.evaluated:,} devices in {full_s:.1f} s "
                    f"({full.evaluated / full_s:,.0f} devices/s); job / baseline: "
                    f"{job_s / full_s:.2f}"
                )
                result["full_s"] = full_s
            client.close()
    return result


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000_000, help="recorded devices")
    parser.add_argument("--sample", type=int, default=1_000_000, help="devices in the sample")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fleet and the draw")
    parser.add_argument(
        "--skip-full", action="store_true", help="no exact replay of every device (baseline)"
    )
    args = parser.parse_args(argv)
    print(f"== bench_simulate_jobs: {args.devices:,} devices, sample {args.sample:,}")
    run(args.devices, args.sample, args.seed, args.skip_full)


if __name__ == "__main__":
    main()
