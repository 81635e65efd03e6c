"""GET /v1/keys: the public keys that verify signed verdicts, as a JWK set (SPEC §4).

Like every /v1 call it needs a token (SPEC §3), of any role: firmware fetches the keys with the
device token it checks in with. The keys themselves are not secret. The set is every key of the
deployment (SPEC §15), read from Redis by each worker every second, and served from memory
while Redis is away (to tokens this worker has verified before; others get the outage's 503).
"""

from __future__ import annotations

import orjson
from flask import Response, current_app, request
from flask.views import MethodView
from marshmallow import Schema, fields

from service.api.parsing import ApiBlueprint
from service.web.auth import authenticate_from_memory

blp = ApiBlueprint("keys", __name__, url_prefix="/v1", description="Verdict signing keys")


class JwkSchema(Schema):
    kty = fields.String(required=True, metadata={"example": "OKP"})
    crv = fields.String(required=True, metadata={"example": "Ed25519"})
    x = fields.String(required=True, metadata={"description": "public key, base64url"})
    kid = fields.String(required=True, metadata={"example": "2026-11-a"})
    use = fields.String(required=True, metadata={"example": "sig"})
    alg = fields.String(required=True, metadata={"example": "EdDSA"})


class JwkSetSchema(Schema):
    keys = fields.List(fields.Nested(JwkSchema), required=True)


@blp.route("/keys")
class Keys(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, JwkSetSchema)
    @blp.alt_response(304, description="unchanged since the ETag given in If-None-Match")
    def get(self):
        """Public keys of the signing key and of retired keys still in their grace period."""
        rl = current_app.extensions["regionlock"]
        authenticate_from_memory()  # any role
        # While Redis is away: the ring this worker read last (a key still leaves the set when
        # its publication ends; a rotation made meanwhile cannot sign before it is read).
        document = rl.keys.jwks(refresh=not rl.breaker.is_open())
        response = Response(orjson.dumps(document), status=200, mimetype="application/json")
        # Revalidate every time (cheap with the ETag): after a rotation, firmware that meets an
        # unknown kid must get the new set at once, not a cached copy.
        response.headers["Cache-Control"] = "no-cache"
        response.add_etag()
        return response.make_conditional(request)
