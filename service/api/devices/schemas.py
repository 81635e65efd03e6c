"""Schemas of the support-agent API (SPEC §5)."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from service.api.parsing import IMEI_OUT_PATTERN
from service.crypto.device_keys import MAX_VALID_DAYS, SCOPES
from service.devices.unlock_codes import DEFAULT_VALID_DAYS
from service.engine.messages import validate_lock_message

TEN_YEARS_S = 10 * 365 * 86_400


class _Body(Schema):
    class Meta:
        unknown = EXCLUDE


class UnlockSchema(_Body):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))
    ticket = fields.String(allow_none=True, validate=validate.Length(max=100))
    expires_in_s = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=1, max=TEN_YEARS_S),
        metadata={"description": "time-boxed unlock; absent means until removed"},
    )


class UnlockCodeSchema(_Body):
    """POST /v1/devices/<imei>/unlock-code (SPEC §11)."""

    challenge = fields.String(
        required=True,
        validate=validate.Regexp(r"[0-9]{10}\Z", error="must be exactly 10 digits"),
        metadata={
            "description": "the 10 digits the locked phone shows (leading zeros count)",
            "pattern": "^[0-9]{10}$",
            "example": "0123456789",
        },
    )
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))
    ticket = fields.String(allow_none=True, validate=validate.Length(max=100))
    valid_days = fields.Integer(
        strict=True,
        load_default=DEFAULT_VALID_DAYS,
        validate=validate.Range(min=0, max=MAX_VALID_DAYS),
        metadata={
            "description": "days the code unlocks the phone, counted on its monotonic clock, "
            "and the days the matching override lasts; 0: until the phone's next successful "
            f"check-in (the override never expires). Default {DEFAULT_VALID_DAYS}.",
            "default": DEFAULT_VALID_DAYS,
        },
    )


class LockSchema(_Body):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))
    ticket = fields.String(allow_none=True, validate=validate.Length(max=100))
    message = fields.String(
        allow_none=True,
        validate=validate_lock_message,
        metadata={
            "description": "lock-screen text (1-500 characters), shown as given (lang null) "
            "instead of the policy's manual_lock message",
            "minLength": 1,
            "maxLength": 500,
        },
    )


class BulkUnlockSchema(UnlockSchema):
    imeis = fields.List(
        fields.String(),
        required=True,
        validate=validate.Length(min=1, max=100_000),
        metadata={"description": "IMEIs, one per item; invalid ones are reported, not fatal"},
    )


class OverrideOutSchema(Schema):
    kind = fields.String()
    lifts = fields.List(fields.String())
    reason = fields.String()
    ticket = fields.String(allow_none=True)
    actor = fields.String()
    role = fields.String()
    created_at = fields.String()
    expires_at = fields.String(allow_none=True)
    etag = fields.String(
        metadata={
            "description": "the override's entity tag (also the ETag header of the unlock and "
            "lock answers): send it as If-Match on DELETE .../override to remove only this "
            "override"
        }
    )

    message = fields.String(metadata={"description": "a manual lock's own lock-screen text"})


class UnlockResultSchema(Schema):
    imei = fields.String(metadata={"pattern": IMEI_OUT_PATTERN})
    override = fields.Nested(OverrideOutSchema)
    still_locked = fields.Boolean()
    still_locked_by = fields.List(fields.Dict())
    message = fields.String()


class UnlockCodeResultSchema(Schema):
    imei = fields.String(
        metadata={"pattern": IMEI_OUT_PATTERN, "description": "the primary IMEI (SPEC §9)"}
    )
    code = fields.String(
        metadata={
            "pattern": "^[0-9]{12}$",
            "description": "the 12 digits to read to the user; never stored, nor audited",
        }
    )
    challenge = fields.String(metadata={"pattern": "^[0-9]{10}$"})
    scope = fields.String(
        validate=validate.OneOf(SCOPES),
        metadata={
            "description": "gray: lifts gray-market locks; all: sanctioned_region locks too "
            "(compliance and admin only)"
        },
    )
    valid_days = fields.Integer()
    override = fields.Nested(OverrideOutSchema)
    still_locked = fields.Boolean()
    still_locked_by = fields.List(fields.Dict())
    message = fields.String()


class DeviceSchema(Schema):
    imei = fields.String(
        metadata={"pattern": IMEI_OUT_PATTERN, "description": "the primary IMEI (SPEC §9)"}
    )
    imeis = fields.List(
        fields.String(metadata={"pattern": IMEI_OUT_PATTERN}),
        metadata={
            "description": "every IMEI of the device: the primary first, then the others "
            "as it last reported them"
        },
    )
    shared_imeis = fields.List(
        fields.String(metadata={"pattern": IMEI_OUT_PATTERN}),
        metadata={
            "description": "IMEIs of this device that another device reports too, as "
            "its primary or another IMEI (a cloned or reused IMEI); never taken over"
        },
    )
    shared_with = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "shared IMEI -> the primary IMEIs of the other devices"},
    )
    tac = fields.String()
    distributor = fields.Dict(allow_none=True)
    activation = fields.Dict(allow_none=True)
    first_seen = fields.String(allow_none=True)
    last_checkin = fields.Dict(allow_none=True)
    verdict = fields.String(allow_none=True)
    reasons = fields.List(fields.Dict())
    observed = fields.List(fields.Dict())
    lock_at = fields.String(allow_none=True)
    policy_version = fields.Integer(allow_none=True)
    override = fields.Nested(OverrideOutSchema, allow_none=True)
    decisions = fields.List(fields.Dict())
    # Check-in proofs (SPEC §13).
    proven_at = fields.String(
        allow_none=True, metadata={"description": "first check-in with a valid proof"}
    )
    unproven_checkins = fields.Integer(
        metadata={"description": "check-ins answered without a valid proof (observe)"}
    )
    last_unproven_at = fields.String(allow_none=True)


class ResetActivationSchema(_Body):
    """DELETE /v1/devices/<imei>/activation: why the binding is forgotten (SPEC §13)."""

    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))
    ticket = fields.String(allow_none=True, validate=validate.Length(max=100))


class BulkResultSchema(Schema):
    applied = fields.Integer(
        metadata={
            "description": "devices changed by this call (or, replayed with the same "
            "Idempotency-Key, by its first run)"
        }
    )
    unchanged = fields.Integer()
    refused = fields.Integer()
    invalid = fields.Integer()
    results = fields.List(
        fields.Dict(), metadata={"description": "one row per line not applied: why"}
    )
