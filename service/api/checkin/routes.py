"""POST /v1/checkin: device firmware asks for its verdict (SPEC §4)."""

from __future__ import annotations

from flask import Response, current_app, g, request
from flask.views import MethodView

from service.api.checkin.answer import signed_verdict
from service.api.checkin.schemas import CheckinSchema, VerdictSchema
from service.api.parsing import CompiledApiBlueprint
from service.web.auth import require
from service.web.client import client_ip

blp = CompiledApiBlueprint("checkin", __name__, url_prefix="/v1", description="Device check-ins")

#: The check-in proof header (SPEC §13), as the OpenAPI document describes it.
PROOF_HEADER = {
    "in": "header",
    "name": "X-Device-Proof",
    "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]{1,12}\\.[0-9a-f]{64}$"},
    "description": "`<unix seconds>.<hex>`: hex is the lower-case HMAC-SHA256, under the "
    "device's auth_key, of `<unix seconds>.` followed by the exact request body "
    '(docs/device-protocol.md, "Check-in proofs"). Required when REGIONLOCK_DEVICE_PROOF '
    "is `required` or the bundle's `device_proof.required_for` names the device; each proof "
    "is accepted once, within 300 s of the server's time.",
}


@blp.route("/checkin")
class Checkin(MethodView):
    @blp.doc(security=[{"bearer": []}], parameters=[PROOF_HEADER])
    @blp.response(200, VerdictSchema)
    @blp.alt_response(
        401,
        description="no or unknown token; or code `device_proof`: a proof was required and "
        "is missing, does not match, is more than 300 s from the server's time "
        "(`server_time`, unix seconds, in the error) or was used before; nothing recorded",
    )
    @blp.alt_response(403, description="the token's role may not check in")
    @blp.alt_response(
        429,
        description="this device (IMEI) checked in more often than REGIONLOCK_CHECKIN_DEVICE_"
        "LIMIT allows, or the fleet over REGIONLOCK_CHECKIN_FLEET_LIMIT; retry after "
        "Retry-After seconds; nothing recorded",
    )
    @blp.alt_response(503, description="Redis unreachable; retry after Retry-After seconds")
    @require("checkin")
    @blp.arguments(CheckinSchema())
    def post(self, body):
        """Decide whether this device may be used where it is."""
        rl = current_app.extensions["regionlock"]
        ip = client_ip(
            request.remote_addr,
            request.headers.get("X-Forwarded-For"),
            rl.settings.trusted_proxies,
        )
        # The body was validated first (400/422); a proof covers its exact bytes. A token
        # taken from the worker's cache is confirmed by the device read itself (web/auth.py
        # TokenCheck): no round trip of its own.
        content = signed_verdict(
            rl,
            body,
            request.get_data(cache=True),
            ip,
            request.headers.get("X-Device-Proof"),
            g.principal.role,
            g.get("token_check"),
        )
        return Response(content, status=200, mimetype="application/json")
