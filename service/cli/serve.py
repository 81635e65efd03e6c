"""`regionlock serve`: the API under gunicorn, with the embedded Redis when none is set."""

from __future__ import annotations

import os
from pathlib import Path

import click

from service.cli.common import fail
from service.config import ConfigError, load_settings
from service.store.server import EmbeddedRedisError, redis_url_for


@click.command()
@click.option("--workers", type=int, default=None, help="gunicorn worker processes (default 3)")
@click.option("--threads", type=int, default=4, show_default=True, help="threads per worker")
def serve(workers: int | None, threads: int) -> None:
    """Serve the API under gunicorn on REGIONLOCK_BIND (default 127.0.0.1:8080).

    Without REGIONLOCK_REDIS_URL an embedded redis-server is started (data under var/redis,
    append-only file on) and stopped again on exit. Logs are JSON lines on stderr.
    """
    import logging

    from service.crypto.secrets import SecretError
    from service.crypto.signing import KeyRingError
    from service.engine.validation import BundleError
    from service.web.logs import configure_logging

    configure_logging()
    log = logging.getLogger("regionlock.serve")
    try:
        settings = load_settings()
        _prepare_metrics_dir(settings.var_dir / "prometheus")
        with redis_url_for(settings.redis_url, settings.var_dir / "redis") as url:
            os.environ["REGIONLOCK_REDIS_URL"] = url
            from service.app import create_app

            try:
                app = create_app({"redis_url": url})
            except BundleError as exc:
                fail(f"the seed bundle in {settings.policies_dir} is invalid:\n{exc}")
            except (KeyRingError, SecretError) as exc:
                # SecretError: this host's shared secrets are not the deployment's (both ids).
                fail(str(exc))
            log.info(
                "serving",
                extra={
                    "redis": _redacted(url),
                    "bind": f"http://{settings.bind}",
                    "keys_dir": str(settings.key_ring_dir),
                },
            )
            from service.devices.retention import start_sweeper

            # Built in the master before the workers fork: they share the GPS index
            # copy-on-write, and no first check-in waits a second for it.
            app.extensions["regionlock"].evidence.gps.warm()
            # In the master: one sweeper for the whole server, not one per worker.
            start_sweeper(app.extensions["regionlock"].devices, settings.facts_retention_days)
            _run_gunicorn(app, settings.bind, workers or 3, threads)
    except (ConfigError, EmbeddedRedisError) as exc:
        fail(str(exc))


def _prepare_metrics_dir(default: Path) -> None:
    """Point prometheus-client's multiprocess mode at a fresh folder (PROMETHEUS_MULTIPROC_DIR,
    else var/prometheus): every gunicorn worker writes its samples there, any worker's /metrics
    sums them (the app reads the folder from the variable when it is made)."""
    folder = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(default)))
    folder.mkdir(parents=True, exist_ok=True)
    # Samples of an earlier run would be added to this one's.
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


def _redacted(url: str) -> str:
    """URL without its password: start-up lines must not leak credentials."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _run_gunicorn(app, bind: str, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    from service.web.logs import GunicornJsonLogger
    from service.web.metrics import mark_worker_dead

    def child_exit(server, worker) -> None:
        # A dead worker's live samples must not linger in the multiprocess files.
        mark_worker_dead(worker.pid)

    class _Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", threads)
            self.cfg.set("preload_app", True)
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 10)
            # The app logs one JSON line per request itself (never headers, so never a token).
            self.cfg.set("accesslog", None)
            self.cfg.set("logger_class", GunicornJsonLogger)
            self.cfg.set("child_exit", child_exit)
            # Unused, and one fixed socket path would clash between two servers on a host.
            self.cfg.set("control_socket_disable", True)

        def load(self):
            return app

    _Server().run()
