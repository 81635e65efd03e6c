"""Fleet overview (SPEC §14): what each write adds to the day's counters and to the locked
index, the stats report, the CSV exports, and the sweeper (lapsed unlocks, day roll-ups).

The counters and the index are written by the device's own scripts (see
:mod:`service.store.fleet_stats`); this module decides what they say. A device's index entry
is always computed by one function, :func:`locked_entry`, from a decision with its override
applied: at a check-in from the check-in's decision; at an override change, a lapse or the
backfill from the lock basis stored by the last check-in (``policy_reasons``, ``distributor``)
with the override as it is then (:func:`entry_from_basis`).
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import orjson
import redis as redis_lib

from service.engine.model import (
    Decision,
    DeviceState,
    Override,
    Reason,
    apply_override,
    combine_actions,
    iso_utc,
)
from service.store.audit import AuditStore
from service.store.fleet_stats import (
    CheckinCounts,
    IndexBasis,
    LockedRow,
    OverrideCounts,
    StatsStore,
    day_of,
    index_basis,
)
from service.store.records import decode_override

log = logging.getLogger(__name__)

#: Reason codes that name a distributor with phones outside its territory (``by_distributor``).
DISTRIBUTOR_CODES = frozenset({"outside_territory", "foreign_sim", "grace_period"})
VERDICTS = ("lock", "warn", "allow")
#: The widest report (SPEC §14): at most 400 days.
MAX_DAYS = 400
#: The locked-devices export's columns (SPEC §14).
LOCKED_COLUMNS = ("imei", "reason", "region", "distributor", "locked_since", "override")
AUDIT_COLUMNS = ("id", "at", "actor", "role", "action", "imei", "detail")


# --- what a write counts --------------------------------------------------------------------


def counter_fields(reasons: Iterable[Reason]) -> list[str]:
    """The counter fields of a device counted with REASONS: ``t`` once, then ``r:<code>``,
    ``g:<region label>``, ``c:<country>`` and ``d:<distributor>`` (codes naming a
    distributor only), each once."""
    out = {"t": None}
    for reason in reasons:
        out["r:" + reason.code] = None
        if reason.region:
            out["g:" + reason.region] = None
            out["c:" + reason.region.partition("-")[0]] = None
        if reason.distributor and reason.code in DISTRIBUTOR_CODES:
            out["d:" + reason.distributor] = None
    return list(out)


def locked_entry(decision: Decision) -> str:
    """The locked-index entry of a device whose current decision is DECISION (override
    applied): "" when its verdict is not ``lock``, else ``fields\\treasons\\tregions\\t
    distributor\\toverride`` from the reasons that lock it."""
    if decision.verdict != "lock":
        return ""
    override = decision.override.kind if decision.override is not None else ""
    return _entry(decision.reasons, decision.distributor, override)


def _entry(reasons, distributor: str | None, override_kind: str) -> str:
    locking = [r for r in reasons if r.action == "lock"]
    codes = ";".join(dict.fromkeys(r.code for r in locking))
    regions = ";".join(dict.fromkeys(r.region for r in locking if r.region))
    return "\t".join(
        (",".join(counter_fields(locking)), codes, regions, distributor or "", override_kind)
    )


_PLAIN_ALLOW = CheckinCounts(verdict="allow", fields="t", entry="")


def checkin_counts(decision: Decision) -> CheckinCounts:
    """What a check-in that decided DECISION (override applied) adds to the overview."""
    if not decision.reasons and decision.verdict == "allow":
        return _PLAIN_ALLOW  # most check-ins
    # On the hot path: the same few outcomes recur across the fleet, so they are memoised by
    # what the counts depend on (a few microseconds instead of tens).
    return _counts_of(
        decision.verdict,
        tuple((r.code, r.action, r.region, r.distributor) for r in decision.reasons),
        decision.distributor,
        decision.override.kind if decision.override is not None else "",
    )


@lru_cache(maxsize=4096)
def _counts_of(verdict, reasons, distributor, override_kind) -> CheckinCounts:
    brief = tuple(
        Reason(code=code, rule=None, kind=None, action=action, region=region, distributor=d)
        for code, action, region, d in reasons
    )
    fields = ",".join(counter_fields(brief))
    if verdict != "lock":
        return CheckinCounts(verdict=verdict, fields=fields, entry="")
    return CheckinCounts(
        verdict=verdict,
        fields=fields,
        entry=_entry(brief, distributor, override_kind),
    )


def basis_reasons(policy_decision: Decision) -> list[dict]:
    """The policy's reasons as the check-in stores them (``policy_reasons``): enough to decide
    the device's index entry again when its override changes (code, rule, kind, action, and
    region and distributor when set)."""
    out = []
    for r in policy_decision.reasons:
        one = {"code": r.code, "rule": r.rule, "kind": r.kind, "action": r.action}
        if r.region:
            one["region"] = r.region
        if r.distributor:
            one["distributor"] = r.distributor
        out.append(one)
    return out


def entry_from_basis(basis: IndexBasis, override: Override | None, now: float) -> str:
    """The index entry of a device whose last check-in stored BASIS, under OVERRIDE at NOW."""
    return locked_entry(apply_override(basis_decision(basis), override, now))


def basis_decision(basis: IndexBasis) -> Decision:
    """The policy's decision at the device's last check-in, as far as the index needs it
    (reasons with code, kind, action, region, distributor; no override)."""
    reasons = tuple(
        Reason(
            code=r.get("code", ""),
            rule=r.get("rule"),
            kind=r.get("kind"),
            action=r.get("action", "allow"),
            region=r.get("region"),
            distributor=r.get("distributor"),
        )
        for r in basis.policy_reasons
    )
    return Decision(
        verdict=combine_actions(r.action for r in reasons),
        reasons=reasons,
        observed=(),
        lock_at=None,
        distributor=basis.distributor,
        state=DeviceState(),
    )


def override_counts(
    basis: IndexBasis, new: Override | None, action: str, role: str, now: float
) -> OverrideCounts:
    """What an override change to NEW (None: removed) by ACTION (the audit action) adds."""
    fields = []
    if new is not None:
        fields.append(f"o:{new.kind}:{role}")
        if action == "device.unlock_code":
            fields.append("codes")
    return OverrideCounts(
        fields=",".join(fields),
        entry=entry_from_basis(basis, new, now),
        basis=basis.raw,
        expires=new.expires_at if new is not None else None,
    )


# --- the report -----------------------------------------------------------------------------


def _breakdown() -> dict:
    return {"total": 0, "by_reason": {}, "by_country": {}, "by_region": {}, "by_distributor": {}}


_GROUPS = {"r": "by_reason", "c": "by_country", "g": "by_region", "d": "by_distributor"}


def _add(target: dict, field: str, value: int) -> None:
    """Add one counter FIELD (``t`` or ``<r|c|g|d>:<name>``) to a breakdown."""
    if field == "t":
        target["total"] += value
        return
    group, _, name = field.partition(":")
    if group in _GROUPS and name:
        bucket = target[_GROUPS[group]]
        bucket[name] = bucket.get(name, 0) + value


def day_document(day: date, counts: dict[str, int]) -> dict:
    """One day of the report from its counters (every key present, zeros included)."""
    verdicts = {verdict: _breakdown() for verdict in VERDICTS}
    overrides: dict[str, dict[str, int]] = {"unlock": {}, "lock": {}}
    for field, value in counts.items():
        head, _, rest = field.partition(":")
        if head in verdicts:
            _add(verdicts[head], rest, value)
        elif head == "o":
            kind, _, role = rest.partition(":")
            if kind in overrides and role:
                overrides[kind][role] = overrides[kind].get(role, 0) + value
    return {
        "date": day.isoformat(),
        "checkins": counts.get("n", 0),
        "verdicts": verdicts,
        "overrides": overrides,
        "unlock_codes": counts.get("codes", 0),
    }


class RangeError(ValueError):
    """A report range the API refuses; FIELD names the query parameter at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_range(day_from: date, day_to: date) -> None:
    """RangeError unless DAY_FROM <= DAY_TO and the range is at most MAX_DAYS days."""
    if day_to < day_from:
        raise RangeError("from", "must not be after `to`")
    if (day_to - day_from).days + 1 > MAX_DAYS:
        raise RangeError("from", f"the range is at most {MAX_DAYS} days")


def default_range(today: date | None = None) -> tuple[date, date]:
    """The last 30 days ending today (UTC)."""
    today = today or datetime.now(UTC).date()
    return today - timedelta(days=29), today


def _csv_cell(value) -> str:
    """A cell a spreadsheet shows as text (no formula: a leading = + - @ is quoted away)."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def _csv_lines(rows: Iterable[Iterable], header: Iterable[str], chunk: int = 500) -> Iterator[str]:
    """HEADER and ROWS as CSV text, CHUNK rows per piece (bounded memory)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    pending = 0
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row])
        pending += 1
        if pending >= chunk:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue()


def row_matches(row: LockedRow, reason: str | None, region: str | None, distributor: str | None):
    """True when ROW passes the export's filters (each optional; region matches a region
    label or its country)."""
    if reason and reason not in row.reasons.split(";"):
        return False
    if region:
        labels = [x for x in row.regions.split(";") if x]
        if region not in labels and region not in {x.partition("-")[0] for x in labels}:
            return False
    return not (distributor and row.distributor != distributor)


class StatsService:
    """The fleet overview: the stats report and the CSV exports (API and console alike)."""

    def __init__(self, store: StatsStore, audit: AuditStore):
        self.store = store
        self.audit = audit

    def report(self, day_from: date, day_to: date) -> dict:
        """The ``GET /v1/stats`` document for DAY_FROM..DAY_TO (inclusive, UTC days)."""
        check_range(day_from, day_to)
        days = [day_from + timedelta(days=i) for i in range((day_to - day_from).days + 1)]
        counts = self.store.day_counts([d.strftime("%Y%m%d") for d in days])
        locked_now = _breakdown()
        for field, value in self.store.locked_counts().items():
            _add(locked_now, field, value)
        return {
            "from": day_from.isoformat(),
            "to": day_to.isoformat(),
            "days": [day_document(d, counts[d.strftime("%Y%m%d")]) for d in days],
            "locked_now": locked_now,
        }

    def locked_devices_csv(
        self,
        actor: str,
        role: str,
        reason: str | None = None,
        region: str | None = None,
        distributor: str | None = None,
    ) -> Iterator[str]:
        """The locked devices as CSV pieces (SPEC §14); the export's audit entry is written
        now, before the first piece is asked for. REGION is a region or country code (any
        case)."""
        region = region.strip().upper() if region else region
        filters = {
            k: v for k, v in (("reason", reason), ("region", region), ("distributor", distributor))
        }
        self.audit.append(
            actor,
            role,
            "report.locked_devices",
            None,
            {"filters": {k: v for k, v in filters.items() if v}},
        )
        rows = (
            (r.imei, r.reasons, r.regions, r.distributor, iso_utc(r.since), r.override)
            for r in self.store.locked_rows()
            if row_matches(r, reason, region, distributor)
        )
        return _csv_lines(rows, LOCKED_COLUMNS)

    def audit_csv(
        self,
        actor: str,
        role: str,
        imei: str | None = None,
        entry_actor: str | None = None,
        action: str | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> Iterator[str]:
        """The audit trail (newest first, GET /v1/audit's filters) as CSV pieces; the export's
        own audit entry is written now (it is then the newest entry of the trail)."""
        filters = {
            "imei": imei,
            "actor": entry_actor,
            "action": action,
            "limit": limit,
            "before": before,
        }
        self.audit.append(
            actor,
            role,
            "report.audit",
            None,
            {"filters": {k: v for k, v in filters.items() if v is not None}},
        )
        rows = self._audit_rows(imei, entry_actor, action, limit, before)
        return _csv_lines(rows, AUDIT_COLUMNS)

    def _audit_rows(self, imei, entry_actor, action, limit, before) -> Iterator[tuple]:
        left = limit
        while left is None or left > 0:
            page = 1000 if left is None else min(1000, left)
            entries, before = self.audit.query(
                imei=imei, actor=entry_actor, action=action, limit=page, before=before
            )
            for e in entries:
                detail = orjson.dumps(e["detail"], option=orjson.OPT_SORT_KEYS).decode()
                yield (e["id"], e["at"], e["actor"], e["role"], e["action"], e["imei"], detail)
            if left is not None:
                left -= len(entries)
            if before is None:
                return


# --- index maintenance outside the write path -------------------------------------------------


def reindex_device(store: StatsStore, imei: str, now: float, attempts: int = 5) -> bool:
    """Recompute IMEI's index entry from what is stored (a lapsed unlock, the backfill); True
    once written, False when the device kept changing under it."""
    for _ in range(attempts):
        basis = store.index_basis(imei)
        override = decode_override(basis.override_raw)
        active = override if override is not None and override.active(now) else None
        expires = active.expires_at if active is not None else None
        if store.reindex(
            imei,
            basis=basis.raw,
            override_raw=basis.override_raw,
            entry=entry_from_basis(basis, active, now),
            now=now,
            expires=expires,
        ):
            return True
    return False


def backfill(store: StatsStore, devices, now: float | None = None, batch: int = 500) -> int:
    """Index every recorded device (those recorded before the index existed): the number of
    devices visited. Idempotent; safe while check-ins run (each write is compare-and-set)."""
    now = time.time() if now is None else now
    overrides = devices.overrides_by_imei(batch=batch, scan_count=batch)
    visited = 0

    def index(imei, basis):
        override = decode_override(basis.override_raw)
        active = override if override is not None and override.active(now) else None
        store.reindex(
            imei,
            basis=basis.raw,
            override_raw=basis.override_raw,
            entry=entry_from_basis(basis, active, now),
            now=now,
            expires=active.expires_at if active is not None else None,
        )

    for rows in devices.field_batches(
        ["policy_reasons", "distributor", "reasons"], batch=batch, scan_count=batch
    ):
        for imei, (reasons, distributor, shown) in rows:
            visited += 1
            basis = index_basis(reasons, distributor, overrides.pop(imei, None))
            index(imei, _with_regions_of(basis, shown))
    # Devices overridden but never seen (a manual lock before activation).
    for imei, override in overrides.items():
        visited += 1
        index(imei, index_basis(None, None, override))
    return visited


def _with_regions_of(basis: IndexBasis, shown) -> IndexBasis:
    """Records made before ``policy_reasons`` carried regions: take them from the stored
    ``reasons`` (the same rule's reason)."""
    if not shown or all("region" in r or "distributor" in r for r in basis.policy_reasons):
        return basis

    try:
        by_rule = {r.get("rule"): r for r in orjson.loads(shown) if isinstance(r, dict)}
    except orjson.JSONDecodeError:
        return basis
    enriched = []
    for r in basis.policy_reasons:
        known = by_rule.get(r.get("rule")) or {}
        extra = {k: known[k] for k in ("region", "distributor") if known.get(k)}
        enriched.append({**extra, **r})
    return IndexBasis(basis.raw, enriched, basis.distributor, basis.override_raw)


class StatsSweeper:
    """Every few seconds: re-index devices whose time-boxed unlock lapsed (SPEC §14: within a
    minute); every minute: roll closed days up into one key each."""

    #: A day is rolled up this long after it ended (a check-in decided before midnight may be
    #: written a little after it).
    ROLL_UP_DELAY_S = 600

    #: Seconds between full passes over every expiries shard (a lost due mark is caught by
    #: the next one: a lapse is re-indexed within a minute in any case).
    FULL_PASS_S = 45.0

    def __init__(self, store: StatsStore, every_s: float = 5.0, roll_up_every_s: float = 60.0):
        self.store = store
        self.every_s = every_s
        self.roll_up_every_s = roll_up_every_s
        self._last_roll_up = 0.0
        self._last_full_pass = 0.0

    def lapse(self, now: float | None = None, full: bool = True) -> int:
        """Re-index every device whose time-boxed override expired; how many were written.
        FULL: look in every shard, else only in the shards marked due."""
        now = time.time() if now is None else now
        tags = None if full else self.store.due_tags(now)
        if tags == []:
            return 0
        done = sum(reindex_device(self.store, imei, now) for imei in self.store.lapsed(now, tags))
        self.store.reschedule(self.store.due_tags(now) if full else tags)
        return done

    def roll_up(self, now: float | None = None) -> list[str]:
        """Roll up every closed day after the last one rolled up (the first time: yesterday,
        and the days before it are then read as empty: counters began at most a day before
        the first sweep); the days rolled (YYYYMMDD)."""
        now = time.time() if now is None else now
        last_closed = day_of(now - 86400 - self.ROLL_UP_DELAY_S)
        done = self.store.rolled_through()
        start = (
            datetime.strptime(done, "%Y%m%d").date() + timedelta(days=1)
            if done
            else datetime.strptime(last_closed, "%Y%m%d").date()
        )
        end = datetime.strptime(last_closed, "%Y%m%d").date()
        rolled = []
        day = start
        while day <= end:
            key = day.strftime("%Y%m%d")
            self.store.roll_up(key, now)
            rolled.append(key)
            day += timedelta(days=1)
        return rolled

    def once(self, now: float | None = None) -> None:
        """One round: lapses always, the roll-up when it is due."""
        now = time.time() if now is None else now
        full = now - self._last_full_pass >= self.FULL_PASS_S
        self.lapse(now, full=full)
        if full:
            self._last_full_pass = now
        if now - self._last_roll_up >= self.roll_up_every_s:
            self.roll_up(now)
            self._last_roll_up = now

    def start(self) -> threading.Thread:
        """Run :meth:`once` every ``every_s`` seconds in a daemon thread."""

        def loop() -> None:
            while True:
                try:
                    self.once()
                except redis_lib.RedisError as exc:
                    log.warning("stats sweep failed: %s", type(exc).__name__)
                time.sleep(self.every_s)

        thread = threading.Thread(target=loop, name="stats-sweeper", daemon=True)
        thread.start()
        return thread
