"""A validated check-in turned into its signed answer: what ``POST /v1/checkin`` does once the
caller and the body are known, shared by the Flask route (routes.py) and the server's direct
path (fast.py), so both decide, count and sign the same way."""

from __future__ import annotations

import time

import orjson

from service.devices.checkin import CheckinRateLimited
from service.devices.proofs import DeviceProofError, ProofRequest
from service.web.errors import ApiError


def signed_verdict(
    rl, body: dict, raw_body: bytes, ip: str | None, proof_header: str | None, role: str, check
) -> bytes:
    """The signed verdict's JSON for BODY (validated; RAW_BODY its exact bytes, which a proof
    covers) from a caller of ROLE whose cached token CHECK confirms in the device read (None:
    just verified). ApiError for a rate limit (429) or a refused proof (401); Redis errors
    propagate (the caller answers 503)."""
    started = time.perf_counter()
    try:
        document = rl.checkin.decide(
            body, ip, time.time(), _proof(raw_body, proof_header, role), along=_along(check)
        )
    except (CheckinRateLimited, DeviceProofError) as exc:
        raise _refusal(exc) from None
    return _signed(rl, body, document, started)


async def signed_verdict_async(
    rl, connection, body: dict, raw_body: bytes, ip, proof_header, role: str, check
) -> bytes:
    """:func:`signed_verdict` with the check-in's Redis calls sent over CONNECTION
    (store/coalesced.py), on the worker's event loop."""
    started = time.perf_counter()
    try:
        document = await rl.checkin.decide_async(
            connection,
            body,
            ip,
            time.time(),
            _proof(raw_body, proof_header, role),
            along=_along(check),
        )
    except (CheckinRateLimited, DeviceProofError) as exc:
        raise _refusal(exc) from None
    return _signed(rl, body, document, started)


def _proof(raw_body: bytes, header: str | None, role: str) -> ProofRequest:
    # The body was validated first (400/422); a proof covers its exact bytes.
    return ProofRequest(header=header, body=raw_body, exempt=role == "admin")


def _along(check) -> tuple:
    return (check,) if check is not None else ()


def _refusal(exc: CheckinRateLimited | DeviceProofError) -> ApiError:
    """The answer to a check-in refused before anything was recorded."""
    if isinstance(exc, DeviceProofError):
        return ApiError(
            401, exc.problem, code="device_proof", extra={"server_time": exc.server_time}
        )
    problem = (
        "too many check-ins from this device; slow down"
        if exc.scope == "device"
        else "too many check-ins across the fleet; retry later"
    )
    return ApiError(429, problem, headers={"Retry-After": str(exc.retry_after_s)})


def _signed(rl, body: dict, document: dict, started: float) -> bytes:
    rl.metrics.decision_seconds.observe(time.perf_counter() - started)
    rl.metrics.record_verdict(document)
    document["nonce"] = body.get("nonce")
    # Serialised with orjson directly (the schema documents the shape), keys sorted so the
    # body reads like the canonical form the signature covers.
    return orjson.dumps(rl.keys.sign(document), option=orjson.OPT_SORT_KEYS)
