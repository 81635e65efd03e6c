"""`regionlock worker`: runs simulation jobs (SPEC §12.5) from the rq queue.

`regionlock serve` starts one (a supervised child process that dies with it); start more with
this command, on any host that reaches the Redis. Each worker also looks, every quarter of a
lease, for jobs whose worker died (lease lapsed) and queues them again: they resume from their
last checkpoint.
"""

from __future__ import annotations

import logging
import threading

import click

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
                    except Exception:  # Redis away for a while: try again later
                        log.warning("could not look for abandoned jobs", exc_info=True)
                    stop.wait(interval)

            stop = threading.Event()
            threading.Thread(target=recover, name="simulation-recovery", daemon=True).start()
            assert context.queue is not None
            context.queue.worker(name=name).work(burst=burst, with_scheduler=False)
            stop.set()
    except (ConfigError, EmbeddedRedisError) as exc:
        fail(str(exc))
