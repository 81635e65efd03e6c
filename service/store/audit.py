"""The audit trail: an append-only Redis Stream the service never edits or trims."""

from __future__ import annotations

import re
import time

import orjson

from service.engine.model import iso_utc
from service.store import keys
from service.store.client import is_cluster


def add_entry(redis, pipe, audit_fields: dict | None, deferred: list[dict]) -> None:
    """Queue the audit entry AUDIT_FIELDS (from ``AuditStore.entry_fields``) on PIPE, inside the
    caller's MULTI: the change and its entry are applied by one EXEC, or neither is.

    In a Redis Cluster the audit stream lives in another slot than the change, and one MULTI
    cannot span slots: there the entry goes to DEFERRED, which the caller writes with
    ``write_deferred`` right after its EXEC (docs/decisions.md, "Audit entries and their
    changes")."""
    if audit_fields is None:
        return
    if is_cluster(redis):
        deferred.append(audit_fields)
    else:
        pipe.xadd(keys.AUDIT, audit_fields)


def write_deferred(redis, deferred: list[dict]) -> None:
    """Write the entries ``add_entry`` deferred (Redis Cluster only)."""
    for audit_fields in deferred:
        redis.xadd(keys.AUDIT, audit_fields)


_STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})\Z")


def is_cursor(text: str) -> bool:
    """True when TEXT can be a paging cursor: a stream id, two unsigned 64-bit numbers
    (``1718000000000-0``). Anything else would be a command Redis refuses."""
    match = _STREAM_ID.match(text)
    return match is not None and all(int(part) < 1 << 64 for part in match.groups())


class AuditStore:
    """Writes and reads audit entries: at, actor, role, action, imei, detail."""

    def __init__(self, redis):
        self.redis = redis

    @staticmethod
    def entry_fields(
        actor: str, role: str, action: str, imei: str | None, detail: dict | None
    ) -> dict:
        """The stream fields of one entry (for callers that add it inside their own MULTI)."""
        return {
            "at": repr(time.time()),
            "actor": actor,
            "role": role,
            "action": action,
            "imei": imei or "",
            "detail": orjson.dumps(detail or {}),
        }

    def append(
        self,
        actor: str,
        role: str,
        action: str,
        imei: str | None = None,
        detail: dict | None = None,
        pipeline=None,
    ) -> None:
        """Append one entry, inside ``pipeline`` when given."""
        target = pipeline if pipeline is not None else self.redis
        target.xadd(keys.AUDIT, self.entry_fields(actor, role, action, imei, detail))

    def query(
        self,
        imei: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 50,
        before: str | None = None,
        batch: int = 500,
        scan_limit: int | None = None,
    ) -> tuple[list[dict], str | None]:
        """Entries newest first matching every given filter, and the cursor of the next page.
        SCAN_LIMIT bounds how many entries are read (the newest ones; a page's side panels
        must not read a whole trail): past it, what was found so far, with no cursor."""
        scanned = 0
        results: list[dict] = []
        if before:
            ms, _, seq = before.partition("-")
            before = f"{int(ms)}-{int(seq or 0)}"  # "0007-01" is 7-1 to Redis, but not below
            if before == "0-0":
                return results, None  # nothing is older than the first id ("(0-0" errs)
        upper = f"({before}" if before else "+"
        while len(results) < limit:
            chunk = self.redis.xrevrange(keys.AUDIT, max=upper, min="-", count=batch)
            if not chunk:
                return results, None
            for entry_id, fields in chunk:
                upper = f"({entry_id}"
                scanned += 1
                if scan_limit is not None and scanned > scan_limit:
                    return results, None
                if imei and fields.get("imei") != imei:
                    continue
                if actor and fields.get("actor") != actor:
                    continue
                if action and fields.get("action") != action:
                    continue
                results.append(_entry(entry_id, fields))
                if len(results) == limit:
                    return results, entry_id
            if len(chunk) < batch:
                return results, None
        return results, None


def _entry(entry_id: str, fields: dict) -> dict:
    return {
        "id": entry_id,
        "at": iso_utc(float(fields["at"])),
        "actor": fields["actor"],
        "role": fields["role"],
        "action": fields["action"],
        "imei": fields["imei"] or None,
        "detail": orjson.loads(fields["detail"]),
    }
