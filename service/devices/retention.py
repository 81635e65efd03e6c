"""Privacy retention: recorded check-in facts are kept for a bounded time (SPEC §4).

A device record keeps the places of its latest check-in (`facts`, used to explain and to
simulate) and a short decision history with places. Both are check-in facts: once older than
the retention period (REGIONLOCK_FACTS_RETENTION_DAYS, default 90) they are removed, as are
entries of the check-in facts stream. The verdict, the device state (bindings, grace periods)
and the activation record stay: they are decisions, not facts, and the verdict depends on them.

`regionlock serve` runs the sweep in its master process every few hours; `regionlock facts
sweep` runs it once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis as redis_lib

from service.engine.model import DAY_S
from service.store.devices import DeviceStore
from service.store.records import LastCheckin, decode_history, encode_history

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep looked at and removed."""

    devices: int = 0
    devices_changed: int = 0
    stream_entries_removed: int = 0


def _recent_history(history: str, cutoff: float) -> str:
    """The stored HISTORY without its entries older than CUTOFF."""
    return encode_history(line for line in decode_history(history) if line.at >= cutoff)


def sweep(
    devices: DeviceStore, retention_days: int, now: float | None = None, batch: int = 1000
) -> SweepReport:
    """Remove check-in facts older than RETENTION_DAYS from every device and the stream."""
    now = time.time() if now is None else now
    cutoff = now - retention_days * DAY_S
    report = SweepReport()
    for rows in devices.field_batches(("facts", "history"), batch=batch, scan_count=batch):
        for imei, (facts, history) in rows:
            report.devices += 1
            stale_facts = bool(facts) and LastCheckin.decode(facts).at < cutoff
            new_history = _recent_history(history, cutoff) if history else ""
            if not stale_facts and (not history or new_history == history):
                continue
            changed = devices.forget_facts(
                imei,
                facts_read=facts or "",
                history_read=history or "",
                new_history=new_history,
                drop_facts=stale_facts,
            )
            report.devices_changed += int(changed)
    report.stream_entries_removed = devices.trim_facts_stream(before=cutoff)
    return report


def start_sweeper(
    devices: DeviceStore, retention_days: int, every_s: float = 6 * 3600
) -> threading.Thread:
    """Run sweep() now and then every EVERY_S seconds in a daemon thread."""

    def loop() -> None:
        while True:
            try:
                report = sweep(devices, retention_days)
                log.info(
                    "retention sweep",
                    extra={
                        "devices": report.devices,
                        "changed": report.devices_changed,
                        "stream_removed": report.stream_entries_removed,
                    },
                )
            except redis_lib.RedisError as exc:
                log.warning("retention sweep failed: %s", type(exc).__name__)
            time.sleep(every_s)

    thread = threading.Thread(target=loop, name="retention-sweeper", daemon=True)
    thread.start()
    return thread
