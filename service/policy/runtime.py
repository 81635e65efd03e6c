"""The policy a worker serves: loaded from Redis, compiled once per version, swapped whole.

A daemon thread per worker process checks the active version every ``poll_s`` seconds (one
GET) and compiles a new version off the request path; requests always see one complete
compiled policy, the old one until the new one is ready (never a half-loaded bundle).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis as redis_lib

from service.engine.compiler import CompiledPolicy, compile_bundle
from service.store.audit import AuditStore
from service.store.policy import PolicyStore, VersionConflict

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """A compiled policy and the version number it was published as."""

    version: int
    policy: CompiledPolicy


class PolicyCache:
    """Holds the active compiled policy of this process and keeps it current."""

    def __init__(
        self,
        store: PolicyStore,
        seed_bundle: Callable[[], dict],
        poll_s: float = 0.5,
        compiler: Callable[[dict], CompiledPolicy] = compile_bundle,
    ):
        self.store = store
        self.seed_bundle = seed_bundle
        self.poll_s = poll_s
        self.compiler = compiler
        self._active: ActivePolicy | None = None
        self._lock = threading.Lock()
        self._thread_pid: int | None = None
        self._stop = threading.Event()

    def current(self) -> ActivePolicy:
        """The active policy; the first call in a process loads it (and seeds version 1)."""
        active = self._active
        if active is None:
            with self._lock:
                if self._active is None:
                    self._active = self._load_active()
                active = self._active
        self._ensure_watcher()
        return active

    def refresh(self) -> bool:
        """Load the active version if it changed; True when a new one was swapped in."""
        number = self.store.active_version()
        current = self._active
        if number is None or (current is not None and current.version == number):
            return False
        loaded = self._compile_version(number)
        if loaded is None:
            return False
        # The active pointer is authoritative (a rollback publishes a new, higher number).
        self._active = loaded
        return True

    def loaded_version(self) -> int | None:
        """Version this process serves now (None before the first load)."""
        return self._active.version if self._active else None

    def stop(self) -> None:
        """Stop the watcher thread (tests)."""
        self._stop.set()

    def _load_active(self) -> ActivePolicy:
        number = self.store.active_version()
        if number is None:
            try:
                seed = self.compiler(self.seed_bundle())
                note = "seed bundle from policies/"
                entry = self.store.publish(
                    seed.bundle,
                    published_by="seed",
                    note=note,
                    expected_version=None,
                    compiled=seed.to_snapshot(),
                    audit_fields=AuditStore.entry_fields(
                        "seed", "system", "policy.publish", None, {"version": 1, "note": note}
                    ),
                )
                number = entry["version"]
            except VersionConflict as conflict:
                number = conflict.active
        loaded = self._compile_version(number)
        if loaded is None:
            raise RuntimeError(f"active policy version {number} is missing from the history")
        return loaded

    def _compile_version(self, number: int) -> ActivePolicy | None:
        # The snapshot stored at publish loads in a fraction of a compile (a million
        # allocations: well under a second instead of several), so every worker switches in
        # time; a version published without one is compiled from its bundle.
        snapshot = self.store.compiled(number)
        policy = None
        if snapshot is not None:
            try:
                policy = CompiledPolicy.from_snapshot(snapshot)
            except (ValueError, KeyError, TypeError):
                log.warning("policy version %s: unreadable snapshot, compiling instead", number)
        if policy is None:
            entry = self.store.version(number)
            if entry is None:
                return None
            policy = self.compiler(entry["bundle"])
            del entry
        loaded = ActivePolicy(version=number, policy=policy)
        # A compiled policy is millions of long-lived objects with a million allocations: out
        # of the cyclic collector's reach, its full collections stop walking them on the hot
        # path. (They hold no reference cycles; reference counting still frees an old version.)
        gc.freeze()
        return loaded

    def _ensure_watcher(self) -> None:
        # Threads do not survive fork: start one per worker process, on first use.
        pid = os.getpid()
        if self._thread_pid == pid or self.poll_s <= 0:
            return
        with self._lock:
            if self._thread_pid == pid:
                return
            self._thread_pid = pid
            thread = threading.Thread(target=self._watch, name="policy-watcher", daemon=True)
            thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if self.refresh():
                    log.info("serving policy version %s", self.loaded_version())
            except redis_lib.RedisError:
                continue  # /readyz reports the outage; keep serving the loaded version
            except Exception:  # a bad stored bundle must not kill the watcher
                log.exception("could not load the active policy version")
