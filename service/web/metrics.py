"""Prometheus metrics, served at /metrics, made by the app factory (one ``Metrics`` per app).

Under granian every worker is its own process: ``regionlock serve`` gives the app a folder
(``Settings.metrics_dir``, prometheus-client's ``PROMETHEUS_MULTIPROC_DIR``), each worker writes
its samples to files there and a scrape of any worker sums them all (prometheus-client's
multiprocess mode). Without a folder (tests, a single process) the app's own registry is served.

Nothing is made at import: the metrics are built in ``create_app`` after the settings are read,
and multiprocess mode is switched on there, so the order in which modules (or prometheus-client)
are imported does not matter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Methods counted under their own name (RFC 9110 and PATCH); any other a client invents is
# counted as "other", so nobody can add series (memory, scrape size) by making names up.
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD = "other"

_DECISION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _use_multiprocess_files(folder: Path) -> None:
    """Make every metric value made from now on in this process live in FOLDER's files.

    prometheus-client picks its value class when it is first imported, from the environment;
    setting the class here (its hook for custom process identifiers) makes the choice
    independent of import order. Samples are written under $PROMETHEUS_MULTIPROC_DIR, read when
    a value's file is opened, so the variable is set too (and forked workers inherit it).
    """
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)


# prometheus-client asks the process id at every increment, to notice a fork; os.getpid() is a
# system call (glibc no longer caches it), five a check-in. Kept here instead, renewed in the
# child of every fork (tests/test_ops.py forks workers and counts their files).
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _process_id() -> int:
    return _PID[0]


class _PolicyVersion(Collector):
    """``regionlock_policy_version``: the policy version this process serves, read at scrape
    time (no sample before the process first loads a policy)."""

    def __init__(self, loaded_version: Callable[[], int | None]):
        self.loaded_version = loaded_version

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "regionlock_policy_version", "Policy version this process serves (SPEC §6)"
        )
        version = self.loaded_version()
        if version is not None:
            family.add_metric([], version)
        yield family


class Metrics:
    """The service's counters and histogram, registered in a registry of their own."""

    def __init__(self, multiprocess_dir: Path | None = None):
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            _use_multiprocess_files(multiprocess_dir)
        self.registry = CollectorRegistry()
        if multiprocess_dir is None:
            # What the default registry offers a single process: its CPU, memory and GC.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self.requests = Counter(
            "regionlock_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.verdicts = Counter(
            "regionlock_verdicts", "Check-in verdicts given", ["verdict"], registry=self.registry
        )
        self.verdict_reasons = Counter(
            "regionlock_verdict_reasons",
            "Reasons given in check-in verdicts, by reason code",
            ["code"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "regionlock_decision_seconds",
            "Time to decide and record one check-in (evidence, Redis reads, engine, Redis write)",
            buckets=_DECISION_BUCKETS,
            registry=self.registry,
        )
        # The labelled children met so far, by their labels: prometheus-client's labels() takes
        # a lock and builds a key per call (issue 17.2: off the check-in's path). Bounded like
        # the series themselves (route templates, methods, statuses, verdicts, reason codes).
        self._children: dict = {}
        self.redis_errors = Counter(
            "regionlock_redis_errors",
            "Requests that failed because Redis could not be used",
            ["kind"],
            registry=self.registry,
        )
        self._policy_version: _PolicyVersion | None = None

    def watch_policy_version(self, loaded_version: Callable[[], int | None]) -> None:
        """Export ``regionlock_policy_version`` from LOADED_VERSION (the policy cache's
        ``loaded_version``), asked at each scrape: in multiprocess mode, the scraped worker's."""
        self._policy_version = _PolicyVersion(loaded_version)
        self.registry.register(self._policy_version)

    def observe_request(self, endpoint: str, method: str, status: int) -> None:
        """Count one answered request. ENDPOINT is the route template (``unmatched`` for a path
        no route serves); an unknown METHOD is counted as ``other``."""
        key = (endpoint, method if method in _METHODS else OTHER_METHOD, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(*key)
        child.inc()

    def record_verdict(self, document: dict) -> None:
        """Count one check-in verdict and each of its reason codes."""
        child = self._children.get(document["verdict"])
        if child is None:
            child = self._children[document["verdict"]] = self.verdicts.labels(document["verdict"])
        child.inc()
        for reason in document.get("reasons", ()):
            key = ("reason", reason["code"])
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.verdict_reasons.labels(reason["code"])
            child.inc()

    def redis_error(self, exc: BaseException) -> None:
        """Count one request that Redis failed (by the error's class name)."""
        self.redis_errors.labels(type(exc).__name__).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text (every worker's samples in multiprocess mode) and its media type."""
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))
            if self._policy_version is not None:
                registry.register(self._policy_version)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Tell multiprocess mode a worker is gone (called by ``regionlock serve``'s granian process
    manager when it stops or replaces a worker; granian has no ``child_exit`` hook)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)
