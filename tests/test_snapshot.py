"""Compiled-policy snapshots: published with each version, loaded by workers without compiling."""

from __future__ import annotations

from bench.bench_allocations import bundle_with, facts_for
from service.engine.compiler import CompiledPolicy, compile_bundle
from service.policy.runtime import PolicyCache
from service.store.policy import PolicyStore
from tests.conftest import bearer


def test_snapshot_decides_exactly_like_the_compiled_policy():
    policy = compile_bundle(bundle_with(20_000))
    loaded = CompiledPolicy.from_snapshot(policy.to_snapshot())
    for facts in facts_for(20_000, 4_000):
        a, b = policy.decide(facts), loaded.decide(facts)
        assert (a.verdict, a.distributor, a.reasons) == (b.verdict, b.distributor, b.reasons)
    assert loaded.next_checkin_s == policy.next_checkin_s
    assert [d["id"] for d in loaded.bundle["distributors"]] == [
        d["id"] for d in policy.bundle["distributors"]
    ]
    assert all("allocations" not in d for d in loaded.bundle["distributors"])


def test_every_published_version_carries_a_snapshot_workers_load(client, tokens, redis):
    store = PolicyStore(redis)
    client.post("/v1/checkin", json={"imei": "353879234252633"}, headers=bearer(tokens["device"]))
    assert store.compiled(1) is not None  # the seed
    bundle = bundle_with(50_000)
    # The seed's sanctioned regions kept: fewer would need approval (SPEC §12.4).
    bundle["rules"][0]["regions"] = ["CU", "IR", "SY", "KP", "SD", "UA-43", "UA-40"]
    response = client.post(
        "/v1/policy",
        json={"bundle": bundle, "note": "big", "expected_version": 1},
        headers=bearer(tokens["editor"]),
    )
    assert response.status_code == 201, response.get_json()
    assert store.compiled(2) is not None

    # A worker that never compiled the bundle: it must load version 2 from the snapshot.
    def refuse_to_compile(bundle):
        raise AssertionError("compiled instead of loading the snapshot")

    worker = PolicyCache(store, seed_bundle=dict, poll_s=0, compiler=refuse_to_compile)
    active = worker.current()
    assert active.version == 2
    imei = "10000000001000" + "0"
    assert active.policy.distributor_of(imei) == compile_bundle(bundle).distributor_of(imei)


def test_a_version_without_snapshot_is_compiled(redis):
    store = PolicyStore(redis)
    from service.engine.loading import load_bundle_dir
    from tests.conftest import ROOT

    store.publish(load_bundle_dir(ROOT / "policies"), "someone", "no snapshot", None)
    worker = PolicyCache(store, seed_bundle=dict, poll_s=0)
    assert worker.current().version == 1
