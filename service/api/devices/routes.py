"""/v1/devices: what support agents see and do (SPEC §5)."""

from __future__ import annotations

from flask import current_app, g
from flask.views import MethodView

from service.api.devices.schemas import (
    BulkResultSchema,
    BulkUnlockSchema,
    DeviceSchema,
    LockSchema,
    OverrideOutSchema,
    UnlockResultSchema,
    UnlockSchema,
)
from service.api.parsing import ApiBlueprint, matches_imei_pattern
from service.devices.document import device_document, override_out
from service.devices.identity import AMBIGUOUS_CODE, AmbiguousImei, resolve_device
from service.devices.overrides import (
    SCOPE_MESSAGE,
    InvalidImei,
    OverrideService,
    SanctionsScopeError,
    normalise_imei,
)
from service.web.auth import require
from service.web.errors import ApiError

blp = ApiBlueprint("devices", __name__, url_prefix="/v1/devices", description="Support agents")


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
    return OverrideService(rl.devices, rl.audit)


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
    @blp.doc(security=[{"bearer": []}])
    @blp.response(201, UnlockResultSchema)
    @blp.alt_response(403, description="the only lock is one this role cannot lift")
    @blp.alt_response(409, description="ambiguous_imei: an alias of several devices")
    @require("devices:write")
    @blp.arguments(UnlockSchema)
    def post(self, body, imei):
        """Unlock the device (scoped by role; optionally time-boxed)."""
        imei = _imei(imei)
        try:
            outcome = _service().unlock(
                imei, g.principal, body["reason"], body.get("ticket"), body.get("expires_in_s")
            )
        except SanctionsScopeError as exc:
            raise ApiError(
                403,
                SCOPE_MESSAGE,
                code="sanctions_scope",
                extra={"rules": exc.rules},
            ) from None
        still_locked = bool(outcome.still_locked_by)
        return {
            "imei": imei,
            "override": override_out(outcome.override),
            "still_locked": still_locked,
            "still_locked_by": outcome.still_locked_by,
            "message": (
                "unlocked, but a sanctioned_region lock remains: only a compliance officer "
                "can lift it"
                if still_locked
                else "unlocked from the next check-in"
            ),
        }


@blp.route("/<imei:imei>/lock")
class Lock(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(201, OverrideOutSchema)
    @blp.alt_response(409, description="ambiguous_imei: an alias of several devices")
    @require("devices:write")
    @blp.arguments(LockSchema)
    def post(self, body, imei):
        """Lock the device whatever the policy says, until the override is removed."""
        return override_out(
            _service().lock(
                _imei(imei),
                g.principal,
                body["reason"],
                body.get("ticket"),
                message=body.get("message"),
            )
        )


@blp.route("/<imei:imei>/override")
class RemoveOverride(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(204)
    @blp.alt_response(404, description="the device has no override")
    @blp.alt_response(409, description="ambiguous_imei: an alias of several devices")
    @require("devices:write")
    def delete(self, imei):
        """Remove the device's override; the next check-in follows the policy again."""
        if not _service().remove(_imei(imei), g.principal):
            raise ApiError(404, "this device has no override")
        return None


@blp.route("/unlock")
class BulkUnlock(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, BulkResultSchema)
    @require("devices:write")
    @blp.arguments(BulkUnlockSchema)
    def post(self, body):
        """Unlock many devices at once; invalid IMEIs are reported, valid ones applied."""
        results = list(
            _service().bulk_unlock(
                enumerate(body["imeis"], start=1),
                g.principal,
                body["reason"],
                body.get("ticket"),
                body.get("expires_in_s"),
            )
        )
        counts = {s: 0 for s in ("applied", "unchanged", "refused", "invalid")}
        for row in results:
            counts[row["status"]] += 1
        return {**counts, "results": [r for r in results if r["status"] != "applied"]}
