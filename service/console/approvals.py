"""Approvals page (SPEC §12.4): requests that weaken a sanctions rule, each with its diff against
the active version; compliance officers and admins approve or reject them (never their own),
requesters withdraw theirs. Decisions go through service.policy.approvals.Approvals, like
/v1/policy/approvals and `regionlock policy approvals`.
"""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from service.console import present, security
from service.console.blueprint import bp
from service.console.diff import changed, side_by_side
from service.console.policy import MAX_NOTE, _active_number, _entry, _publisher, _text
from service.engine.sanctions_changes import describe
from service.engine.validation import BundleError
from service.policy.approvals import (
    ApprovalClosed,
    ApprovalMissing,
    Approvals,
    ApprovalStale,
    NotRequester,
    OwnRequest,
    is_approval_id,
)
from service.policy.diff import diff_summary, format_summary
from service.policy.publishing import SafetyBrake, brake_message


def _approvals() -> Approvals:
    _active_number()
    return Approvals(_publisher())


def sent_for_approval(approval: dict[str, Any]) -> ResponseReturnValue:
    """What the editor sees after a publish or rollback that needs approval."""
    changes = "; ".join(describe(c) for c in approval["changes"])
    flash(
        f"Not published: this weakens sanctions ({changes}). It was sent for approval "
        f"(request {approval['id']}): a compliance officer or admin other than you must "
        "approve it.",
        "warning",
    )
    return redirect(url_for("console.approvals", _anchor=f"a-{approval['id']}"))


@bp.get("/policy/approvals")
@security.needs("approvals:read")
def approvals() -> ResponseReturnValue:
    """Pending requests with their diffs and, for those who may, the decision forms."""
    active_number = _active_number()
    active_entry = _entry(active_number)
    active_text = _text(active_entry["bundle"])
    rows = []
    for record in _approvals().store.pending():
        summary_row = {
            "id": record["id"],
            "kind": record["kind"],
            "rolled_back_to": record["rolled_back_to"],
            "requested_by": record["requested_by"],
            "requested_role": record["requested_role"],
            "note": record["note"],
            "created": present.when(record["created_at"]),
            "expires": present.when(record["expires_at"]),
            "compared_version": record["compared_version"],
            "stale": record["compared_version"] != active_number,
            "force": record["force"],
            "changes": [describe(c) for c in record["changes"]],
        }
        diff_rows = side_by_side(active_text, _text(record["bundle"]))
        summary_row["rows"] = diff_rows
        summary_row["differs"] = changed(diff_rows)
        summary = diff_summary(active_entry["bundle"], record["bundle"])
        summary_row["summary"] = format_summary(summary)
        rows.append(summary_row)
    user = security.current_user()
    return render_template(
        "console/approvals.html",
        rows=rows,
        active_version=active_number,
        me=user.name if user else None,
    )


@bp.post("/policy/approvals/<approval_id>")
@security.needs("approvals:read")
def approval_decide(approval_id: str) -> ResponseReturnValue:
    """Approve, reject or withdraw one request (the form's ``decision``)."""
    if not is_approval_id(approval_id):
        abort(404, description="There is no such approval request.")
    decision = request.form.get("decision", "")
    note = request.form.get("note", "").strip()
    if len(note) > MAX_NOTE:
        flash(f"The note may hold at most {MAX_NOTE} characters.", "error")
        return redirect(url_for("console.approvals"))
    needed = "policy:write" if decision == "withdraw" else "approvals:decide"
    if decision not in ("approve", "reject", "withdraw"):
        abort(400, description="Choose approve, reject or withdraw.")
    if not security.can(needed):
        abort(403)
    user = security.current_user()
    assert user is not None
    service = _approvals()
    try:
        if decision == "approve":
            published, record = service.approve(
                approval_id, note=note, actor=user.name, role=user.role
            )
            flash(
                f"Approved: version {published.entry['version']} is published "
                f"({record['requested_by']}'s change); devices get it within a second.",
                "success",
            )
            return redirect(url_for("console.policy"))
        if decision == "reject":
            service.reject(approval_id, note=note, actor=user.name, role=user.role)
            flash(f"Rejected request {approval_id}: nothing was published.", "success")
        else:
            service.withdraw(approval_id, actor=user.name, role=user.role, note=note)
            flash(f"Withdrew request {approval_id}.", "success")
    except ApprovalMissing:
        flash("That request no longer exists (closed more than 7 days ago).", "error")
    except ApprovalClosed as exc:
        flash(f"That request is already {exc.record['state']}.", "error")
    except OwnRequest:
        flash(
            "You requested this change: another compliance officer or admin must decide it.",
            "error",
        )
    except NotRequester as exc:
        flash(f"Only its requester ({exc}) may withdraw this request.", "error")
    except ApprovalStale as exc:
        flash(
            f"Version {exc.active} was published since this request was made against version "
            f"{exc.record['compared_version']}: the request is closed as stale and must be "
            "made again.",
            "error",
        )
    except SafetyBrake as exc:
        flash(
            f"Safety brake: {brake_message(exc.report)}. Nothing was published; the request "
            "stays pending.",
            "error",
        )
    except BundleError:
        flash("The requested bundle no longer passes validation.", "error")
    return redirect(url_for("console.approvals"))
