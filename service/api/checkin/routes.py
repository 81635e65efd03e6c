"""POST /v1/checkin: device firmware asks for its verdict (SPEC §4)."""

from __future__ import annotations

import time

import orjson
from flask import Response, current_app, request
from flask.views import MethodView

from service.api.checkin.schemas import CheckinSchema, VerdictSchema
from service.api.parsing import ApiBlueprint
from service.web.auth import require
from service.web.client import client_ip

blp = ApiBlueprint("checkin", __name__, url_prefix="/v1", description="Device check-ins")


@blp.route("/checkin")
class Checkin(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, VerdictSchema)
    @blp.alt_response(401, description="no or unknown token")
    @blp.alt_response(403, description="the token's role may not check in")
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
        started = time.perf_counter()
        document = rl.checkin.decide(body, ip, time.time())
        rl.metrics.decision_seconds.observe(time.perf_counter() - started)
        rl.metrics.record_verdict(document)
        document["nonce"] = body.get("nonce")
        signed = rl.keys.sign(document)
        # Serialised with orjson directly (the schema above documents the shape), keys sorted
        # so the body reads like the canonical form the signature covers.
        return Response(
            orjson.dumps(signed, option=orjson.OPT_SORT_KEYS),
            status=200,
            mimetype="application/json",
        )
