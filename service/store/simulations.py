"""Simulation jobs (SPEC §12.5): their records, leases and checkpoints, and the rq queue.

A job is one hash (``keys.simulation_job``, kept 7 days) listed in a sorted set by creation
time. The hash is the truth: rq (on the jobs Redis) only carries "run job <id>" to a worker.
A worker *claims* a job with a lease (a deadline it renews at every checkpoint); a job whose
worker died keeps its state ``running`` with a lapsed lease, and another worker may claim it
again and resume from its checkpoint (:meth:`SimulationStore.stale` finds them). Every write
of a worker names its claim (``owner``): a worker that lost its lease writes nothing more.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from service.store import keys

#: How long a job (and its report) is kept: 7 days (SPEC §12.5).
JOB_TTL_S = 7 * 24 * 3600

STATES = ("queued", "running", "done", "failed", "cancelled")

# KEYS: job. ARGV: now, lease seconds, owner. Claims a queued job, or a running one whose lease
# lapsed (its worker died): {'ok', <fields...>} or {state}.
_CLAIM = r"""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'gone'} end
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if state == 'queued' or (state == 'running' and lease < tonumber(ARGV[1])) then
  redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[3],
             'lease_until', tonumber(ARGV[1]) + tonumber(ARGV[2]), 'updated_at', ARGV[1])
  redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  return {'ok'}
end
return {state}
"""

# KEYS: job. ARGV: owner, now, lease seconds, then field/value pairs. Writes only while OWNER
# holds the job; answers the job's state ('lost' when another worker holds it).
_CHECKPOINT = r"""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 'lost' end
if state ~= 'running' then return state end
redis.call('HSET', KEYS[1], 'lease_until', tonumber(ARGV[2]) + tonumber(ARGV[3]),
           'updated_at', ARGV[2], unpack(ARGV, 4))
return state
"""

# KEYS: job. ARGV: now. Cancels a queued or running job; answers the state before.
_CANCEL = r"""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1], 'updated_at', ARGV[1])
end
return state
"""

# Fields stored as JSON.
_JSON_FIELDS = ("bundle", "partial", "report", "counts", "progress")


class SimulationStore:
    """Job records on the main Redis (one slot: ``{sim}``)."""

    def __init__(self, redis):
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._checkpoint = redis.register_script(_CHECKPOINT)
        self._cancel = redis.register_script(_CANCEL)

    def create(self, fields: Mapping[str, Any], now: float | None = None) -> str:
        """A new queued job with FIELDS; its id."""
        now = time.time() if now is None else now
        job_id = uuid.uuid4().hex
        key = keys.simulation_job(job_id)
        record = {"id": job_id, "state": "queued", "created_at": repr(now), "attempts": 0}
        record.update(_encode(fields))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=record)
        pipe.expire(key, JOB_TTL_S)
        pipe.zadd(keys.SIMULATION_JOBS, {job_id: now})
        pipe.zremrangebyscore(keys.SIMULATION_JOBS, "-inf", now - JOB_TTL_S)
        pipe.execute()
        return job_id

    def get(self, job_id: str, fields: tuple[str, ...] | None = None) -> dict | None:
        """The job's fields (all, or FIELDS), decoded; None when unknown or expired."""
        key = keys.simulation_job(job_id)
        if fields is None:
            raw = self.redis.hgetall(key)
        else:
            raw = dict(zip(fields, self.redis.hmget(key, fields), strict=True))
            if raw.get("state") is None and "state" in fields:
                return None
            raw = {k: v for k, v in raw.items() if v is not None}
        return _decode(raw) if raw else None

    def ids(self, now: float | None = None, limit: int = 100) -> list[str]:
        """The kept jobs' ids, newest first (at most LIMIT)."""
        now = time.time() if now is None else now
        return self.redis.zrevrangebyscore(
            keys.SIMULATION_JOBS, "+inf", now - JOB_TTL_S, start=0, num=limit
        )

    def claim(self, job_id: str, owner: str, lease_s: float) -> str:
        """Take the job for OWNER for LEASE_S seconds: 'ok', or the state that forbids it."""
        reply = self._claim(
            keys=[keys.simulation_job(job_id)], args=[repr(time.time()), lease_s, owner]
        )
        return _text(reply[0])

    def checkpoint(self, job_id: str, owner: str, lease_s: float, fields: Mapping[str, Any]) -> str:
        """Record FIELDS and renew the lease while OWNER holds the job; the job's state
        ('running' to go on; 'cancelled', 'lost', 'gone': stop)."""
        flat: list[Any] = []
        for name, value in _encode(fields).items():
            flat.extend((name, value))
        reply = self._checkpoint(
            keys=[keys.simulation_job(job_id)], args=[owner, repr(time.time()), lease_s, *flat]
        )
        return _text(reply)

    def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job: the state it had ('gone' when unknown)."""
        return _text(self._cancel(keys=[keys.simulation_job(job_id)], args=[repr(time.time())]))

    def stale(self, now: float | None = None) -> list[str]:
        """Jobs a worker should (re)start: running ones whose lease lapsed (their worker died)."""
        now = time.time() if now is None else now
        found = []
        for job_id in self.ids(now, limit=1000):
            key = keys.simulation_job(job_id)
            state, lease, requeued = self.redis.hmget(key, ["state", "lease_until", "requeued_at"])
            lapsed = float(lease or 0)
            # Once per lapse: a requeued job is not queued again until it is claimed and lapses.
            if state == "running" and lapsed < now and float(requeued or 0) < lapsed:
                self.redis.hset(key, "requeued_at", repr(now))
                found.append(job_id)
        return found


class JobQueue:
    """The rq queue on the jobs Redis: carries job ids to workers."""

    def __init__(self, connection):
        from rq import Queue

        self.connection = connection
        self.queue = Queue(keys.SIMULATION_QUEUE, connection=connection)

    def enqueue(self, job_id: str) -> None:
        """Ask a worker to run (or resume) simulation JOB_ID."""
        self.queue.enqueue_call(
            "service.policy.simulation_jobs.run_job",
            args=(job_id,),
            timeout=-1,  # a 100-million-device job runs long; cancel stops it
            result_ttl=3600,
            failure_ttl=JOB_TTL_S,
            description=f"simulation {job_id}",
        )

    def worker(self, name: str | None = None):
        """An rq worker of the queue that runs jobs in its own process (no fork per job: a
        killed worker takes its job with it, and another resumes it from the checkpoint)."""
        from rq import SimpleWorker

        return SimpleWorker([self.queue], connection=self.connection, name=name)


def _encode(fields: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _JSON_FIELDS:
            out[name] = orjson.dumps(value)
        elif value is None:
            out[name] = ""
        elif isinstance(value, float):
            out[name] = repr(value)
        else:
            out[name] = value
    return out


def _decode(raw: Mapping[str, Any]) -> dict:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        name = _text(name)
        value = _text(value)
        if name in _JSON_FIELDS:
            out[name] = orjson.loads(value) if value else None
        else:
            out[name] = value
    return out


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def connect_jobs_redis(jobs_url: str | None, main_url: str, main_is_cluster: bool, settings):
    """The rq queue's connection: JOBS_URL, else the main Redis when it is a standalone one;
    None beside a Cluster without JOBS_URL (rq's multi-key commands cross slots). rq wants
    bytes replies, so this is a client of its own."""
    import redis as redis_lib

    url = jobs_url or (None if main_is_cluster else main_url)
    if url is None:
        return None
    return redis_lib.Redis.from_url(
        url,
        socket_timeout=max(settings.redis_timeout_s, 5.0),
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
