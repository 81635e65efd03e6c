"""The HTTP side of Idempotency-Key, shared by every state-changing route (docs/decisions.md,
"Idempotency-Key on every state-changing call")."""

from __future__ import annotations

from flask import g, request

from service.devices.overrides import OverviewConflict
from service.store.idempotency import (
    IDEMPOTENCY_TTL_S,
    MAX_IDEMPOTENCY_KEY,
    OUTCOME_UNKNOWN_MESSAGE,
    IdempotencyConflict,
    Operation,
    OutcomeUnknown,
    anonymous_operation,
    named_operation,
    request_fingerprint,
)
from service.web.errors import ApiError, api_error_response, redis_failure, retry_after_headers

IDEMPOTENCY_HEADER = "Idempotency-Key"

#: The OpenAPI description of the Idempotency-Key header, on every state-changing call.
IDEMPOTENCY_PARAMETER = {
    "in": "header",
    "name": IDEMPOTENCY_HEADER,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
    "description": (
        "A key of the caller's choosing (a random UUID) naming this call: the same call sent "
        f"again with the same key within {IDEMPOTENCY_TTL_S // 3600} h is not applied again "
        "but answered as the first was (same status and body, header Idempotent-Replayed: "
        "true); the same key with another body is a 422. Send it, and after a 503 or a lost "
        "answer retry with the same key."
    ),
}


def request_operation(body: object) -> Operation:
    """The operation this call is: named by the caller's Idempotency-Key (with a fingerprint of
    the method, path and BODY), else anonymous. A malformed key is a 422 naming the header."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return anonymous_operation()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise ApiError(
            422,
            "the Idempotency-Key header is not valid",
            fields={
                IDEMPOTENCY_HEADER: [
                    f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
                ]
            },
        )
    fingerprint = request_fingerprint(request.method, request.path, body)
    return named_operation(g.principal.name, key, fingerprint)


def reused_key() -> ApiError:
    """The answer to a key used before for another request."""
    return ApiError(
        422,
        "this Idempotency-Key was already used for another request",
        code="idempotency_key_reused",
        fields={IDEMPOTENCY_HEADER: ["already used for a request with another body or address"]},
    )


def outcome_unknown(exc: OutcomeUnknown) -> ApiError:
    """The answer to a write sent whose outcome could not be learnt (503, retry with the key)."""
    if exc.__cause__ is not None:
        redis_failure(exc.__cause__)
    return ApiError(
        503, OUTCOME_UNKNOWN_MESSAGE, code="outcome_unknown", headers=retry_after_headers()
    )


def replay_headers(replayed: bool, etag: str | None = None) -> dict[str, str]:
    """``Idempotent-Replayed: true`` on a replayed answer (and the ETag, when there is one)."""
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if etag:
        headers["ETag"] = etag
    return headers


def register_write_errors(blueprint) -> None:
    """Answer a reused Idempotency-Key (422) and a write of unknown outcome (503) the same way
    for every view of BLUEPRINT, instead of each route catching them."""

    @blueprint.errorhandler(IdempotencyConflict)
    def _reused(exc: IdempotencyConflict):
        return api_error_response(reused_key())

    @blueprint.errorhandler(OutcomeUnknown)
    def _unknown(exc: OutcomeUnknown):
        return api_error_response(outcome_unknown(exc))

    @blueprint.errorhandler(OverviewConflict)
    def _racing(exc: OverviewConflict):
        # Nothing was written: check-ins kept changing the device under the override change.
        return api_error_response(ApiError(409, "the device kept checking in meanwhile: try again"))
