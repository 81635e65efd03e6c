"""/v1/policy/approvals: four eyes on sanctions (SPEC §12.4).

A publish or rollback that weakens a sanctioned_region rule answers 202 with the request it
stored (the error handler below, on the policy blueprint); compliance officers and admins
approve or reject it here, never their own; its requester may withdraw it (DELETE).
"""

from __future__ import annotations

from flask import g
from flask.views import MethodView

from service.api.parsing import ApiBlueprint
from service.api.policy.routes import _active_number, _conflict, _invalid, _json, _publisher
from service.api.policy.schemas import (
    ApprovalDetailSchema,
    ApprovalListSchema,
    ApprovedSchema,
    DecidedSchema,
    DecisionSchema,
)
from service.engine.validation import BundleError
from service.policy.approvals import (
    ApprovalClosed,
    ApprovalMissing,
    Approvals,
    ApprovalStale,
    NotRequester,
    OwnRequest,
    api_form,
    is_approval_id,
)
from service.policy.publishing import SafetyBrake, VersionConflict, brake_message, version_metadata
from service.web.auth import require
from service.web.errors import ApiError
from service.web.idempotency import (
    IDEMPOTENCY_PARAMETER,
    register_write_errors,
    replay_headers,
    request_operation,
)

blp = ApiBlueprint(
    "approvals",
    __name__,
    url_prefix="/v1/policy/approvals",
    description="Four eyes on sanctions: approval requests (SPEC §12.4)",
)
register_write_errors(blp)


def _approvals() -> Approvals:
    _active_number()  # a fresh Redis publishes the seed first
    return Approvals(_publisher())


def _checked_id(approval_id: str) -> str:
    if not is_approval_id(approval_id):
        raise ApiError(404, f"there is no approval request {approval_id[:40]!r}")
    return approval_id


def _missing(approval_id: str) -> ApiError:
    return ApiError(
        404,
        f"there is no approval request {approval_id} (unknown, or closed more than 7 days ago)",
        code="approval_not_found",
    )


def _closed(exc: ApprovalClosed) -> ApiError:
    state = exc.record["state"]
    return ApiError(
        409,
        f"approval request {exc.record['id']} is {state}, no longer pending",
        code="approval_closed",
        extra={"approval": api_form(exc.record)},
    )


def _own() -> ApiError:
    return ApiError(
        403,
        "you requested this change: four eyes means another compliance officer or admin decides it",
        code="own_request",
    )


@blp.route("")
class ApprovalList(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, ApprovalListSchema)
    @require("approvals:read")
    def get(self):
        """Pending requests, oldest first, each with its diff against the active version."""
        return _json({"approvals": _approvals().pending()})


@blp.route("/<approval_id>")
class ApprovalItem(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, ApprovalDetailSchema)
    @blp.alt_response(404, description="approval_not_found")
    @require("approvals:read")
    def get(self, approval_id):
        """One request (pending or closed in the last 7 days), with its bundle."""
        try:
            record = _approvals().get(_checked_id(approval_id))
        except ApprovalMissing:
            raise _missing(approval_id) from None
        return _json({**api_form(record), "bundle": record["bundle"]})

    @blp.doc(security=[{"bearer": []}], parameters=[IDEMPOTENCY_PARAMETER])
    @blp.response(201, ApprovedSchema, description="approved: the new version")
    @blp.alt_response(200, schema=DecidedSchema, description="rejected: the closed request")
    @blp.alt_response(
        403,
        description="forbidden (the role may not decide: compliance and admin only), or "
        "own_request (nobody decides their own request)",
    )
    @blp.alt_response(404, description="approval_not_found")
    @blp.alt_response(
        409,
        description="approval_stale (the active version moved since the request: it is "
        "closed and must be requested again), approval_closed (decided, withdrawn, stale or "
        "expired already), or safety_brake (the request stays pending)",
    )
    @blp.alt_response(422, description="invalid_bundle: it no longer validates")
    @blp.alt_response(503, description="Redis unreachable, or the outcome is unknown")
    @require("approvals:decide")
    @blp.arguments(DecisionSchema)
    def post(self, body, approval_id):
        """Approve (publish it) or reject a pending request; audited."""
        _checked_id(approval_id)
        operation = request_operation(body)
        approvals = _approvals()
        principal = g.principal
        try:
            if body["decision"] == "reject":
                closed, replayed = approvals.reject(
                    approval_id,
                    note=body["note"],
                    actor=principal.name,
                    role=principal.role,
                    operation=operation,
                )
                return _json({"approval": closed}, 200, replay_headers(replayed))
            published, record = approvals.approve(
                approval_id,
                note=body["note"],
                actor=principal.name,
                role=principal.role,
                operation=operation,
            )
        except ApprovalMissing:
            raise _missing(approval_id) from None
        except ApprovalClosed as exc:
            raise _closed(exc) from None
        except OwnRequest:
            raise _own() from None
        except ApprovalStale as exc:
            raise ApiError(
                409,
                f"version {exc.active} was published since this request was compared with "
                f"version {exc.record['compared_version']}: it is closed as stale; the "
                "requester must request the change again",
                code="approval_stale",
                extra={"active_version": exc.active, "approval": api_form(exc.record)},
            ) from None
        except VersionConflict as exc:  # pragma: no cover - turned into ApprovalStale
            raise _conflict(exc) from None
        except SafetyBrake as exc:
            raise ApiError(
                409,
                f"safety brake: {brake_message(exc.report)} — the request stays pending; its "
                'requester may withdraw it and request it again with "force": true',
                code="safety_brake",
                extra={"report": exc.report.to_dict()},
            ) from None
        except BundleError as exc:
            raise _invalid(exc) from None
        entry = published.entry
        return _json(
            {
                **version_metadata(entry),
                "forced": published.forced,
                "simulation": published.simulation,
                "rolled_back_to": record.get("rolled_back_to"),
            },
            201,
            replay_headers(published.replayed),
        )

    @blp.doc(security=[{"bearer": []}], parameters=[IDEMPOTENCY_PARAMETER])
    @blp.response(200, DecidedSchema, description="withdrawn: the closed request")
    @blp.alt_response(
        403,
        description="forbidden (editor and admin only), or not_requester (only the requester "
        "withdraws)",
    )
    @blp.alt_response(404, description="approval_not_found")
    @blp.alt_response(409, description="approval_closed")
    @require("policy:write")
    def delete(self, approval_id):
        """Withdraw one's own pending request; audited."""
        _checked_id(approval_id)
        operation = request_operation({})
        principal = g.principal
        try:
            closed, replayed = _approvals().withdraw(
                approval_id, actor=principal.name, role=principal.role, operation=operation
            )
        except ApprovalMissing:
            raise _missing(approval_id) from None
        except ApprovalClosed as exc:
            raise _closed(exc) from None
        except NotRequester as exc:
            raise ApiError(
                403,
                f"only its requester ({exc}) may withdraw this request; a compliance officer "
                "or admin may reject it",
                code="not_requester",
            ) from None
        return _json({"approval": closed}, 200, replay_headers(replayed))
