"""Simulations as jobs, at fleet scale (SPEC §12.5).

A job replays a candidate bundle against the active version it was created on, over the
fleet's devices or a uniform random sample of them, in a worker (``regionlock worker``, one
started by ``regionlock serve``) rather than in an HTTP request.

The draw: the sampling index (``store/sampling.py``) lays the fleet out as positions
``0 .. N-1`` from its 16,384 per-slot counts, read once and pinned in the job; ``size``
positions are drawn uniformly without replacement with numpy's generator seeded by the job's
seed (by default a number made from the bundle's digest: the same bundle draws the same
devices), sorted, and replayed in batches. A census (size = N) replays every position.

Checkpoints: after every batch the job records how many positions are done and the counts so
far, and renews its lease; a worker that is killed leaves the job ``running`` with a lapsing
lease, and the next worker (each one looks for such jobs every few seconds) claims it, draws
the same positions from the pinned counts and seed, and goes on from the checkpoint. Cancel
is seen at the next checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.engine.compiler import CompiledPolicy, compile_bundle
from service.policy.simulate import Replay, SimulationReport
from service.store.devices import DeviceStore
from service.store.policy import PolicyStore
from service.store.sampling import SamplingIndex
from service.store.simulations import JobQueue, SimulationStore

log = logging.getLogger(__name__)

#: Above this many recorded devices a job always samples (SPEC §12.5) this many.
SAMPLE_ABOVE = 1_000_000
#: At most this many sampled devices are replayed by a publish's own brake (SPEC §12.5).
BRAKE_SAMPLE = 100_000
#: Devices per batch: one pipelined read, then a checkpoint.
BATCH = 10_000
#: Seconds a worker holds a job between checkpoints before another may take it over.
LEASE_S = 60.0


def bundle_digest(bundle: dict) -> str:
    """The SHA-256 of a normalised bundle (keys sorted): names "the same bundle"."""
    return hashlib.sha256(orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS)).hexdigest()


def default_seed(digest: str) -> int:
    """The seed of a draw when none is given: from the bundle's digest (a rerun of the same
    bundle draws the same devices)."""
    return int(digest[:12], 16)


def draw(fleet: int, size: int, seed: int) -> np.ndarray:
    """SIZE distinct positions of 0..FLEET-1, uniform, seeded, sorted (all of them when
    SIZE >= FLEET)."""
    if size >= fleet:
        return np.arange(fleet, dtype=np.int64)
    rng = np.random.default_rng(seed)
    positions = rng.choice(fleet, size=size, replace=False, shuffle=False)
    positions.sort()
    return positions


@dataclass
class Plan:
    """What a run replays: the pinned per-slot counts, the fleet size, the draw."""

    counts: list[int]
    size: int
    seed: int

    @property
    def fleet(self) -> int:
        return sum(self.counts)

    def positions(self) -> np.ndarray:
        return draw(self.fleet, self.size, self.seed)


def sample_size(fleet: int, requested: int | None) -> int:
    """Devices a run replays: REQUESTED (at most the fleet), else the fleet up to
    :data:`SAMPLE_ABOVE` and that many beyond it."""
    if requested is not None:
        return min(requested, fleet)
    return fleet if fleet <= SAMPLE_ABOVE else SAMPLE_ABOVE


def run_plan(
    devices: DeviceStore,
    index: SamplingIndex,
    candidate: CompiledPolicy,
    active: CompiledPolicy,
    plan: Plan,
    *,
    active_version: int | None,
    done: int = 0,
    partial: dict | None = None,
    batch: int = BATCH,
    on_batch=None,
) -> SimulationReport | None:
    """Replay PLAN's positions from DONE on (with the counts of PARTIAL so far). ON_BATCH(done,
    report) after each batch may answer False to stop (then None is returned)."""
    positions = plan.positions()
    report = SimulationReport(
        max_new_lock_ratio=candidate.max_new_lock_ratio,
        active_version=active_version,
        fleet=plan.fleet,
        drawn=len(positions),
        seed=plan.seed,
    )
    if partial:
        report.resume(partial)
    replay = Replay(candidate, active, report)
    total = len(positions)

    def fetch(start: int):
        chunk = positions[start : start + batch].tolist()
        imeis = index.imeis_at(chunk, plan.counts)
        return len(chunk), devices.fields_and_overrides(
            [imei or "" for imei in imeis], replay.fields
        )

    # The next batch is read while this one is decided (Redis and Python on two cores).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="simulation-read") as reads:
        pending = reads.submit(fetch, done) if done < total else None
        while pending is not None:
            count, (rows, overrides) = pending.result()
            following = done + count
            pending = reads.submit(fetch, following) if following < total else None
            replay.feed(rows, overrides)
            done = following
            if on_batch is not None and on_batch(done, report) is False:
                if pending is not None:
                    pending.cancel()
                return None
    return report


def brake_report(
    devices: DeviceStore,
    index: SamplingIndex,
    candidate: CompiledPolicy,
    active: CompiledPolicy,
    *,
    active_version: int | None,
    limit: int = BRAKE_SAMPLE,
) -> SimulationReport:
    """The publish's own brake (SPEC §12.5): at most LIMIT sampled devices, in the request."""
    counts = index.counts()
    seed = default_seed(bundle_digest(candidate.bundle))
    plan = Plan(counts, sample_size(sum(counts), limit), seed)
    report = run_plan(devices, index, candidate, active, plan, active_version=active_version)
    assert report is not None
    return report


# --- the job records ---------------------------------------------------------------------------


class JobsUnavailable(RuntimeError):
    """No job queue: a Redis Cluster without REGIONLOCK_JOBS_REDIS_URL."""


class Simulations:
    """Starts, lists, reads and cancels simulation jobs (the API's and the console's side)."""

    def __init__(self, jobs: SimulationStore, queue: JobQueue | None):
        self.jobs = jobs
        self.queue = queue

    def start(
        self,
        bundle: dict,
        *,
        active_version: int | None,
        sample: int | None,
        seed: int | None,
        actor: str,
    ) -> str:
        """Queue a job for BUNDLE (normalised, valid) against ACTIVE_VERSION; its id."""
        if self.queue is None:
            raise JobsUnavailable(
                "simulation jobs need a single Redis for their queue: set "
                "REGIONLOCK_JOBS_REDIS_URL (the main Redis is a Cluster)"
            )
        digest = bundle_digest(bundle)
        job_id = self.jobs.create(
            {
                "bundle": bundle,
                "digest": digest,
                "active_version": "" if active_version is None else active_version,
                "sample": "" if sample is None else sample,
                "seed": default_seed(digest) if seed is None else seed,
                "created_by": actor,
                "done": 0,
            }
        )
        self.queue.enqueue(job_id)
        return job_id

    def describe(self, job_id: str, *, with_bundle: bool = False) -> dict | None:
        """The API form of a job (None when unknown or expired)."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        return job_document(job, with_bundle=with_bundle)

    def list(self) -> list[dict]:
        """Kept jobs, newest first (without their reports)."""
        found = []
        for job_id in self.jobs.ids():
            job = self.jobs.get(job_id)
            if job is not None:
                document = job_document(job)
                document.pop("report", None)
                found.append(document)
        return found

    def cancel(self, job_id: str) -> str:
        """Cancel a job: the state it had ('gone' when unknown)."""
        return self.jobs.cancel(job_id)


def job_document(job: dict, *, with_bundle: bool = False) -> dict[str, Any]:
    """A job record in API form."""
    from service.engine.model import iso_utc

    def number(name: str) -> int | None:
        value = job.get(name)
        return int(value) if value not in (None, "") else None

    progress = job.get("progress") or {"evaluated": 0, "total": None}
    document: dict[str, Any] = {
        "id": job["id"],
        "state": job["state"],
        "created_at": iso_utc(float(job["created_at"])),
        "created_by": job.get("created_by"),
        "active_version": number("active_version"),
        "sample": number("sample"),
        "seed": number("seed"),
        "digest": job.get("digest"),
        "progress": progress,
        "attempts": number("attempts") or 0,
    }
    if job.get("finished_at"):
        document["finished_at"] = iso_utc(float(job["finished_at"]))
    if job.get("error"):
        document["error"] = job["error"]
    if job["state"] == "done" and job.get("report") is not None:
        document["report"] = job["report"]
    if with_bundle:
        document["bundle"] = job.get("bundle")
    return document


# --- the worker's side -------------------------------------------------------------------------


@dataclass
class WorkerContext:
    """What a worker process uses to run jobs (built once per process)."""

    devices: DeviceStore
    index: SamplingIndex
    jobs: SimulationStore
    policies: PolicyStore
    queue: JobQueue | None
    lease_s: float = LEASE_S
    batch: int = BATCH

    @classmethod
    def on(cls, client, queue: JobQueue | None = None, **options) -> WorkerContext:
        """The stores of the Redis CLIENT (OPTIONS: ``lease_s``, ``batch``); QUEUE None for
        jobs run in this process (tests, benchmarks)."""
        return cls(
            devices=DeviceStore(client),
            index=SamplingIndex(client),
            jobs=SimulationStore(client),
            policies=PolicyStore(client),
            queue=queue,
            **options,
        )


_context: WorkerContext | None = None


def set_context(context: WorkerContext) -> None:
    """The stores this process's jobs use (``regionlock worker`` sets them before working)."""
    global _context
    _context = context


def run_job(job_id: str) -> str:
    """rq's entry point: run (or resume) simulation JOB_ID; the state it ended in."""
    assert _context is not None, "set_context() first (regionlock worker does)"
    return JobRunner(_context).run(job_id)


class JobRunner:
    """Runs one job from its checkpoint to the end, checkpointing every batch."""

    def __init__(self, context: WorkerContext):
        self.context = context
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{time.time()}"

    def _compiled_version(self, number: int | None, fallback: CompiledPolicy) -> CompiledPolicy:
        if number is None:
            return fallback
        entry = self.context.policies.version(number)
        if entry is None:
            raise LookupError(f"policy version {number} is missing from the history")
        return compile_bundle(entry["bundle"])

    def run(self, job_id: str) -> str:
        context = self.context
        jobs = context.jobs
        claimed = jobs.claim(job_id, self.owner, context.lease_s)
        if claimed != "ok":
            return claimed  # done, cancelled, gone, or another worker holds it
        job = jobs.get(job_id)
        assert job is not None
        try:
            candidate = compile_bundle(job["bundle"])
            active_version = int(job["active_version"]) if job.get("active_version") else None
            active = self._compiled_version(active_version, candidate)
            counts = job.get("counts")
            if counts is None:
                counts = context.index.counts()
                requested = int(job["sample"]) if job.get("sample") else None
                size = sample_size(sum(counts), requested)
                state = jobs.checkpoint(
                    job_id,
                    self.owner,
                    context.lease_s,
                    {"counts": counts, "size": size, "progress": {"evaluated": 0, "total": size}},
                )
                if state != "running":
                    return state
            else:
                size = int(job["size"])
            plan = Plan(counts, size, int(job["seed"]))
            done = int(job.get("done") or 0)
            if done:  # a resumption: say from where (the job shows it, tests check it)
                jobs.checkpoint(job_id, self.owner, context.lease_s, {"resumed_from": done})
            outcome = {"state": "running"}

            def checkpoint(done: int, report: SimulationReport) -> bool:
                outcome["state"] = jobs.checkpoint(
                    job_id,
                    self.owner,
                    context.lease_s,
                    {
                        "done": done,
                        "partial": report.partial(),
                        "progress": {"evaluated": done, "total": size},
                    },
                )
                return outcome["state"] == "running"

            report = run_plan(
                context.devices,
                context.index,
                candidate,
                active,
                plan,
                active_version=active_version,
                done=done,
                partial=job.get("partial"),
                batch=context.batch,
                on_batch=checkpoint,
            )
            if report is None:
                return outcome["state"]
            state = jobs.checkpoint(
                job_id,
                self.owner,
                context.lease_s,
                {
                    "state": "done",
                    "report": report.to_dict(),
                    "progress": {"evaluated": size, "total": size},
                    "finished_at": time.time(),
                },
            )
            return "done" if state == "running" else state
        except Exception as exc:  # a job's failure is its record's, not the worker's
            log.exception("simulation job failed", extra={"job": job_id})
            jobs.checkpoint(
                job_id,
                self.owner,
                context.lease_s,
                {
                    "state": "failed",
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "finished_at": time.time(),
                    "trace": traceback.format_exc()[-2000:],
                },
            )
            return "failed"


def requeue_stale(context: WorkerContext) -> list[str]:
    """Queue again the jobs whose worker died (lease lapsed): their ids."""
    stale = context.jobs.stale()
    if context.queue is not None:
        for job_id in stale:
            log.info("resuming an abandoned simulation job", extra={"job": job_id})
            context.queue.enqueue(job_id)
    return stale


# --- wiring ------------------------------------------------------------------------------------


def build_simulations(settings, client) -> Simulations:
    """The app's side: job records on CLIENT, the queue on the jobs Redis (None, with a
    start-up warning, beside a Cluster without REGIONLOCK_JOBS_REDIS_URL)."""
    from service.store.client import is_cluster
    from service.store.simulations import connect_jobs_redis

    connection = connect_jobs_redis(
        settings.jobs_redis_url, settings.redis_url, is_cluster(client), settings
    )
    if connection is None:
        log.warning(
            "simulation jobs are off: the main Redis is a Cluster, on which rq cannot run; "
            "set REGIONLOCK_JOBS_REDIS_URL to a single Redis for their queue"
        )
    return Simulations(SimulationStore(client), JobQueue(connection) if connection else None)


def build_worker_context(settings, client, url: str) -> WorkerContext:
    """A worker process's stores (``regionlock worker``); URL: the main Redis's."""
    from service.store.client import is_cluster
    from service.store.simulations import connect_jobs_redis

    connection = connect_jobs_redis(settings.jobs_redis_url, url, is_cluster(client), settings)
    return WorkerContext.on(
        client,
        JobQueue(connection) if connection else None,
        lease_s=settings.simulation_lease_s,
        batch=settings.simulation_batch,
    )


def job_report(job: dict, candidate: CompiledPolicy) -> SimulationReport:
    """A finished job's report as the brake reads it (the limit: the candidate's)."""
    stored = job["report"]
    report = SimulationReport(
        max_new_lock_ratio=candidate.max_new_lock_ratio,
        active_version=stored.get("active_version"),
        fleet=stored.get("fleet"),
        drawn=(stored.get("sample") or {}).get("size"),
        seed=(stored.get("sample") or {}).get("seed"),
    )
    report.resume(stored)
    return report
