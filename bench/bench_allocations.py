"""Distributor allocations at scale: compile time and decision speed with 10 .. 1,000,000.

    python -m bench.bench_allocations [--sizes 10,10000,1000000] [--decisions 200000] [--replay]

For each size a bundle is built with that many allocations (ranges and whole TACs spread over
ten distributors), compiled (validation, overlap check and lookup index), and then used to
decide check-ins of IMEIs inside and outside the allocations. Decisions per second are compared
with the 10-allocation bundle: the lookup is a dict plus a bisect, so the ratio stays near 1.

``--replay`` also times every size with the index's answers replayed instead of looked up:
everything of a decision but the lookup, which should cost the same at every size (what the
two ratios differ by is the lookup's own cost).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time

from service.engine.compiler import CompiledPolicy, compile_bundle
from service.engine.model import Facts, Place

DISTRIBUTORS = 10
TERRITORIES = (["HK", "MO"], ["US", "PR"], ["FR", "DE"], ["BR"], ["JP"])
#: Ranges sit in TACs 10000000..; whole-TAC allocations from TAC 20000000 on.
RANGE_BASE = 10_000_000_000_000
TAC_BASE = 20_000_000
RANGE_STEP = 1_000


def allocation(i: int) -> dict[str, str]:
    """The i-th allocation: every tenth a whole TAC, the others 500-IMEI ranges."""
    if i % 10 == 0:
        return {"tac": f"{TAC_BASE + i:08d}"}
    start = RANGE_BASE + i * RANGE_STEP
    return {"from": f"{start:014d}", "to": f"{start + 499:014d}"}


def bundle_with(count: int) -> dict:
    """A bundle with a sanctions rule, a territory rule and COUNT allocations."""
    distributors = [
        {
            "id": f"dist-{d}",
            "territories": TERRITORIES[d % len(TERRITORIES)],
            "allocations": [allocation(i) for i in range(d, count, DISTRIBUTORS)],
        }
        for d in range(DISTRIBUTORS)
    ]
    return {
        "rules": [
            {
                "id": "sanctions",
                "type": "sanctioned_region",
                "regions": ["CU", "IR", "SY", "KP"],
                "signals": ["ip", "gps", "network"],
            },
            {
                "id": "gray-market",
                "type": "distributor_territory",
                "signals": ["ip", "gps", "network"],
                "bind": "every_checkin",
            },
        ],
        "distributors": distributors,
    }


def facts_for(count: int, decisions: int, seed: int = 7) -> list[Facts]:
    """Check-ins of IMEIs half inside the allocations (any of them), half outside."""
    rng = random.Random(seed)
    places = [
        {"ip": Place("HK"), "network": Place("HK")},
        {"ip": Place("US"), "gps": Place("US", "US-NY")},
        {"ip": Place("DE"), "network": Place("FR")},
        {"gps": Place("CU")},
    ]
    out = []
    for n in range(decisions):
        i = rng.randrange(count)
        if n % 2:
            body = f"{99_000_000_000_000 + rng.randrange(10**12):014d}"  # nobody's
        elif i % 10 == 0:
            body = f"{TAC_BASE + i:08d}{rng.randrange(10**6):06d}"
        else:
            body = f"{RANGE_BASE + i * RANGE_STEP + rng.randrange(500):014d}"
        out.append(Facts(imei=body + "0", places=places[n % len(places)], now=1.7e9))
    return out


class _Replay:
    """Stands in for a policy's allocation index, answering from a list of its answers."""

    def __init__(self, answers: list[str | None]):
        self.answers = answers
        self._next = iter(()).__next__

    def rewind(self) -> _Replay:
        """Start again from the first answer."""
        self._next = iter(self.answers).__next__
        return self

    def owner_of(self, imei: str) -> str | None:
        """The next answer, whatever ``imei`` is."""
        return self._next()


def _decide_all(policy, checkins: list[Facts]) -> float:
    decide = policy.decide
    started = time.perf_counter()
    for facts in checkins:
        decide(facts)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,10000,1000000", help="allocation counts")
    parser.add_argument("--decisions", type=int, default=200_000, help="decisions per size")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes; the best counts")
    parser.add_argument(
        "--replay", action="store_true", help="also time decisions with the lookups replayed"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"== bench_allocations: sizes {sizes}, {args.decisions} decisions each")
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    policies, compile_s, checkins, load_s = {}, {}, {}, {}
    for count in sizes:
        bundle = bundle_with(count)
        started = time.perf_counter()
        policies[count] = compile_bundle(bundle)
        compile_s[count] = time.perf_counter() - started
        snapshot = policies[count].to_snapshot()
        started = time.perf_counter()
        CompiledPolicy.from_snapshot(snapshot)
        load_s[count] = (time.perf_counter() - started, len(snapshot))
        checkins[count] = facts_for(count, args.decisions)
        del bundle
    # What the service does after compiling (service/policy_runtime.py): the policies' objects
    # leave the cyclic collector's generations.
    gc.freeze()
    # Sizes take turns, best pass kept: a busy machine slows a pass, never speeds one up.
    best = dict.fromkeys(sizes, float("inf"))
    replayed = dict.fromkeys(sizes, float("inf"))
    indexes = {count: policy._index for count, policy in policies.items()}
    replays = {
        count: _Replay([indexes[count].owner_of(f.imei) for f in checkins[count]])
        for count in sizes
        if args.replay
    }
    for _ in range(args.rounds):
        for count in sizes:
            best[count] = min(best[count], _decide_all(policies[count], checkins[count]))
            if args.replay:
                policies[count]._index = replays[count].rewind()
                elapsed = _decide_all(policies[count], checkins[count])
                replayed[count] = min(replayed[count], elapsed)
                policies[count]._index = indexes[count]
    baseline = args.decisions / best[sizes[0]]
    for count in sizes:
        rate = args.decisions / best[count]
        print(
            f"{count:>9} allocations: compile {compile_s[count]:7.3f} s, {rate:>10,.0f} "
            f"decisions/s, {rate / baseline:.2f}x the {sizes[0]}-allocation rate; "
            f"a worker loads its snapshot ({load_s[count][1] / 1e6:.1f} MB) in "
            f"{load_s[count][0]:.3f} s"
        )
    if args.replay:
        for count in sizes:
            ns = (best[count] - replayed[count]) / args.decisions * 1e9
            ratio = replayed[sizes[0]] / replayed[count]
            print(
                f"{count:>9} allocations, lookups replayed: {ratio:.2f}x the {sizes[0]}-allocation"
                f" rate (the lookup costs {ns:,.0f} ns a decision)"
            )
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
