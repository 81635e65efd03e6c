"""/v1/devices: what support agents see and do (SPEC §5)."""

from __future__ import annotations

from flask import current_app, g, request
from flask.views import MethodView

from service.api.devices.schemas import (
    BulkResultSchema,
    BulkUnlockSchema,
    DeviceSchema,
    LockSchema,
    OverrideOutSchema,
    ResetActivationSchema,
    UnlockCodeResultSchema,
    UnlockCodeSchema,
    UnlockResultSchema,
    UnlockSchema,
)
from service.api.parsing import ApiBlueprint, matches_imei_pattern
from service.devices.activation import reset_activation
from service.devices.document import device_document, override_out
from service.devices.identity import AMBIGUOUS_CODE, AmbiguousImei, resolve_device
from service.devices.overrides import (
    IDEMPOTENCY_TTL_S,
    SCOPE_MESSAGE,
    InvalidImei,
    OverrideService,
    SanctionsScopeError,
    normalise_imei,
)
from service.devices.unlock_codes import issue_unlock_code
from service.store.devices import ResetConflict
from service.web.auth import require
from service.web.errors import ApiError, api_error_response
from service.web.idempotency import (
    IDEMPOTENCY_PARAMETER,
    register_write_errors,
    replay_headers,
    request_operation,
    reused_key,
)

blp = ApiBlueprint("devices", __name__, url_prefix="/v1/devices", description="Support agents")
register_write_errors(blp)


@blp.errorhandler(SanctionsScopeError)
def _sanctions_scope(exc: SanctionsScopeError):
    """The only lock is one the caller's role cannot lift (unlocks and unlock codes alike)."""
    return api_error_response(
        ApiError(403, SCOPE_MESSAGE, code="sanctions_scope", extra={"rules": exc.rules})
    )


def _unlock_answer(imei: str, outcome, extra: dict, done: str, still_locked_message: str):
    """An unlock-like call's 201: the override, whether a sanctions lock remains, and the
    message for either case."""
    still_locked = bool(outcome.still_locked_by)
    body = {
        "imei": imei,
        **extra,
        "override": override_out(outcome.override, outcome.etag),
        "still_locked": still_locked,
        "still_locked_by": outcome.still_locked_by,
        "message": still_locked_message if still_locked else done,
    }
    return body, 201, replay_headers(outcome.replayed, outcome.etag)


def _imei(raw: str) -> str:
    """The primary IMEI of the device RAW names (SPEC §9: an alias reaches its device)."""
    if not matches_imei_pattern(raw):
        raise ApiError(422, "the IMEI is not valid", fields={"imei": ["must be 15 digits"]})
    try:
        imei = normalise_imei(raw)
    except InvalidImei as exc:
        raise ApiError(422, "the IMEI is not valid", fields={"imei": [exc.problem]}) from None
    try:
        return resolve_device(current_app.extensions["regionlock"].identities, imei)
    except AmbiguousImei as exc:
        raise ApiError(
            409,
            "this IMEI is another IMEI of several devices: use one of their primary IMEIs",
            code=AMBIGUOUS_CODE,
            extra={"primaries": list(exc.primaries)},
        ) from None


def _document(imei: str) -> dict | None:
    rl = current_app.extensions["regionlock"]
    return device_document(rl.devices, rl.policies.current().policy, imei, rl.identities)


def _service() -> OverrideService:
    rl = current_app.extensions["regionlock"]
    return OverrideService(rl.devices, rl.audit, rl.identities)


IF_MATCH_PARAMETER = {
    "in": "header",
    "name": "If-Match",
    "required": False,
    "schema": {"type": "string"},
    "description": (
        "The override's ETag (GET /v1/devices/<imei>, the unlock and lock answers): remove it "
        "only while it is still that override, else 412 precondition_failed"
    ),
}


@blp.route("/<imei:imei>")
class Device(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, DeviceSchema)
    @blp.alt_response(404, description="never seen and never overridden")
    @blp.alt_response(409, description="ambiguous_imei: an alias of several devices")
    @require("devices:read")
    def get(self, imei):
        """A device's record: verdict, why, evidence, activation, override, history."""
        document = _document(_imei(imei))
        if document is None:
            raise ApiError(404, "this device has never checked in and has no override")
        return document


@blp.route("/<imei:imei>/unlock")
class Unlock(MethodView):
    @blp.doc(security=[{"bearer": []}], parameters=[IDEMPOTENCY_PARAMETER])
    @blp.response(201, UnlockResultSchema)
    @blp.alt_response(403, description="the only lock is one this role cannot lift")
    @blp.alt_response(409, description="ambiguous_imei: an alias of several devices")
    @blp.alt_response(503, description="Redis unreachable, or the outcome is unknown")
    @require("devices:write")
    @blp.arguments(UnlockSchema)
    def post(self, body, imei):
        """Unlock the device (scoped by role; optionally time-boxed)."""
        imei = _imei(imei)
        operation = request_operation(body)
        outcome = _service().unlock(
            imei,
            g.principal,
            body["reason"],
            body.get("ticket"),
            body.get("expires_in_s"),
            operation=operation,
        )
        return _unlock_answer(
            imei,
            outcome,
            {},
            "unlocked from the next check-in",
            "unlocked, but a sanctioned_region lock remains: only a compliance officer can lift it",
        )


@blp.route("/<imei:imei>/unlock-code")
class UnlockCode(MethodView):
    @blp.doc(security=[{"bearer": []}], parameters=[IDEMPOTENCY_PARAMETER])
    @blp.response(201, UnlockCodeResultSchema)
    @blp.alt_response(
        403, description="sanctions_scope: the only lock is one this role cannot lift"
    )
    @blp.alt_response(409, description="ambiguous_imei: an alias of several devices")
    @blp.alt_response(503, description="Redis unreachable, or the outcome is unknown")
    @require("devices:unlock-code")
    @blp.arguments(UnlockCodeSchema)
    def post(self, body, imei):
        """Issue an offline unlock code for the challenge a locked phone shows (SPEC §11).

        The code's scope follows the caller's role as unlocks do (``all`` for compliance and
        admin, else ``gray``); the same call records an unlock override of that scope expiring
        after ``valid_days`` (never, for 0) and its audit entry ``device.unlock_code`` (scope,
        valid_days, challenge: never the code), atomically. docs/unlock-codes.md describes what
        the phone does with the code, with test vectors."""
        imei = _imei(imei)
        operation = request_operation(body)
        rl = current_app.extensions["regionlock"]
        issued = issue_unlock_code(
            _service(),
            rl.unlock_master_key,
            imei,
            g.principal,
            body["challenge"],
            body["reason"],
            body.get("ticket"),
            body["valid_days"],
            operation=operation,
        )
        return _unlock_answer(
            imei,
            issued.unlock,
            {
                "code": issued.code,
                "challenge": body["challenge"],
                "scope": issued.scope,
                "valid_days": issued.valid_days,
            },
            "read the code to the user",
            "read the code to the user; a sanctioned_region lock remains: only a compliance "
            "officer can lift it",
        )


@blp.route("/<imei:imei>/lock")
class Lock(MethodView):
    @blp.doc(security=[{"bearer": []}], parameters=[IDEMPOTENCY_PARAMETER])
    @blp.response(201, OverrideOutSchema)
    @blp.alt_response(409, description="ambiguous_imei: an alias of several devices")
    @blp.alt_response(503, description="Redis unreachable, or the outcome is unknown")
    @require("devices:write")
    @blp.arguments(LockSchema)
    def post(self, body, imei):
        """Lock the device whatever the policy says, until the override is removed."""
        imei = _imei(imei)
        operation = request_operation(body)
        outcome = _service().lock(
            imei,
            g.principal,
            body["reason"],
            body.get("ticket"),
            operation=operation,
            message=body.get("message"),
        )
        return (
            override_out(outcome.override, outcome.etag),
            201,
            replay_headers(outcome.replayed, outcome.etag),
        )


@blp.route("/<imei:imei>/override")
class RemoveOverride(MethodView):
    @blp.doc(security=[{"bearer": []}], parameters=[IF_MATCH_PARAMETER, IDEMPOTENCY_PARAMETER])
    @blp.response(204)
    @blp.alt_response(404, description="the device has no override")
    @blp.alt_response(409, description="ambiguous_imei: an alias of several devices")
    @blp.alt_response(412, description="If-Match names another override than the device's")
    @blp.alt_response(503, description="Redis unreachable, or the outcome is unknown")
    @require("devices:write")
    def delete(self, imei):
        """Remove the device's override; the next check-in follows the policy again.

        The removal is atomic: of several at once, one removes it and the others answer 404
        (412 with If-Match), and its audit entry names exactly the override removed."""
        imei = _imei(imei)
        if_match = request.headers.get("If-Match")
        operation = request_operation({"if_match": if_match})
        outcome = _service().remove(imei, g.principal, if_match=if_match, operation=operation)
        if outcome.status == "mismatch":
            raise ApiError(
                412,
                "the device's override is not the one If-Match names (it was changed or "
                "removed): read the device again",
                code="precondition_failed",
            )
        if outcome.status == "none":
            raise ApiError(404, "this device has no override")
        return None, 204, replay_headers(outcome.replayed)


@blp.route("/<imei:imei>/activation")
class Activation(MethodView):
    @blp.doc(security=[{"bearer": []}], parameters=[IDEMPOTENCY_PARAMETER])
    @blp.response(204)
    @blp.alt_response(404, description="the device has no activation binding")
    @blp.alt_response(409, description="check-ins kept changing the record: try again")
    @blp.alt_response(422, description="no reason, or idempotency_key_reused")
    @blp.alt_response(503, description="Redis unreachable, or the outcome is unknown")
    @require("devices:reset-activation")
    @blp.arguments(ResetActivationSchema)
    def delete(self, body, imei):
        """Forget the device's activation binding (SPEC §13): its next check-in binds afresh.
        The repair for a phone bound by a forged or mistaken check-in; audited."""
        rl = current_app.extensions["regionlock"]
        imei = _imei(imei)
        operation = request_operation(body)
        try:
            reset = reset_activation(
                rl.devices,
                imei,
                g.principal,
                body["reason"],
                body.get("ticket"),
                operation=operation,
            )
        except ResetConflict:
            raise ApiError(409, "the device kept checking in meanwhile: try again") from None
        if reset is None:
            raise ApiError(404, "this device has no activation binding")
        return None, 204, replay_headers(reset.replayed)


@blp.route("/unlock")
class BulkUnlock(MethodView):
    @blp.doc(security=[{"bearer": []}], parameters=[IDEMPOTENCY_PARAMETER])
    @blp.response(200, BulkResultSchema)
    @blp.alt_response(503, description="Redis unreachable, or some outcomes unknown")
    @require("devices:write")
    @blp.arguments(BulkUnlockSchema)
    def post(self, body):
        """Unlock many devices at once; invalid IMEIs are reported, valid ones applied.

        Safe to resume: after a 503 or a lost answer, send the same call again (best with the
        same Idempotency-Key): devices already unlocked are not changed again (each device's
        result is replayed as ``applied`` with the same key, else reported ``unchanged``)."""
        operation = request_operation(body)
        rl = current_app.extensions["regionlock"]
        if operation.fingerprint:
            stored = rl.devices.request_record(operation.digest)
            if stored is not None:
                if stored.get("fingerprint") != operation.fingerprint:
                    raise reused_key()
                return stored["body"], 200, replay_headers(True)
        results = list(
            _service().bulk_unlock(
                enumerate(body["imeis"], start=1),
                g.principal,
                body["reason"],
                body.get("ticket"),
                body.get("expires_in_s"),
                operation=operation,
            )
        )
        counts = {s: 0 for s in ("applied", "unchanged", "refused", "invalid")}
        for row in results:
            counts[row["status"]] += 1
        answer = {**counts, "results": results}
        if operation.fingerprint:
            rl.devices.store_request_record(
                operation.digest,
                {"fingerprint": operation.fingerprint, "body": answer},
                IDEMPOTENCY_TTL_S,
            )
        return answer
