"""Sampled simulations against exact counts (SPEC §12.5): Wilson score intervals with the
finite-population correction, on a fleet whose exact answer is known."""

from __future__ import annotations

import pytest

from service.engine.compiler import compile_bundle
from service.policy.estimate import count_interval, wilson_fpc
from service.policy.simulation_jobs import Plan, draw, run_plan
from service.store.devices import DeviceStore
from service.store.sampling import SamplingIndex
from tests.fleet import SEED, load_fleet, sanctioning_russia

FLEET, LOCKED = 2000, 300


@pytest.fixture
def fleet(redis):
    load_fleet(redis, FLEET, LOCKED)
    index = SamplingIndex(redis)
    return DeviceStore(redis), index, index.counts()


def sampled(fleet, size, seed):
    devices, index, counts = fleet
    return run_plan(
        devices,
        index,
        compile_bundle(sanctioning_russia()),
        compile_bundle(SEED),
        Plan(counts, size, seed),
        active_version=1,
        batch=700,
    )


def test_a_census_is_exact_and_its_interval_collapses(fleet):
    report = sampled(fleet, FLEET, seed=1)
    assert report.evaluated == FLEET and report.changes == {"allow->lock": LOCKED}
    document = report.to_dict()
    assert document["intervals"]["changes"]["allow->lock"] == {
        "estimate": LOCKED,
        "low": LOCKED,
        "high": LOCKED,
    }
    assert document["allow_to_lock_upper_ratio"] == LOCKED / FLEET


def test_intervals_contain_the_exact_count_at_their_rate(fleet):
    # 200 of 2,000 devices (10 %: the correction matters), 120 seeds: a 95 % interval misses
    # the exact 300 about 6 times; well over 12 misses would mean too narrow an interval.
    missed, widths = 0, []
    for seed in range(120):
        report = sampled(fleet, 200, seed)
        interval = report.interval(report.changes.get("allow->lock", 0))
        missed += not interval["low"] <= LOCKED <= interval["high"]
        widths.append(interval["high"] - interval["low"])
    assert missed <= 14
    # And not uselessly wide: without the correction the width would be about 5 % more.
    assert sum(widths) / len(widths) < 0.14 * FLEET


def test_the_same_seed_draws_the_same_devices_another_seed_others():
    assert draw(10_000, 50, 7).tolist() == draw(10_000, 50, 7).tolist()
    assert draw(10_000, 50, 7).tolist() != draw(10_000, 50, 8).tolist()
    positions = draw(10_000, 50, 7).tolist()
    assert positions == sorted(set(positions)) and len(positions) == 50
    assert draw(5, 50, 7).tolist() == [0, 1, 2, 3, 4]


def test_the_correction_narrows_the_interval_as_the_sample_covers_the_fleet():
    wide = wilson_fpc(30, 200, 10**9)
    narrow = wilson_fpc(30, 200, 400)
    assert narrow[0] > wide[0] and narrow[1] < wide[1]
    assert wilson_fpc(30, 200, 200) == (0.15, 0.15)
    # Bounds never claim fewer devices than the sample saw, nor more than it allows.
    assert count_interval(5, 10, 12) == {"estimate": 6, "low": 5, "high": 7}


def test_the_brake_reads_the_upper_bound(fleet):
    report = sampled(fleet, 200, seed=3)
    report.max_new_lock_ratio = report.allow_to_lock_ratio + 0.001
    # The sample's own share is under the limit, its upper bound is over it: the brake trips.
    assert report.allow_to_lock_upper_ratio > report.max_new_lock_ratio
    assert report.brakes
