"""`regionlock worker`: runs simulation jobs (SPEC §12.5) from the rq queue.

`regionlock serve` starts one (a supervised child process that dies with it); start more with
this command, on any host that reaches the Redis. Each worker also looks, every quarter of a
lease, for jobs whose worker died (lease lapsed) and queues them again: they resume from their
last checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time

import click
import redis as redis_lib

from service.cli.common import fail
from service.config import ConfigError, load_settings
from service.store.server import EmbeddedRedisError, redis_url_for

log = logging.getLogger("regionlock.worker")


@click.command()
@click.option("--burst", is_flag=True, help="exit once the queue is empty")
@click.option("--name", default=None, help="the worker's name in rq (default: rq's own)")
def worker(burst: bool, name: str | None) -> None:
    """Run simulation jobs from the queue (REGIONLOCK_JOBS_REDIS_URL, else the main Redis)."""
    from service.policy.simulation_jobs import build_worker_context, requeue_stale, set_context
    from service.store.client import connect_redis
    from service.web.logs import configure_logging

    configure_logging()
    try:
        settings = load_settings()
        with redis_url_for(settings.redis_url, settings.var_dir / "redis") as url:
            client = connect_redis(url, settings)
            context = build_worker_context(settings, client, url)
            if context.queue is None:
                fail(
                    "the main Redis is a Cluster, on which rq cannot run: set "
                    "REGIONLOCK_JOBS_REDIS_URL to a single Redis for the job queue"
                )
            set_context(context)
            interval = max(0.5, settings.simulation_lease_s / 4)

            def recover() -> None:
                while True:
                    try:
                        requeue_stale(context)
                    except redis_lib.RedisError as exc:  # Redis away: try again later
                        log.warning("could not look for abandoned jobs", extra={"error": str(exc)})
                    stop.wait(interval)

            stop = threading.Event()
            threading.Thread(target=recover, name="simulation-recovery", daemon=True).start()
            assert context.queue is not None
            while True:
                try:
                    context.queue.worker(name=name).work(burst=burst, with_scheduler=False)
                    break
                except redis_lib.RedisError as exc:  # Redis away: wait for it, as serve does
                    log.warning("job queue unreachable, retrying", extra={"error": str(exc)})
                    time.sleep(1.0)
            stop.set()
    except (ConfigError, EmbeddedRedisError) as exc:
        fail(str(exc))


# --- the worker `regionlock serve` starts ------------------------------------------------------

#: Pause before restarting a worker that died, doubled while it keeps dying quickly.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
#: A worker that ran this long is taken to have worked: the back-off starts again.
STABLE_AFTER_S = 30.0


def supervise_worker() -> threading.Thread:
    """Start one `regionlock worker` child process and restart it whenever it dies, from a
    daemon thread (the child's parent for PR_SET_PDEATHSIG: it is SIGKILLed when `serve`
    ends; a job it held is resumed from its checkpoint by the next worker)."""
    import os
    import signal
    import subprocess
    import sys

    from service.store.server import terminate_with_parent

    command = [sys.executable, "-c", "from service.cli import main; main()", "worker"]

    def run() -> None:
        backoff = RESTART_BACKOFF_S
        while True:
            started = time.monotonic()
            child = subprocess.Popen(
                command,
                env=dict(os.environ),
                preexec_fn=lambda: terminate_with_parent(signal.SIGKILL),
            )
            log.info("simulation worker started", extra={"pid": child.pid})
            code = child.wait()
            if time.monotonic() - started >= STABLE_AFTER_S:
                backoff = RESTART_BACKOFF_S
            pause, backoff = backoff, min(backoff * 2, RESTART_BACKOFF_MAX_S)
            log.error(
                "simulation worker exited",
                extra={"pid": child.pid, "exit_code": code, "restart_in_s": pause},
            )
            time.sleep(pause)

    thread = threading.Thread(target=run, name="simulation-worker-supervisor", daemon=True)
    thread.start()
    return thread
