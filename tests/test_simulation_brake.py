"""The publish's safety brake at fleet scale (SPEC §12.5): a finished job named by
``simulation_id``, else a sample drawn in the request, judged on the interval's upper bound."""

from __future__ import annotations

import orjson
import pytest

from service.engine.compiler import compile_bundle
from service.policy.simulation_jobs import JobRunner, WorkerContext
from service.store.policy import PolicyStore
from service.store.simulations import SimulationStore
from tests.conftest import audit_entries, bearer
from tests.fleet import SEED, load_fleet, sanctioning_russia


@pytest.fixture
def as_role(client, tokens):
    def call(role, method, path, body=None):
        return client.open(path, method=method, json=body, headers=bearer(tokens[role]))

    return call


def run_jobs(redis):
    """Run the queued jobs here (the worker's code, without its process)."""
    jobs = SimulationStore(redis)
    context = WorkerContext.on(redis)
    for job_id in jobs.ids():
        JobRunner(context).run(job_id)


def publish(as_role, bundle, **extra):
    body = {"bundle": bundle, "note": "n", "expected_version": 1, **extra}
    return as_role("editor", "POST", "/v1/policy", body)


def simulated(as_role, redis, bundle, **extra):
    job_id = as_role(
        "editor", "POST", "/v1/policy/simulations", {"bundle": bundle, **extra}
    ).get_json()["id"]
    run_jobs(redis)
    return job_id


def test_a_finished_job_stands_for_the_brake(as_role, redis):
    load_fleet(redis, 600, 60)  # 10 % would be locked
    strict = sanctioning_russia(ratio=0.05)
    job_id = simulated(as_role, redis, strict, sample=300, seed=2)
    braked = publish(as_role, strict, simulation_id=job_id)
    assert braked.status_code == 409
    error = braked.get_json()["error"]
    assert error["code"] == "safety_brake"
    # The job's report (a sample of 300 of 600), not a replay in the request.
    assert error["report"]["sample"] == {"size": 300, "seed": 2}
    assert error["report"]["fleet"] == 600
    assert "from a sample of 300" in error["message"]

    lenient = sanctioning_russia(ratio=0.5)
    job_id = simulated(as_role, redis, lenient)
    published = publish(as_role, lenient, simulation_id=job_id)
    assert published.status_code == 201
    assert published.get_json()["simulation"]["intervals"]["changes"]["allow->lock"] == {
        "estimate": 60,
        "low": 60,
        "high": 60,
    }
    entry = [e for e in audit_entries(redis) if e["action"] == "policy.publish"][-1]
    assert orjson.loads(entry["detail"])["simulation_id"] == job_id


def test_a_simulation_id_must_be_of_this_bundle_done_and_current(as_role, redis):
    load_fleet(redis, 100, 1)
    lenient = sanctioning_russia(ratio=0.5)
    unknown = publish(as_role, lenient, simulation_id="nope")
    assert unknown.status_code == 422
    assert unknown.get_json()["error"]["code"] == "unknown_simulation"
    assert "simulation_id" in unknown.get_json()["error"]["fields"]

    other = simulated(as_role, redis, SEED)
    mismatch = publish(as_role, lenient, simulation_id=other)
    assert mismatch.status_code == 422
    assert mismatch.get_json()["error"]["code"] == "simulation_mismatch"

    queued = as_role("editor", "POST", "/v1/policy/simulations", {"bundle": lenient}).get_json()[
        "id"
    ]
    not_done = publish(as_role, lenient, simulation_id=queued)
    assert not_done.status_code == 409
    assert not_done.get_json()["error"]["code"] == "simulation_not_done"
    run_jobs(redis)

    # Another version published since: the job compared the bundle with version 1.
    assert publish(as_role, SEED | {"name": "other"}).status_code == 201
    outdated = as_role(
        "editor",
        "POST",
        "/v1/policy",
        {"bundle": lenient, "note": "n", "expected_version": 2, "simulation_id": queued},
    )
    assert outdated.status_code == 409
    assert outdated.get_json()["error"]["code"] == "simulation_outdated"
    # Nothing was published by the refused calls.
    assert as_role("editor", "GET", "/v1/policy").get_json()["version"] == 2


def test_without_a_job_a_big_fleet_is_sampled_and_judged_on_the_upper_bound(
    app, as_role, redis, monkeypatch
):
    from service.policy.publishing import Publisher

    # The in-request sample is 100,000 devices; here 1,000 of a 3,000-device fleet.
    monkeypatch.setattr("service.policy.simulation_jobs.BRAKE_SAMPLE", 1000)
    load_fleet(redis, 3000, 120)  # exactly 4 %
    rl = app.extensions["regionlock"]
    rl.policies.current()  # the seed is published as version 1
    publisher = Publisher(rl.devices, rl.policy_store, rl.audit)
    # A limit between the sample's own share and its interval's upper bound (the draw is
    # seeded by the bundle, limit included, so each limit is tried with its own draw).
    for thousandths in range(45, 80):
        bundle = sanctioning_russia(ratio=thousandths / 1000)
        report = publisher.brake_report(compile_bundle(bundle), 1, None)
        assert report.fleet == 3000 and report.drawn == 1000
        if (
            report.allow_to_lock_ratio
            <= bundle["max_new_lock_ratio"]
            < (report.allow_to_lock_upper_ratio)
        ):
            break
    else:
        raise AssertionError("no limit between the sample's share and its upper bound")
    braked = publish(as_role, bundle)
    assert braked.status_code == 409, braked.get_json()
    answer = braked.get_json()["error"]["report"]
    assert answer["fleet"] == 3000 and answer["sample"]["size"] == 1000
    assert answer["evaluated"] == 1000
    # The sample's share is under the limit; the interval's upper bound is over it.
    assert answer["allow_to_lock_ratio"] <= bundle["max_new_lock_ratio"]
    assert answer["allow_to_lock_upper_ratio"] > bundle["max_new_lock_ratio"]
    interval = answer["intervals"]["changes"]["allow->lock"]
    assert interval["low"] <= 120 <= interval["high"]
    # The exact replay of every device would have let it through: the bound is what brakes.
    direct = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": bundle}).get_json()
    assert direct["allow_to_lock_ratio"] == 0.04 and direct["would_brake"] is False


def test_a_small_fleet_is_replayed_whole_in_the_request(as_role, redis):
    load_fleet(redis, 200, 20)
    braked = publish(as_role, sanctioning_russia(ratio=0.05))
    assert braked.status_code == 409
    report = braked.get_json()["error"]["report"]
    assert report["evaluated"] == 200 and report["changes"] == {"allow->lock": 20}
    assert "fleet" not in report  # the exact replay of §6, no sample
    assert compile_bundle(SEED)  # the seed is unchanged


def test_a_job_judges_sims_and_rollouts_as_simulate_does(as_role, redis, checkin):
    """Carrier rules read the recorded SIMs (SPEC §12.3), staged rules the rollout groups
    (SPEC §12.1): a job's census equals the in-request replay."""
    import copy

    from tests.imeis import imei

    orange = [imei(f"86769105{n:06d}") for n in range(20)]
    for n, device in enumerate(orange):
        network = "20815" if n % 4 == 0 else "20801"  # 5 of 20 carry a Free SIM
        checkin(device, sim={"imsi": network + "0123456789", "network": network})
    for n in range(60):
        checkin(imei(f"49015420{n:06d}"), sim={"network": "25001"})
    candidate = copy.deepcopy(SEED)
    next(r for r in candidate["rules"] if r["id"] == "orange-sims")["action"] = "lock"
    candidate["rules"][0]["regions"].append("RU")
    candidate["rules"][0]["rollout_percent"] = 30
    direct = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": candidate}).get_json()
    assert direct["changes"]["warn->lock"] == 5 and 0 < direct["changes"]["allow->lock"] < 60
    job_id = simulated(as_role, redis, candidate)
    report = as_role("editor", "GET", f"/v1/policy/simulations/{job_id}").get_json()["report"]
    assert report["changes"] == direct["changes"]
    assert report["verdicts"] == direct["verdicts"]


def test_the_cli_publish_names_a_finished_job_for_its_brake(
    as_role, redis, redis_url, tmp_path, monkeypatch
):
    """`regionlock policy publish --simulation-id`: the job of this bundle stands for the brake
    (600 devices, 60 in Russia: 10 % new locks, over the seed's 5 %); an unknown id publishes
    nothing."""
    import shutil

    from click.testing import CliRunner

    from service.cli import main
    from service.engine.loading import load_bundle_dir
    from tests.conftest import ROOT
    from tests.test_policy_cli import sanction_russia

    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    folder = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", folder)
    sanction_russia(folder)
    load_fleet(redis, 600, 60)
    assert as_role("editor", "GET", "/v1/policy").get_json()["version"] == 1  # the seed

    def cli(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    unknown = cli("policy", "publish", folder, "--note", "n", "--simulation-id", "nope")
    assert unknown.exit_code == 1
    assert "unknown_simulation" in unknown.stderr
    assert PolicyStore(redis).active_version() == 1

    job_id = simulated(as_role, redis, load_bundle_dir(folder), sample=300, seed=2)
    braked = cli("policy", "publish", folder, "--note", "n", "--simulation-id", job_id)
    assert braked.exit_code == 1
    assert "from a sample of 300" in braked.stderr
    assert PolicyStore(redis).active_version() == 1

    forced = cli("policy", "publish", folder, "--note", "n", "--simulation-id", job_id, "--force")
    assert forced.exit_code == 0, forced.output
    assert PolicyStore(redis).active_version() == 2
    entry = [e for e in audit_entries(redis) if e["action"] == "policy.publish"][-1]
    assert orjson.loads(entry["detail"])["simulation_id"] == job_id
