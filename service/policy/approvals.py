"""Four eyes on sanctions (SPEC §12.4): requests, decisions and withdrawals.

A publish or rollback whose bundle weakens a ``sanctioned_region`` rule of the active version
(``engine/sanctions_changes.py``) is not published: :meth:`Publisher.publish` and ``.rollback``
store an approval request and raise :class:`ApprovalRequired` (the API's 202). A compliance
officer or admin who is not the requester approves it (published through the normal publish
path, safety brake included, if the active version is still the one it was compared with; else
the request is closed as ``stale``) or rejects it; the requester may withdraw it. Every change
of state is audited in the same MULTI/EXEC as the change.

Used by the policy API, the console and ``regionlock policy approvals`` alike.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from service.engine.model import iso_utc
from service.policy.diff import diff_summary, format_summary
from service.store.approvals import (
    APPROVAL_PENDING_S,
    ApprovalClosed,
    ApprovalMissing,
    ApprovalStore,
    public_record,
)
from service.store.audit import AuditStore
from service.store.idempotency import Operation, check_fingerprint
from service.store.policy import AlreadyPublished, VersionConflict

__all__ = [
    "ApprovalClosed",
    "ApprovalMissing",
    "ApprovalRequired",
    "ApprovalStale",
    "NotRequester",
    "OwnRequest",
    "api_form",
    "is_approval_id",
    "new_request",
]

#: Decisions a compliance officer or admin may take.
DECISIONS = ("approve", "reject")


class ApprovalRequired(Exception):
    """The publish or rollback weakens sanctions: APPROVAL (API form) was stored instead.
    REPLAYED: the same call (Idempotency-Key) had been answered so before."""

    def __init__(self, approval: dict, replayed: bool = False):
        super().__init__(f"sent for approval as {approval['id']}")
        self.approval = approval
        self.replayed = replayed


class OwnRequest(Exception):
    """Nobody decides their own request (four eyes)."""


class NotRequester(Exception):
    """Only the requester withdraws a request."""


class ApprovalStale(Exception):
    """The active version moved since the request was compared with it: the request is closed
    as ``stale`` and must be made again. ACTIVE: the active version now."""

    def __init__(self, record: dict, active: int | None):
        super().__init__(f"the active version is {active}, not {record['compared_version']}")
        self.record = record
        self.active = active


def is_approval_id(text: str) -> bool:
    """True when TEXT can name a request (16 lower-case hex digits)."""
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


def new_request(
    kind: str,
    bundle: dict,
    *,
    changes: list[dict],
    compared_version: int,
    note: str,
    actor: str,
    role: str,
    force: bool = False,
    rolled_back_to: int | None = None,
) -> dict[str, Any]:
    """A new pending request's record (KIND ``publish`` or ``rollback``)."""
    now = time.time()
    return {
        "id": secrets.token_hex(8),
        "state": "pending",
        "kind": kind,
        "requested_by": actor,
        "requested_role": role,
        "note": note,
        "created_at": now,
        "expires_at": now + APPROVAL_PENDING_S,
        "compared_version": compared_version,
        "changes": changes,
        "force": force,
        "rolled_back_to": rolled_back_to,
        "bundle": bundle,
    }


def api_form(record: dict[str, Any]) -> dict[str, Any]:
    """A request as the API shows it: without its bundle, times as ISO-8601 UTC."""
    out = public_record(record)
    for name in ("created_at", "expires_at", "closed_at"):
        if out.get(name) is not None:
            out[name] = iso_utc(out[name])
    return out


def store_request(
    approvals: ApprovalStore,
    audit: AuditStore,
    record: dict,
    operation: Operation | None,
) -> dict:
    """Store RECORD with its ``policy.approval.request`` audit entry (and OPERATION's record,
    so the same call sent again is answered 202 with the same request); its API form."""
    approval = api_form(record)
    audit_fields = audit.entry_fields(
        record["requested_by"],
        record["requested_role"],
        "policy.approval.request",
        None,
        {
            "approval": record["id"],
            "kind": record["kind"],
            "compared_version": record["compared_version"],
            "rolled_back_to": record["rolled_back_to"],
            "changes": record["changes"],
            "note": record["note"],
            "expires_at": approval["expires_at"],
        },
    )
    approvals.create(record, audit_fields, operation, {"approval": approval})
    return approval


class Approvals:
    """Lists and decides requests; approving one publishes through PUBLISHER."""

    def __init__(self, publisher: Any):
        self.publisher = publisher
        self.store: ApprovalStore = publisher.approvals
        self.audit: AuditStore = publisher.audit

    def pending(self) -> list[dict[str, Any]]:
        """Pending requests, oldest first, each with its diff against the active version."""
        active_number = self.publisher.store.active_version()
        active = self.publisher.store.version(active_number) if active_number else None
        active_bundle = active["bundle"] if active else {}
        rows = []
        for record in self.store.pending():
            summary = diff_summary(active_bundle, record["bundle"])
            rows.append(
                {
                    **api_form(record),
                    "active_version": active_number,
                    "stale": record["compared_version"] != active_number,
                    "diff": summary,
                    "diff_lines": format_summary(summary),
                }
            )
        return rows

    def get(self, approval_id: str) -> dict[str, Any]:
        """One request with its bundle; ApprovalMissing when unknown."""
        record = self.store.get(approval_id)
        if record is None:
            raise ApprovalMissing(approval_id)
        return record

    def _prior(self, operation: Operation | None) -> dict | None:
        """The record of OPERATION (a decision's Idempotency-Key) if it was applied before."""
        if operation is None or not operation.named:
            return None
        record = self.publisher.store.operation_record(operation.digest)
        if record is not None:
            check_fingerprint(record, operation)
        return record

    def approve(
        self,
        approval_id: str,
        *,
        note: str,
        actor: str,
        role: str,
        operation: Operation | None = None,
    ):
        """Publish the request's bundle if the active version is still the one it was compared
        with: (Published, the request). Raises ApprovalMissing, ApprovalClosed, OwnRequest,
        ApprovalStale (the request is closed), SafetyBrake (it stays pending), BundleError.
        OPERATION (an Idempotency-Key): sent again, the first answer (``replayed``)."""
        prior = self._prior(operation)
        if prior is not None and "entry" in prior:
            from service.policy.publishing import Published

            return Published.replay(prior), self.store.get(approval_id) or {}
        record = self.get(approval_id)
        _not_own(record, actor)
        if record["state"] != "pending":
            raise ApprovalClosed(record)
        deciding = {"actor": actor, "role": role, "note": note}
        try:
            if record["kind"] == "rollback":
                published = self.publisher.rollback(
                    record["rolled_back_to"],
                    note=record["note"],
                    actor=actor,
                    role=role,
                    operation=operation,
                    approving=(record, deciding),
                )
            else:
                published = self.publisher.publish(
                    record["bundle"],
                    note=record["note"],
                    expected_version=record["compared_version"],
                    actor=actor,
                    role=role,
                    force=record["force"],
                    operation=operation,
                    approving=(record, deciding),
                )
        except VersionConflict as exc:
            closed = self._close(
                record["id"],
                "stale",
                actor,
                role,
                note,
                {"active_version": exc.active},
            )
            raise ApprovalStale(closed, exc.active) from None
        return published, record

    def reject(
        self,
        approval_id: str,
        *,
        note: str,
        actor: str,
        role: str,
        operation: Operation | None = None,
    ) -> tuple[dict, bool]:
        """Close the request unpublished: (its API form, replayed). Raises ApprovalMissing,
        ApprovalClosed, OwnRequest."""
        return self._decided(approval_id, "rejected", actor, role, note, operation)

    def withdraw(
        self,
        approval_id: str,
        *,
        actor: str,
        role: str,
        note: str = "",
        operation: Operation | None = None,
    ) -> tuple[dict, bool]:
        """The requester takes the request back: (its API form, replayed). Raises
        ApprovalMissing, ApprovalClosed, NotRequester."""
        return self._decided(approval_id, "withdrawn", actor, role, note, operation)

    def _decided(self, approval_id, state, actor, role, note, operation) -> tuple[dict, bool]:
        prior = self._prior(operation)
        if prior is not None and "approval_record" in prior:
            return api_form(prior["approval_record"]), True
        try:
            closed = self._close(approval_id, state, actor, role, note, operation=operation)
        except AlreadyPublished as exc:  # the same call, applied meanwhile
            assert operation is not None
            check_fingerprint(exc.record, operation)
            return api_form(exc.record["approval_record"]), True
        return api_form(closed), False

    def _close(
        self,
        approval_id: str,
        state: str,
        actor: str,
        role: str,
        note: str,
        extra: dict | None = None,
        operation: Operation | None = None,
    ) -> dict:
        def check(record: dict) -> None:
            if state == "withdrawn":
                if record["requested_by"] != actor:
                    raise NotRequester(record["requested_by"])
            elif state != "stale":
                _not_own(record, actor)

        def audit_fields(record: dict) -> dict:
            return self.audit.entry_fields(
                actor,
                role,
                f"policy.approval.{_ACTIONS[state]}",
                None,
                {
                    "approval": record["id"],
                    "requested_by": record["requested_by"],
                    "compared_version": record["compared_version"],
                    "note": note,
                    **(extra or {}),
                },
            )

        closing = {"state": state, "decided_by": actor, "decided_role": role, "decision_note": note}
        return self.store.close(
            approval_id, {**closing, **(extra or {})}, audit_fields, check, operation
        )


_ACTIONS = {"rejected": "reject", "withdrawn": "withdraw", "stale": "stale"}


def _not_own(record: dict, actor: str) -> None:
    if record["requested_by"] == actor:
        raise OwnRequest(actor)


def closing_for_publish(
    store: ApprovalStore, audit: AuditStore, approving: tuple[dict, dict], number: int
):
    """The LinkedWrite closing the request APPROVING = (record, decider) as ``approved`` in
    the EXEC that publishes it as version NUMBER, with its ``policy.approval.approve`` entry."""
    record, decider = approving
    audit_fields = audit.entry_fields(
        decider["actor"],
        decider["role"],
        "policy.approval.approve",
        None,
        {
            "approval": record["id"],
            "requested_by": record["requested_by"],
            "compared_version": record["compared_version"],
            "version": number,
            "note": decider["note"],
        },
    )
    closing = {
        "state": "approved",
        "decided_by": decider["actor"],
        "decided_role": decider["role"],
        "decision_note": decider["note"],
        "published_version": number,
    }

    def check(current: dict) -> None:
        _not_own(current, decider["actor"])

    return store.closing_publish(record["id"], closing, audit_fields, check)
