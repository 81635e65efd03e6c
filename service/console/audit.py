"""The audit trail for auditors and compliance officers: filters and paging."""

from __future__ import annotations

from flask import current_app, render_template, request
from flask.typing import ResponseReturnValue

from service.console import present, security
from service.console.blueprint import bp
from service.store.audit import is_cursor

PAGE_SIZE = 50
# Actions the service writes, offered as suggestions in the filter (free text still works).
KNOWN_ACTIONS = (
    "token.create",
    "token.revoke",
    "device.unlock",
    "device.lock",
    "device.override_removed",
    "device.bulk_unlock",
    "policy.publish",
    "policy.rollback",
    "report.locked_devices",
    "report.audit",
)


@bp.get("/audit")
@security.needs("audit:read")
def audit() -> ResponseReturnValue:
    """Audit entries newest first, filtered by IMEI, actor and action, paged by cursor."""
    filters = {
        "imei": request.args.get("imei", "").strip().replace(" ", "").replace("-", "")[:32],
        "actor": request.args.get("actor", "").strip()[:100],
        "action": request.args.get("action", "").strip()[:64],
    }
    before = request.args.get("before", "")
    error = None
    if before and not is_cursor(before):
        error = "That page link is not valid; showing the newest entries."
        before = ""
    entries, cursor = current_app.extensions["regionlock"].audit.query(
        imei=filters["imei"] or None,
        actor=filters["actor"] or None,
        action=filters["action"] or None,
        limit=PAGE_SIZE,
        before=before or None,
    )
    active = {k: v for k, v in filters.items() if v}
    return render_template(
        "console/audit.html",
        filters=filters,
        active=active,
        entries=entries,
        next_cursor=cursor,
        paged=bool(before),
        error=error,
        known_actions=KNOWN_ACTIONS,
        when=present.when,
    )
