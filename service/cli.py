"""The `regionlock` command."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from service.config import ConfigError, load_settings
from service.redis_server import EmbeddedRedisError, redis_url_for


def _fail(message: str) -> None:
    click.echo(f"regionlock: {message}", err=True)
    sys.exit(2)


@contextlib.contextmanager
def _redis():
    """A Redis client for CLI commands (the embedded server's data when no URL is set)."""
    from service.app import connect_redis

    try:
        settings = load_settings()
        with redis_url_for(settings.redis_url, settings.var_dir / "redis") as url:
            client = connect_redis(url, settings)
            yield client
    except (ConfigError, EmbeddedRedisError) as exc:
        _fail(str(exc))


@click.group()
def main() -> None:
    """regionlock: decides at every check-in whether a phone may be used where it is."""


@main.command()
@click.option("--workers", type=int, default=None, help="gunicorn worker processes (default 3)")
@click.option("--threads", type=int, default=4, show_default=True, help="threads per worker")
def serve(workers: int | None, threads: int) -> None:
    """Serve the API under gunicorn on REGIONLOCK_BIND (default 127.0.0.1:8080).

    Without REGIONLOCK_REDIS_URL an embedded redis-server is started (data under var/redis,
    append-only file on) and stopped again on exit. Logs are JSON lines on stderr.
    """
    import logging

    from service.engine.bundle import BundleError
    from service.logs import configure_logging
    from service.signing import KeyRingError

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
                _fail(f"the seed bundle in {settings.policies_dir} is invalid:\n{exc}")
            except KeyRingError as exc:
                _fail(str(exc))
            log.info(
                "serving",
                extra={"redis": _redacted(url), "bind": f"http://{settings.bind}",
                       "keys_dir": str(settings.key_ring_dir)},
            )
            from service.retention import start_sweeper

            # Built in the master before the workers fork: they share the GPS index
            # copy-on-write, and no first check-in waits a second for it.
            app.extensions["regionlock"].evidence.gps.warm()
            # In the master: one sweeper for the whole server, not one per worker.
            start_sweeper(app.extensions["regionlock"].redis, settings.facts_retention_days)
            _run_gunicorn(app, settings.bind, workers or 3, threads)
    except (ConfigError, EmbeddedRedisError) as exc:
        _fail(str(exc))


def _prepare_metrics_dir(default: Path) -> None:
    """Point prometheus-client's multiprocess mode at a fresh folder (PROMETHEUS_MULTIPROC_DIR,
    else var/prometheus): every gunicorn worker writes its samples there, any worker's /metrics
    sums them. Must run before prometheus_client is first imported."""
    folder = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(default)))
    folder.mkdir(parents=True, exist_ok=True)
    # Samples of an earlier run would be added to this one's.
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    if "prometheus_client" in sys.modules:  # pragma: no cover - a programming error
        click.echo("regionlock: warning: metrics are per worker (imported too early)", err=True)


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

    from service.logs import GunicornJsonLogger
    from service.metrics import mark_worker_dead

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


@main.group()
def token() -> None:
    """Create, revoke and list API tokens."""


@token.command("create")
@click.option("--role", required=True, help="device, agent, compliance, editor, auditor or admin")
@click.option("--name", required=True, help="a unique name; audit entries carry it")
def token_create(role: str, name: str) -> None:
    """Create a token and print it, alone, on standard output (only its hash is kept)."""
    from service.store.audit import AuditStore
    from service.store.tokens import TokenError, TokenStore

    with _redis() as client:
        try:
            secret = TokenStore(client).create(name=name, role=role)
        except TokenError as exc:
            _fail(str(exc))
        AuditStore(client).append(
            "cli", "admin", "token.create", detail={"name": name, "role": role}
        )
    click.echo(secret)


@token.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke the token called NAME."""
    from service.store.audit import AuditStore
    from service.store.tokens import TokenError, TokenStore

    with _redis() as client:
        try:
            principal = TokenStore(client).revoke(name)
        except TokenError as exc:
            _fail(str(exc))
        AuditStore(client).append(
            "cli", "admin", "token.revoke", detail={"name": name, "role": principal.role}
        )
    click.echo(f"revoked {name}", err=True)


@token.command("list")
def token_list() -> None:
    """List tokens: name, role, creation time (never the token)."""
    from service.engine.model import iso_utc as iso
    from service.store.tokens import TokenStore

    with _redis() as client:
        for row in TokenStore(client).list():
            click.echo(f"{row['name']}\t{row['role']}\t{iso(row['created_at'])}")


@main.group()
def devices() -> None:
    """Support actions on many devices at once."""


@devices.command("unlock")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="CSV or text file: one IMEI per line (first column); a header 'imei' is fine",
)
@click.option("--reason", required=True, help="why these devices are unlocked")
@click.option("--ticket", default=None, help="the investigation or support ticket")
@click.option(
    "--expires-in",
    "expires_in_s",
    type=click.IntRange(min=1),
    default=None,
    help="seconds until the unlocks lapse (default: until removed)",
)
@click.option("--actor", default=None, help="name written to the audit trail (default cli:$USER)")
@click.option(
    "--role",
    type=click.Choice(["agent", "compliance", "admin"]),
    default="compliance",
    show_default=True,
    help="scope of the unlock: agent unlocks leave sanctions locks",
)
def devices_unlock(path, reason, ticket, expires_in_s, actor, role) -> None:
    """Unlock every IMEI in FILE: invalid lines reported, valid ones applied, safe to re-run."""
    from service.overrides import OverrideService
    from service.store.audit import AuditStore
    from service.store.devices import DeviceStore
    from service.store.tokens import Principal

    principal = Principal(name=actor or f"cli:{os.environ.get('USER', 'unknown')}", role=role)
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = list(enumerate((line.rstrip("\n") for line in handle), start=1))
    counts = {"applied": 0, "unchanged": 0, "refused": 0, "invalid": 0}
    problems = []
    with _redis() as client:
        service = OverrideService(DeviceStore(client), AuditStore(client))
        with click.progressbar(length=len(lines), label="unlocking", file=sys.stderr) as bar:
            last_line = 0
            for row in service.bulk_unlock(iter(lines), principal, reason, ticket, expires_in_s):
                counts[row["status"]] += 1
                if row["status"] in ("invalid", "refused"):
                    problems.append(row)
                bar.update(row["line"] - last_line)
                last_line = row["line"]
            bar.update(len(lines) - last_line)
    for row in problems:
        shown = row.get("imei") or row.get("value")
        click.echo(f"line {row['line']}: {shown}: {row['status']}: {row['error']}", err=True)
    click.echo(
        f"applied {counts['applied']}, unchanged {counts['unchanged']}, "
        f"refused {counts['refused']}, invalid {counts['invalid']}"
    )
    if counts["invalid"] or counts["refused"]:
        sys.exit(1)


from service.cli_keys import keys_group  # noqa: E402
from service.cli_policy import distributors, policy  # noqa: E402  (it imports _redis from here)

main.add_command(policy)
main.add_command(distributors)
main.add_command(keys_group)

@main.group()
def facts() -> None:
    """Recorded check-in facts (privacy retention)."""


@facts.command("sweep")
def facts_sweep() -> None:
    """Remove check-in facts older than REGIONLOCK_FACTS_RETENTION_DAYS (serve does it too)."""
    from service.retention import sweep

    settings = load_settings()
    with _redis() as client:
        report = sweep(client, settings.facts_retention_days)
    click.echo(
        f"devices {report.devices}, changed {report.devices_changed}, "
        f"stream entries removed {report.stream_entries_removed}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
