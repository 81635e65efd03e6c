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

import orjson
import redis as redis_lib

from service.engine.model import DAY_S
from service.store import keys

log = logging.getLogger(__name__)


# Compare-and-set, so a check-in landing during the sweep is never undone. KEYS: device hash.
# ARGV: facts value read, history value read, new history ("" to delete), drop facts (1/0).
_FORGET = r"""
local changed = 0
if ARGV[4] == '1' and redis.call('HGET', KEYS[1], 'facts') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'facts')
  changed = 1
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'history') == ARGV[2] then
  if ARGV[3] == '' then
    redis.call('HDEL', KEYS[1], 'history')
  else
    redis.call('HSET', KEYS[1], 'history', ARGV[3])
  end
  changed = 1
end
return changed
"""


@dataclass
class SweepReport:
    """What one sweep looked at and removed."""

    devices: int = 0
    devices_changed: int = 0
    stream_entries_removed: int = 0


def _old_history_removed(history: str, cutoff: float) -> str:
    kept = []
    for line in history.split("\n"):
        body = line.split("|", 3)[3]
        if orjson.loads(body)["at"] >= cutoff:
            kept.append(line)
    return "\n".join(kept)


def sweep(redis, retention_days: int, now: float | None = None, batch: int = 1000) -> SweepReport:
    """Remove check-in facts older than RETENTION_DAYS from every device and the stream."""
    now = time.time() if now is None else now
    cutoff = now - retention_days * DAY_S
    forget = redis.register_script(_FORGET)
    report = SweepReport()
    pending: list[str] = []

    def process() -> None:
        pipe = redis.pipeline(transaction=False)
        for key in pending:
            pipe.hmget(key, "facts", "history")
        for key, (facts, history) in zip(pending, pipe.execute(), strict=True):
            report.devices += 1
            stale_facts = bool(facts) and orjson.loads(facts)["at"] < cutoff
            new_history = _old_history_removed(history, cutoff) if history else ""
            if not stale_facts and (not history or new_history == history):
                continue
            changed = forget(
                keys=[key],
                args=[facts or "", history or "", new_history, "1" if stale_facts else "0"],
            )
            report.devices_changed += int(changed)
        pending.clear()

    for key in redis.scan_iter(match=keys.DEVICE_SCAN_PATTERN, count=batch):
        pending.append(key if isinstance(key, str) else key.decode())
        if len(pending) >= batch:
            process()
    if pending:
        process()
    report.stream_entries_removed = redis.xtrim(
        keys.CHECKIN_FACTS, minid=f"{int(cutoff * 1000)}-0", approximate=False
    )
    return report


def start_sweeper(redis, retention_days: int, every_s: float = 6 * 3600) -> threading.Thread:
    """Run sweep() now and then every EVERY_S seconds in a daemon thread."""

    def loop() -> None:
        while True:
            try:
                report = sweep(redis, retention_days)
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
