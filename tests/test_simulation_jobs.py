"""Simulations as jobs (SPEC §12.5): the API, a real `regionlock worker` process, progress,
cancel, roles, and resumption from a checkpoint after the worker is SIGKILLed mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from service.engine.compiler import compile_bundle
from service.policy.simulation_jobs import JobRunner, WorkerContext
from service.store import keys
from service.store.simulations import JOB_TTL_S, SimulationStore
from tests.conftest import ROOT, bearer
from tests.fleet import SEED, load_fleet, sanctioning_russia


@pytest.fixture
def as_role(client, tokens):
    def call(role, method, path, body=None):
        return client.open(path, method=method, json=body, headers=bearer(tokens[role]))

    return call


def start_worker(redis_url, tmp_path, *, burst=False, **env):
    """A real `regionlock worker` process on the test Redis."""
    environment = {
        **os.environ,
        "REGIONLOCK_REDIS_URL": redis_url,
        "REGIONLOCK_VAR_DIR": str(tmp_path / "var"),
        "REGIONLOCK_POLICIES": str(ROOT / "policies"),
        **env,
    }
    command = [sys.executable, "-c", "from service.cli import main; main()", "worker"]
    if burst:
        command.append("--burst")
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_for(predicate, timeout=60.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("timed out")


def run_queue(redis_url, tmp_path, **env):
    worker = start_worker(redis_url, tmp_path, burst=True, **env)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err.decode()[-2000:]


def test_a_job_is_accepted_at_once_and_a_worker_reports_it(as_role, redis, redis_url, tmp_path):
    load_fleet(redis, 500, 40)
    started = as_role("editor", "POST", "/v1/policy/simulations", {"bundle": sanctioning_russia()})
    assert started.status_code == 202
    job_id = started.get_json()["id"]
    assert started.headers["Location"] == f"/v1/policy/simulations/{job_id}"
    queued = as_role("editor", "GET", f"/v1/policy/simulations/{job_id}").get_json()
    assert queued["state"] == "queued" and "report" not in queued
    assert 0 < redis.ttl(keys.simulation_job(job_id)) <= JOB_TTL_S

    run_queue(redis_url, tmp_path)

    done = as_role("editor", "GET", f"/v1/policy/simulations/{job_id}").get_json()
    assert done["state"] == "done", done
    assert done["progress"] == {"evaluated": 500, "total": 500}
    report = done["report"]
    # Under 1,000,000 devices and no sample: every device, the exact answer (as /simulate).
    assert report["evaluated"] == 500 and report["changes"] == {"allow->lock": 40}
    assert report["fleet"] == 500 and report["sample"]["size"] == 500
    assert report["intervals"]["changes"]["allow->lock"] == {"estimate": 40, "low": 40, "high": 40}
    direct = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": sanctioning_russia()})
    assert direct.get_json()["changes"] == report["changes"]
    assert report["would_brake"] is True and report["active_version"] == 1

    listed = as_role("editor", "GET", "/v1/policy/simulations").get_json()["simulations"]
    assert [job["id"] for job in listed] == [job_id] and "report" not in listed[0]


def test_a_sample_is_reported_with_intervals_scaled_to_the_fleet(
    as_role, redis, redis_url, tmp_path
):
    load_fleet(redis, 3000, 600)
    body = {"bundle": sanctioning_russia(), "sample": 500, "seed": 11}
    first = as_role("editor", "POST", "/v1/policy/simulations", body).get_json()["id"]
    again = as_role("editor", "POST", "/v1/policy/simulations", body).get_json()["id"]
    run_queue(redis_url, tmp_path)
    one, two = (
        as_role("editor", "GET", f"/v1/policy/simulations/{j}").get_json()["report"]
        for j in (first, again)
    )
    assert one["evaluated"] == 500 and one["fleet"] == 3000
    interval = one["intervals"]["changes"]["allow->lock"]
    assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert interval["estimate"] == round(one["changes"]["allow->lock"] * 3000 / 500)
    assert interval["low"] < 600 < interval["high"]
    # Seeded: the rerun drew the same devices.
    assert one == two


def test_cancel_a_queued_job(as_role, redis, redis_url, tmp_path):
    load_fleet(redis, 50, 5)
    job_id = as_role("editor", "POST", "/v1/policy/simulations", {"bundle": SEED}).get_json()["id"]
    cancelled = as_role("editor", "DELETE", f"/v1/policy/simulations/{job_id}")
    assert cancelled.status_code == 200 and cancelled.get_json()["state"] == "cancelled"
    again = as_role("editor", "DELETE", f"/v1/policy/simulations/{job_id}")
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "job_finished"
    run_queue(redis_url, tmp_path)
    assert as_role("editor", "GET", f"/v1/policy/simulations/{job_id}").get_json()["state"] == (
        "cancelled"
    )
    assert as_role("editor", "DELETE", "/v1/policy/simulations/nope").status_code == 404
    assert as_role("editor", "GET", "/v1/policy/simulations/nope").status_code == 404


def test_roles_are_those_of_simulate(as_role):
    for role in ("agent", "compliance", "auditor", "device"):
        assert as_role(role, "POST", "/v1/policy/simulations", {"bundle": SEED}).status_code == 403
        assert as_role(role, "GET", "/v1/policy/simulations").status_code == 403
    assert as_role("admin", "POST", "/v1/policy/simulations", {"bundle": SEED}).status_code == 202


def test_bad_requests_name_their_field(as_role):
    bad = as_role("editor", "POST", "/v1/policy/simulations", {"bundle": SEED, "sample": 0})
    assert bad.status_code == 422 and "sample" in bad.get_json()["error"]["fields"]
    invalid = dict(SEED, rules=[{"id": "x", "type": "nope"}])
    bad = as_role("editor", "POST", "/v1/policy/simulations", {"bundle": invalid})
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "invalid_bundle"
    assert as_role("editor", "POST", "/v1/policy/simulations", {}).status_code == 422


def test_jobs_are_refused_beside_a_cluster_without_a_jobs_redis(make_app, tokens, captured_logs):
    from service.policy.simulation_jobs import Simulations

    app = make_app()
    app.extensions["regionlock_simulations"] = Simulations(
        app.extensions["regionlock_simulations"].jobs, None
    )
    answer = app.test_client().post(
        "/v1/policy/simulations", json={"bundle": SEED}, headers=bearer(tokens["editor"])
    )
    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == "jobs_unavailable"
    assert "REGIONLOCK_JOBS_REDIS_URL" in answer.get_json()["error"]["message"]


def test_a_killed_worker_is_resumed_from_its_checkpoint(as_role, redis, redis_url, tmp_path):
    load_fleet(redis, 40_000, 3_000)
    body = {"bundle": sanctioning_russia(), "sample": 30_000, "seed": 5}
    job_id = as_role("editor", "POST", "/v1/policy/simulations", body).get_json()["id"]
    env = {"REGIONLOCK_SIMULATION_BATCH": "500", "REGIONLOCK_SIMULATION_LEASE_S": "1"}
    first = start_worker(redis_url, tmp_path, **env)
    try:
        jobs = SimulationStore(redis)

        def checkpointed():
            job = jobs.get(job_id)
            return job.get("done") and int(job["done"]) >= 2000 and job

        wait_for(checkpointed, timeout=90)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = int(jobs.get(job_id)["done"])
        assert jobs.get(job_id)["state"] == "running" and killed_at < 30_000
    finally:
        first.kill()
        first.wait()
    second = start_worker(redis_url, tmp_path, **env)
    try:
        done = wait_for(
            lambda: (job := jobs.get(job_id))["state"] in ("done", "failed") and job, timeout=120
        )
    finally:
        second.terminate()
        second.wait(10)
    assert done["state"] == "done", done.get("error")
    assert int(done["attempts"]) == 2
    # The second worker started from the checkpoint, not from zero.
    assert int(done["resumed_from"]) >= killed_at > 0
    # And its report is the one an uninterrupted run gives.
    fresh = jobs.create(
        {
            "bundle": compile_bundle(sanctioning_russia()).bundle,
            "active_version": 1,
            "sample": 30_000,
            "seed": 5,
            "done": 0,
        }
    )
    context = WorkerContext.on(redis)
    assert JobRunner(context).run(fresh) == "done"
    assert jobs.get(fresh)["report"] == done["report"]
    assert done["report"]["evaluated"] == 30_000


def test_openapi_documents_the_jobs_and_the_publish_field(client):
    spec = client.get("/v1/openapi.json").get_json()
    paths = spec["paths"]
    assert set(paths["/v1/policy/simulations"]) >= {"post", "get"}
    assert set(paths["/v1/policy/simulations/{job_id}"]) >= {"get", "delete"}
    assert "202" in paths["/v1/policy/simulations"]["post"]["responses"]
    schemas = spec["components"]["schemas"]
    assert "simulation_id" in schemas["Publish"]["properties"]
    job = schemas["SimulationJob"]["properties"]
    assert {"state", "progress", "report"} <= set(job)
    assert "intervals" in schemas["SampledSimulation"]["properties"]
