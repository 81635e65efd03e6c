"""`regionlock serve`: the API under granian, with the embedded Redis when none is set.

granian (a Rust HTTP server with a WSGI interface) reads every request asynchronously in Rust
before a Python thread sees it, so clients that trickle their headers or body hold a socket,
not a worker thread; headers must arrive within ``HEADER_READ_TIMEOUT_MS``. The app is built
once in this process (the master) and the workers are forked from it, so they share the GPS
index and the compiled policy copy-on-write and no first check-in waits for either.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click

from service.cli.common import fail
from service.config import ConfigError, load_settings
from service.store.server import EmbeddedRedisError, redis_url_for, terminate_with_parent

# A client has this long to send a request's headers (granian's HTTP/1 header read timeout);
# then the connection is closed. Phones on slow networks send a few hundred bytes: 10 s is ample.
HEADER_READ_TIMEOUT_MS = 10_000
# SIGTERM: workers finish the requests they hold, then are killed after this many seconds, so
# `regionlock serve` is gone within 5 s (the embedded Redis stops after them).
WORKERS_KILL_TIMEOUT_S = 3
# SIGHUP: each worker is replaced in turn; the new one serves this long beside the old one
# before the old one is told to finish its requests and exit.
RESPAWN_INTERVAL_S = 1.0


@click.command()
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="worker processes (default: the number of CPU cores, at least 2)",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Python threads per worker running requests (granian blocking threads)",
)
def serve(workers: int | None, threads: int) -> None:
    """Serve the API under granian on REGIONLOCK_BIND (default 127.0.0.1:8080).

    Without REGIONLOCK_REDIS_URL an embedded redis-server is started (data under var/redis,
    append-only file on), restarted if it dies, and stopped again on exit. Logs are JSON lines
    on stderr. SIGTERM or SIGINT: stop (within 5 s); SIGHUP: replace the workers one by one.
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
        _refuse_if_bound(settings.bind)
        _prepare_metrics_dir(settings.var_dir / "prometheus")
        with redis_url_for(settings.redis_url, settings.var_dir / "redis", supervise=True) as url:
            os.environ["REGIONLOCK_REDIS_URL"] = url
            from service.app import create_app

            try:
                app = create_app({"redis_url": url})
            except BundleError as exc:
                fail(f"the seed bundle in {settings.policies_dir} is invalid:\n{exc}")
            except (KeyRingError, SecretError) as exc:
                # SecretError: this host's shared secrets are not the deployment's (both ids).
                fail(str(exc))
            workers = workers or max(2, os.cpu_count() or 1)
            log.info(
                "serving",
                extra={
                    "redis": _redacted(url),
                    "bind": f"http://{settings.bind}",
                    "keys_dir": str(settings.key_ring_dir),
                    "workers": workers,
                    "threads": threads,
                },
            )
            from service.devices.retention import start_sweeper

            # Built in the master before the workers fork: they share the GPS index
            # copy-on-write, and no first check-in waits a second for it.
            app.extensions["regionlock"].evidence.gps.warm()
            # In the master: one sweeper for the whole server, not one per worker.
            start_sweeper(app.extensions["regionlock"].devices, settings.facts_retention_days)
            _start_stats_sweeper(app, settings)
            # One simulation-job worker (SPEC §12.5), a supervised child that dies with serve;
            # none beside a Cluster without REGIONLOCK_JOBS_REDIS_URL (warned at start-up).
            if app.extensions["regionlock_simulations"].queue is not None:
                from service.cli.worker import supervise_worker

                supervise_worker()
            from service.api.checkin.fast import DirectCheckin

            run_granian(app, settings.bind, workers, threads, direct=[DirectCheckin(app)])
    except (ConfigError, EmbeddedRedisError) as exc:
        fail(str(exc))


def _prepare_metrics_dir(default: Path) -> None:
    """Point prometheus-client's multiprocess mode at a fresh folder (PROMETHEUS_MULTIPROC_DIR,
    else var/prometheus): every worker process writes its samples there, any worker's /metrics
    sums them (the app reads the folder from the variable when it is made)."""
    folder = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(default)))
    folder.mkdir(parents=True, exist_ok=True)
    # Samples of an earlier run would be added to this one's.
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


def _refuse_if_bound(bind: str) -> None:
    """Stop if something already listens on BIND: granian's socket allows port sharing, so a
    second `regionlock serve` on the same port would otherwise quietly take half the traffic."""
    import errno
    import socket

    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"REGIONLOCK_BIND {bind}: address already in use") from None
            # Anything else (no such address, a privileged port) granian reports itself.


def _largest_body(app) -> int:
    """The largest body any route accepts (the policy calls'): the bridge refuses longer ones
    before the app sees them; each route checks its own limit. Another Flask app (the
    benchmarks' bare baseline) gets the default settings' bound."""
    from service.config import Settings

    parts = app.extensions.get("regionlock")
    settings = parts.settings if parts is not None else Settings()
    return max(settings.policy_max_body_bytes, settings.max_body_bytes)


def _redacted(url: str) -> str:
    """URL without its password: start-up lines must not leak credentials."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _start_stats_sweeper(app, settings) -> None:
    """The fleet overview's sweeper (SPEC §14), in the master: lapsed time-boxed unlocks leave
    the locked index within seconds; closed days are rolled up into one key each."""
    if settings.stats != "on":
        return
    from service.devices.stats import StatsSweeper

    StatsSweeper(app.extensions["regionlock"].stats.store, every_s=settings.stats_sweep_s).start()


def run_granian(
    app, bind: str, workers: int, threads: int, native_wsgi: bool = False, direct=()
) -> None:
    """Serve APP with granian's process manager until SIGTERM/SIGINT (SIGHUP: new workers).
    DIRECT: routes the RSGI bridge answers before the app (api/checkin/fast.py).

    NATIVE_WSGI (benchmarks only): granian's own WSGI interface, which reads bodies from the
    app's threads, instead of the RSGI bridge."""
    import multiprocessing

    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server import MPServer

    from service.web.logs import json_log_config
    from service.web.metrics import mark_worker_dead
    from service.web.rsgi import RsgiBridge

    # Workers are forked from this process, which holds the built app (and must: a spawned
    # worker would build its own, warm-up included). Python 3.14 would default to forkserver.
    multiprocessing.set_start_method("fork", force=True)
    host, _, port = bind.rpartition(":")  # checked when the settings were read

    class _Server(MPServer):
        """granian's process manager, telling the metrics which workers are gone."""

        def _worker_pids(self) -> set[int]:
            return {w.inner.pid for w in self.wrks if w.inner.pid is not None}

        def _stop_workers(self):
            gone = self._worker_pids()
            super()._stop_workers()
            for pid in gone:
                mark_worker_dead(pid)

        def _respawn_workers(self, *args, **kwargs):
            before = self._worker_pids()
            super()._respawn_workers(*args, **kwargs)
            for pid in before - self._worker_pids():
                mark_worker_dead(pid)

    server = _Server(
        "service.app:create_app",
        address=host.strip("[]"),
        port=int(port),
        interface=Interfaces.WSGI if native_wsgi else Interfaces.RSGI,
        blocking_threads=threads if native_wsgi else None,
        # HTTP/1.1 only: devices and the console speak it, and its read timeout is the one
        # granian offers (HTTP/2 would need TLS anyway, which a proxy in front terminates).
        http=HTTPModes.http1,
        websockets=False,
        workers=workers,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS),
        # The app writes one JSON line per request itself (never headers, so never a token).
        log_access=False,
        log_dictconfig=json_log_config(),
        respawn_failed_workers=True,
        respawn_interval=RESPAWN_INTERVAL_S,
        workers_kill_timeout=WORKERS_KILL_TIMEOUT_S,
    )
    target = (
        app
        if native_wsgi
        else RsgiBridge(
            app,
            threads,
            max_body_bytes=_largest_body(app),
            direct=direct,
        )
    )
    master = os.getpid()

    def load_in_worker():
        # A worker must not outlive a killed master (it would go on serving, unsupervised).
        # SIGKILL, not SIGTERM: a SIGTERM arriving before granian installs the worker's own
        # handlers meets the master's (inherited, it only sets a flag) and is lost, and a
        # graceful stop that hangs has no master left to kill it after WORKERS_KILL_TIMEOUT_S.
        # Nothing is half-written by it: every state change is one MULTI/EXEC or Lua script.
        terminate_with_parent(signal.SIGKILL)
        if os.getppid() != master:  # the master died before the line above
            os._exit(1)
        return target

    server.serve(target_loader=load_in_worker, wrap_loader=False)
