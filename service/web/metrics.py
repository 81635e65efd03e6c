"""Prometheus metrics, served at /metrics.

Under gunicorn every worker is its own process: ``regionlock serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` (under var/) before this module is imported, so each worker writes
its samples to files there and a scrape of any worker sums them all (prometheus-client's
multiprocess mode). Without that variable (tests, a single process) the default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

REQUESTS = Counter(
    "regionlock_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["endpoint", "method", "status"],
)
VERDICTS = Counter("regionlock_verdicts", "Check-in verdicts given", ["verdict"])
VERDICT_REASONS = Counter(
    "regionlock_verdict_reasons", "Reasons given in check-in verdicts, by reason code", ["code"]
)
DECISION_SECONDS = Histogram(
    "regionlock_decision_seconds",
    "Time to decide and record one check-in (evidence, Redis reads, engine, Redis write)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REDIS_ERRORS = Counter(
    "regionlock_redis_errors", "Requests that failed because Redis could not be used", ["kind"]
)


def record_verdict(document: dict) -> None:
    """Count one check-in verdict and each of its reason codes."""
    VERDICTS.labels(document["verdict"]).inc()
    for reason in document.get("reasons", ()):
        VERDICT_REASONS.labels(reason["code"]).inc()


def render() -> tuple[bytes, str]:
    """The exposition text (every worker's samples in multiprocess mode) and its media type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Tell multiprocess mode a worker is gone (gunicorn ``child_exit``)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)
