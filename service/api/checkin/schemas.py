"""Check-in request and verdict schemas (SPEC §4)."""

from __future__ import annotations

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

from service.api.parsing import IMEI_OUT_PATTERN, Digits
from service.engine.messages import MAX_TAG_CHARS, is_language_tag


class _Lenient(Schema):
    class Meta:
        # Newer firmware may send fields this version does not know: ignore them.
        unknown = EXCLUDE


#: A digit -> the digit sum of twice it (the Luhn algorithm's doubled positions).
_DOUBLED = str.maketrans("0123456789", "0246813579")


def luhn_ok(digits: str) -> bool:
    """True when DIGITS are ASCII digits whose last is the Luhn check digit of the others.

    What ``stdnum.luhn.is_valid`` answers (tests/test_compiled_schema.py compares them), in
    about a tenth of its time: the doubled positions are mapped to their digit sums by one
    ``translate`` and every digit summed as bytes, in C (a check-in checks up to four)."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    kept = digits[-1::-2].encode()
    doubled = digits[-2::-2].translate(_DOUBLED).encode()
    return (sum(kept) + sum(doubled) - 48 * len(digits)) % 10 == 0


class SimSchema(_Lenient):
    imsi = Digits(6, 15, allow_none=True)
    iccid = Digits(18, 22, allow_none=True)
    network = Digits(5, 6, allow_none=True, metadata={"description": "serving MCC+MNC"})

    @validates("iccid")
    def _iccid_luhn(self, value, **_):
        if value is not None and not luhn_ok(value):
            raise ValidationError("has an invalid Luhn check digit")


#: SPEC §9: at most this many other IMEIs and SIM objects in one check-in.
MAX_ALIASES = 3
MAX_SIMS = 4


class SlotSimSchema(SimSchema):
    """One of a device's several SIMs (SPEC §9): a ``sim`` with the slot it sits in."""

    slot = fields.Integer(
        allow_none=True, strict=True, validate=validate.Range(1, 4), metadata={"example": 1}
    )


class AliasImei(Digits):
    """One of the device's other IMEIs: 15 digits with a valid Luhn digit."""

    def __init__(self, **kwargs):
        super().__init__(15, 15, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        digits = super()._deserialize(value, attr, data, **kwargs)
        if not luhn_ok(digits):
            raise ValidationError("has an invalid Luhn check digit")
        return digits


class GpsSchema(_Lenient):
    lat = fields.Float(required=True, allow_nan=False, validate=validate.Range(-90, 90))
    lon = fields.Float(required=True, allow_nan=False, validate=validate.Range(-180, 180))


class Locale(fields.String):
    """The phone's language (SPEC §10): a BCP 47 tag. Anything else (not a string, not a
    well-formed tag) is read as no locale, never a 422: the message then falls back to ``en``."""

    def _deserialize(self, value, attr, data, **kwargs):
        return value if is_language_tag(value) else None


def _locale_field():
    return Locale(
        allow_none=True,
        metadata={
            "description": "the phone's language as a BCP 47 tag (es-CU); chooses the "
            "lock-screen message's text; a malformed tag is ignored (en)",
            "example": "es-CU",
            "maxLength": MAX_TAG_CHARS,
        },
    )


class CheckinSchema(_Lenient):
    imei = Digits(15, 15, required=True, metadata={"example": "353879234252633"})
    sim = fields.Nested(SimSchema, allow_none=True)
    gps = fields.Nested(GpsSchema, allow_none=True)
    model = fields.String(allow_none=True, validate=validate.Length(max=64))
    firmware = fields.String(allow_none=True, validate=validate.Length(max=64))
    nonce = fields.String(
        allow_none=True,
        validate=validate.Length(min=1, max=128),
        metadata={"description": "echoed inside the signed verdict, so a replay is detectable"},
    )
    imeis = fields.List(
        AliasImei(),
        allow_none=True,
        # The primary may be listed too (it is ignored), hence one more entry than aliases.
        validate=validate.Length(max=MAX_ALIASES + 1),
        metadata={
            "description": "the device's other IMEIs (one per modem), 0-3; the primary `imei` "
            "and duplicates are ignored (SPEC §9)"
        },
    )
    sims = fields.List(
        fields.Nested(SlotSimSchema),
        allow_none=True,
        validate=validate.Length(max=MAX_SIMS),
        metadata={
            "description": "the device's SIMs, 0-4, `slot` 1-4 unique; `sim` still means one "
            "more SIM (SPEC §9)"
        },
    )
    locale = _locale_field()

    @validates("imei")
    def _imei_luhn(self, value, **_):
        if not luhn_ok(value):
            raise ValidationError("has an invalid Luhn check digit")

    @validates_schema(skip_on_field_errors=True)
    def _at_most_three_aliases(self, data, **_):
        distinct = set(data.get("imeis") or ()) - {data.get("imei")}
        if len(distinct) > MAX_ALIASES:
            raise ValidationError(
                f"at most {MAX_ALIASES} IMEIs other than the primary", field_name="imeis"
            )

    @validates("sims")
    def _unique_slots(self, value, **_):
        seen: set[int] = set()
        errors: dict[int, dict[str, list[str]]] = {}
        for i, sim in enumerate(value or ()):
            slot = sim.get("slot")
            if slot is None:
                continue
            if slot in seen:
                errors[i] = {"slot": [f"slot {slot} is given twice"]}
            seen.add(slot)
        if errors:
            raise ValidationError(errors)


class PlaceLabels(fields.Field):
    """A region code, or a list of them (a signal with several places, SPEC §9)."""

    def __init__(self, **kwargs):
        kwargs.setdefault(
            "metadata",
            {
                "oneOf": [
                    {"type": "string", "example": "CU"},
                    {"type": "array", "items": {"type": "string"}, "example": ["CU", "FR"]},
                ]
            },
        )
        super().__init__(**kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None or isinstance(value, str):
            return value
        return list(value)


class ReasonSchema(Schema):
    code = fields.String(required=True)
    rule = fields.String(allow_none=True)
    region = fields.String(allow_none=True)
    signals = fields.Dict(
        keys=fields.String(),
        values=PlaceLabels(),
        metadata={
            "description": "signal -> the place it gave; a list when the signal gave several "
            "(a device with several SIMs, SPEC §9)"
        },
    )
    distributor = fields.String(allow_none=True)
    territories = fields.List(fields.String())
    lock_at = fields.String(allow_none=True)
    bound = fields.Boolean()
    lifted = fields.List(
        fields.String(),
        metadata={
            "description": "override_unlock: the rules it lifted; a rule's hit under observed: "
            '["exception"] when a bundle exception lifted it (SPEC §12.2)'
        },
    )
    # SPEC §12.1, §12.3 (kept together: the fleet-scale policy fields).
    held_back = fields.Boolean(
        metadata={
            "description": "under observed: the device is outside the rule's rollout_percent, "
            "so the hit of this enforced rule did not count (SPEC §12.1)"
        }
    )
    sim_operator = fields.String(
        metadata={"description": "foreign_sim: the foreign SIM's home network, MCC+MNC (§12.3)"}
    )


class DeviceOverrideSchema(Schema):
    """What the device is told of a support override: never the reason, ticket or agent."""

    kind = fields.String(validate=validate.OneOf(["unlock", "lock"]))
    lifts = fields.List(fields.String(), metadata={"description": "rule kinds an unlock lifts"})
    expires_at = fields.String(allow_none=True)


class SupportContactSchema(Schema):
    """Whom the user can call (each part only when the bundle gives it)."""

    phone = fields.String(metadata={"description": "E.164", "example": "+85230001234"})
    email = fields.String(metadata={"example": "unlock@example.com"})
    url = fields.String(metadata={"description": "https", "example": "https://example.com/unlock"})


class LockScreenMessageSchema(Schema):
    """What the phone shows its user (SPEC §10)."""

    reason = fields.String(
        required=True,
        metadata={"description": "the reason code that decided the verdict (manual_lock first)"},
    )
    lang = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "the key of the bundle message's text chosen for the check-in's "
            "locale (RFC 4647 lookup, then en); null for a manual lock's own text"
        },
    )
    text = fields.String(required=True)
    support = fields.Nested(SupportContactSchema, required=True, allow_none=True)


class OfflineTermsSchema(Schema):
    """The offline self-lock (SPEC §11), counted from this verdict's decided_at."""

    lock_after_s = fields.Integer(
        required=True,
        metadata={"description": "lock itself when no newer verified verdict came by then"},
    )
    warn_after_s = fields.Integer(
        required=True, metadata={"description": "warn its user from then on"}
    )


class VerdictSchema(Schema):
    imei = fields.String(required=True, metadata={"pattern": IMEI_OUT_PATTERN})
    verdict = fields.String(required=True, validate=validate.OneOf(["allow", "warn", "lock"]))
    reasons = fields.List(fields.Nested(ReasonSchema), required=True)
    observed = fields.List(fields.Nested(ReasonSchema), required=True)
    lock_at = fields.String(allow_none=True)
    override = fields.Nested(DeviceOverrideSchema, allow_none=True)
    policy_version = fields.Integer(required=True)
    next_checkin_s = fields.Integer(required=True)
    decided_at = fields.String(required=True)
    message = fields.Nested(
        LockScreenMessageSchema,
        required=True,
        allow_none=True,
        metadata={"description": "null when the verdict is allow or no message applies"},
    )
    offline = fields.Nested(
        OfflineTermsSchema,
        required=True,
        allow_none=True,
        metadata={"description": "null when the policy has no offline lock"},
    )
    nonce = fields.String(
        required=True, allow_none=True, metadata={"description": "the request's nonce, or null"}
    )
    kid = fields.String(
        required=True, metadata={"description": "the key that signed (see GET /v1/keys)"}
    )
    signature = fields.String(
        required=True,
        metadata={
            "description": "Ed25519 over the canonical JSON (keys sorted, no spaces, UTF-8) of "
            "every other field, base64url without padding"
        },
    )
