"""The policy bundle's schema: every field, its checks and its normalised form.

One schema serves the YAML seed in ``policies/`` and the JSON of the policy API. The entry points
are in :mod:`service.engine.validation` (``validate_bundle``), which adds the checks that span
several objects and the allocation overlap check.

Choices where the spec is silent:

- Unknown *top-level* keys are ignored (``EXCLUDE``) so a bundle read from ``GET /v1/policy``
  (which adds ``version``, ``published_at`` ...) can be posted back as is. Unknown keys inside a
  rule, a distributor or an allocation are errors (``RAISE``): a typo such as ``min_signal`` or
  ``form`` would otherwise silently fall back to a default.
- Fields of the other rule type are errors (``regions`` on a territory rule; ``bind``,
  ``unknown_device``, ``distributors`` on a sanctions rule) for the same reason.
  ``carrier_network`` rules (SPEC §12.3) judge the SIMs' home networks, so ``regions``,
  ``signals``, ``min_signals``, ``bind`` and ``unknown_device`` are errors on them, and so is
  ``action: allow``.
- New fields of SPEC §12 (``rollout_percent``, a distributor's ``networks``, ``exceptions``)
  stay absent from the normalised bundle when not given, so older bundles keep their form.
- Region and territory codes are accepted in any case and normalised to upper case; repeated
  codes are dropped (first kept). Repeated signals are an error.
- TACs and range bounds must be *strings* of digits: YAML reads an unquoted ``01234567`` as an
  octal number, which would silently change the TAC.
- Rule and distributor ids: letters, digits, ``_ . -`` (they appear in keys, logs and URLs).
- Every open-ended field is bounded (the ``MAX_``/``MIN_`` constants below, and
  docs/decisions.md "Bundle bounds"): a bundle that validates can be decided for any check-in
  up to :data:`~service.engine.model.MAX_DECISION_TIME` and its verdicts formatted, and no field
  is large enough to hurt (a grace of 3,000,000 days put ``lock_at`` in the year 10240).
  Error messages quote at most :data:`QUOTE_CHARS` characters of what was given.

Allocations get a hand-written fast path (a bundle may hold a million of them); anything the fast
path does not accept is re-checked by :class:`AllocationSchema` for its exact error messages.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import cache
from typing import Any

import pycountry
from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)
from stdnum import luhn, numdb

from service.engine.allocation_index import is_digits
from service.engine.messages import (
    MessageSchema,
    MessagesField,
    OfflineSchema,
    check_offline_after_checkin,
)
from service.engine.model import (
    CARRIER_NETWORK,
    DAY_S,
    DISTRIBUTOR_TERRITORY,
    RULE_KINDS,
    SANCTIONED_REGION,
    SIGNALS,
)

ACTIONS = ("allow", "warn", "lock")
BINDS = ("activation", "every_checkin")
MODES = ("enforce", "observe")

# Anchored with \Z because marshmallow's Regexp validator uses match(), not fullmatch().
_TAC = re.compile(r"[0-9]{8}\Z")
_BODY = re.compile(r"[0-9]{14}\Z")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

# Bounds (docs/decisions.md, "Bundle bounds").
#: Bundle and distributor names: shown in the console, the CLI and audit details.
MAX_NAME_CHARS = 200
#: How long a device waits between check-ins: a minute (a fleet calling every second is a
#: self-inflicted flood) to a year (the longest offline lock SPEC §12 allows).
MIN_NEXT_CHECKIN_S = 60
MAX_NEXT_CHECKIN_S = 365 * DAY_S
#: Grace before a lock: up to a year (a longer grace is a ``warn`` rule).
MAX_GRACE_DAYS = 365
MAX_RULES = 200
MAX_DISTRIBUTORS = 10_000
#: Regions of a rule, territories of a distributor (before repeated codes are dropped).
MAX_REGIONS = 1_000
#: Allocations in the whole bundle (the engine is measured with a million).
MAX_ALLOCATIONS = 5_000_000
#: How much of a rejected value an error message quotes.
QUOTE_CHARS = 40
#: Home networks (MCC+MNC) of one distributor (SPEC §12.3): an operator group has a few dozen.
MAX_NETWORKS = 1_000
#: Entries of the bundle's ``exceptions`` (SPEC §12.2): test phones, demonstration units and
#: refurbished batches, by IMEI, TAC or range; a whole stock is an allocation, not exceptions.
MAX_EXCEPTIONS = 100_000
#: An exception's ``note``.
MAX_EXCEPTION_NOTE_CHARS = 500


def quote(value: Any) -> str:
    """``repr`` of a rejected value for an error message, cut to :data:`QUOTE_CHARS`."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"


@cache
def _country_codes() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


@cache
def _subdivision_codes() -> frozenset[str]:
    return frozenset(s.code for s in pycountry.subdivisions)


def is_region_code(code: str) -> bool:
    """True for an ISO 3166-1 alpha-2 country or an ISO 3166-2 subdivision code (upper case)."""
    if "-" in code:
        return code in _subdivision_codes()
    return code in _country_codes()


class RegionCode(fields.String):
    """A country (``CU``) or subdivision (``UA-43``) code, normalised to upper case."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip().upper()
        if not is_region_code(text):
            kind = "subdivision" if "-" in text else "country"
            raise ValidationError(f"unknown {kind} code {quote(value)}")
        return text


def _dedupe(codes: list[str]) -> list[str]:
    return list(dict.fromkeys(codes))


_id_field_validator = validate.Regexp(
    _ID, error="must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
)


def is_id(value: Any) -> bool:
    """True for a well-formed rule or distributor id."""
    return isinstance(value, str) and _ID.match(value) is not None


def is_tac(value: Any) -> bool:
    """True for a TAC: a string of 8 digits."""
    return isinstance(value, str) and _TAC.match(value) is not None


def _check_name(value: str) -> None:
    """Names: 1-200 characters, none of them a control character or a lone surrogate (which
    no UTF-8 encoder accepts, so such a name could be validated but never stored or shown)."""
    if not 1 <= len(value) <= MAX_NAME_CHARS:
        raise ValidationError(f"must be 1-{MAX_NAME_CHARS} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise ValidationError("must not hold control characters or lone surrogates")


def _at_most(limit: int, what: str) -> validate.Length:
    return validate.Length(max=limit, error=f"at most {limit:,} {what}")


_NETWORK = re.compile(r"[0-9]{5,6}\Z")


@cache
def _known_mccs() -> frozenset[str]:
    """Mobile country codes python-stdnum's E.212 table knows (assigned MCCs)."""
    return frozenset(
        low
        for length, low, high, _props, _children in numdb.get("imsi").prefixes
        if length == 3 and low == high
    )


def check_network(value: str) -> None:
    """A home network (MCC+MNC, SPEC §12.3): quoted, 5-6 digits, an assigned MCC."""
    if not (value.isascii() and _NETWORK.match(value)):
        raise ValidationError(f"must be an MCC+MNC: a quoted string of 5-6 digits ({quote(value)})")
    if value[:3] not in _known_mccs():
        raise ValidationError(f"unknown mobile country code {value[:3]!r} in {quote(value)}")


class AllocationSchema(Schema):
    """One allocation: ``{"tac": "35387923"}`` (every IMEI with that TAC) or
    ``{"from": "86012345000000", "to": "86012345099999"}`` (14-digit IMEI bodies, inclusive)."""

    class Meta:
        unknown = RAISE

    tac = fields.String(validate=validate.Regexp(_TAC, error="must be a string of 8 digits"))
    from_ = fields.String(
        data_key="from", validate=validate.Regexp(_BODY, error="must be a string of 14 digits")
    )
    to = fields.String(validate=validate.Regexp(_BODY, error="must be a string of 14 digits"))

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _one_form(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        # Judge the form by the keys given, not the ones that passed their field checks, so a
        # malformed TAC is reported once (at "tac") rather than also as "no allocation given".
        given = set(original) if isinstance(original, Mapping) else set()
        has_tac = "tac" in given
        has_range = "from" in given or "to" in given
        if has_tac and has_range:
            raise ValidationError("give either tac or from/to, not both")
        if not has_tac and not has_range:
            raise ValidationError("give either tac or from and to")
        if has_range:
            if "from" not in given:
                raise ValidationError("required with 'to'", "from")
            if "to" not in given:
                raise ValidationError("required with 'from'", "to")
            if "from_" in data and "to" in data and data["from_"] > data["to"]:
                # Same-length digit strings compare like the numbers they spell.
                raise ValidationError("must not be greater than 'to'", "from")

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, str]:
        if "tac" in data:
            return {"tac": data["tac"]}
        return {"from": data["from_"], "to": data["to"]}


_ALLOCATION_SCHEMA = AllocationSchema()


def _fast_allocation(item: Any) -> dict[str, str] | None:
    """The common well-formed allocation, checked without marshmallow's per-field machinery;
    None sends the item to :class:`AllocationSchema` for exact error messages."""
    if type(item) is not dict:
        return None
    if len(item) == 1:
        tac = item.get("tac")
        if is_digits(tac, 8):
            return {"tac": tac}
    elif len(item) == 2:
        low, high = item.get("from"), item.get("to")
        if is_digits(low, 14) and is_digits(high, 14) and low <= high:
            return {"from": low, "to": high}
    return None


class AllocationList(fields.Field):
    """A list of allocations, validated in a tight loop (see module docstring)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[dict[str, str]]:
        if not isinstance(value, list):
            raise ValidationError("Not a valid list.")
        if len(value) > MAX_ALLOCATIONS:  # before looking at a single one of them
            raise ValidationError(f"at most {MAX_ALLOCATIONS:,} allocations in a bundle")
        out: list[dict[str, str]] = []
        errors: dict[int, Any] = {}
        for i, item in enumerate(value):
            fast = _fast_allocation(item)
            if fast is not None:
                out.append(fast)
                continue
            if not isinstance(item, Mapping):
                errors[i] = ["must be an object with 'tac' or 'from' and 'to'"]
                continue
            try:
                loaded = _ALLOCATION_SCHEMA.load(item)
            except ValidationError as exc:
                errors[i] = exc.messages
                continue
            out.append(loaded)
        if errors:
            raise ValidationError(errors)
        return out


class DistributorSchema(Schema):
    """An authorized distributor: where it may sell (``territories``) and which IMEIs it got."""

    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=_id_field_validator)
    name = fields.String(load_default=None, allow_none=True, validate=_check_name)
    territories = fields.List(
        RegionCode(),
        required=True,
        validate=[
            validate.Length(min=1, error="must not be empty"),
            _at_most(MAX_REGIONS, "territories"),
        ],
    )
    allocations = AllocationList(load_default=list)
    #: Home networks of a carrier channel (SPEC §12.3): ``carrier_network`` rules hit this
    #: distributor's devices carrying a SIM of any other network.
    networks = fields.List(
        fields.String(validate=check_network),
        validate=[
            validate.Length(min=1, error="must not be empty (leave it out instead)"),
            _at_most(MAX_NETWORKS, "networks"),
        ],
        metadata={"description": "home networks (MCC+MNC, quoted 5-6 digits) of its SIMs"},
    )

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = {
            "id": data["id"],
            "name": data["name"] if data.get("name") is not None else data["id"],
            "territories": _dedupe(data["territories"]),
            "allocations": data["allocations"],
        }
        if data.get("networks") is not None:  # absent stays absent (same hash, same diff)
            out["networks"] = _dedupe(data["networks"])
        return out


class _OneOf(validate.OneOf):
    """``OneOf`` whose message quotes at most :data:`QUOTE_CHARS` of the rejected value."""

    def _format_error(self, value: Any) -> str:
        return self.error.format(
            input=quote(value), choices=self.choices_text, labels=self.labels_text
        )


def _one_of(what: str, choices: tuple[str, ...]) -> validate.OneOf:
    return _OneOf(choices, error=f"unknown {what} {{input}}; expected one of {{choices}}")


_TERRITORY_ONLY = ("bind", "unknown_device", "distributors")
#: Carrier rules judge the SIMs' home networks (SPEC §12.3): no places, so none of these.
_NOT_FOR_CARRIER = ("regions", "signals", "min_signals", "bind", "unknown_device")
#: Staged rollout (SPEC §12.1): the share of devices an enforced rule is enforced on.
MIN_ROLLOUT_PERCENT, MAX_ROLLOUT_PERCENT = 1, 100


class RuleSchema(Schema):
    """One rule; fields of the other rule type are errors (see module docstring)."""

    class Meta:
        unknown = RAISE

    id = fields.String(required=True, validate=_id_field_validator)
    type = fields.String(
        required=True,
        validate=_one_of("rule type", RULE_KINDS),
    )
    mode = fields.String(
        load_default="enforce",
        validate=_one_of("mode", MODES),
    )
    regions = fields.List(RegionCode(), validate=_at_most(MAX_REGIONS, "regions"))
    # Required for the place-judging rule types (checked in _check_rule); carrier rules have none.
    signals = fields.List(
        fields.String(validate=_one_of("signal", SIGNALS)),
        validate=[
            validate.Length(min=1, error="must not be empty"),
            _at_most(len(SIGNALS), "signals, each once"),
        ],
    )
    min_signals = fields.Integer(strict=True, load_default=1)
    action = fields.String(
        load_default="lock",
        validate=_one_of("action", ACTIONS),
    )
    grace_days = fields.Integer(
        strict=True,
        load_default=0,
        validate=validate.Range(0, MAX_GRACE_DAYS, error=f"must be 0-{MAX_GRACE_DAYS} (days)"),
    )
    bind = fields.String(validate=_one_of("bind", BINDS))
    unknown_device = fields.String(validate=_one_of("action", ACTIONS))
    distributors = fields.List(
        fields.String(validate=_id_field_validator),
        allow_none=True,
        validate=_at_most(MAX_DISTRIBUTORS, "distributors"),
    )
    #: The rule's own lock-screen message (SPEC §10), winning over ``messages.<code>``.
    message = fields.Nested(MessageSchema)
    #: Staged rollout (SPEC §12.1): absent means 100 (every device).
    rollout_percent = fields.Integer(
        strict=True,
        validate=validate.Range(
            MIN_ROLLOUT_PERCENT,
            MAX_ROLLOUT_PERCENT,
            error=f"must be {MIN_ROLLOUT_PERCENT}-{MAX_ROLLOUT_PERCENT} (percent of devices)",
        ),
        metadata={
            "description": "percent of devices (by a hash of rule id and primary IMEI, SPEC "
            "§12.1) the rule is enforced on; the others are only observed (held_back)"
        },
    )

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _check_rule(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        given = original.get("signals") if isinstance(original, Mapping) else None
        if isinstance(given, list):
            seen: set[Any] = set()
            for signal in given:
                if isinstance(signal, str) and signal in seen:
                    errors.setdefault("signals", []).append(f"signal {signal!r} repeated")
                if isinstance(signal, str):
                    seen.add(signal)
            low = data.get("min_signals")
            # Judged against the signals as written, so a typo in one signal does not also
            # produce a confusing min_signals error.
            if seen and isinstance(low, int) and not 1 <= low <= len(seen):
                errors["min_signals"] = [f"must be between 1 and {len(seen)} (the signals listed)"]
        kind = data.get("type")
        given_keys = set(original) if isinstance(original, Mapping) else set()
        if kind == CARRIER_NETWORK:
            _check_carrier_rule(data, given_keys, errors)
        elif "signals" not in given_keys:
            errors.setdefault("signals", []).append("Missing data for required field.")
        if kind == SANCTIONED_REGION:
            if "regions" not in data and "regions" not in errors:
                errors["regions"] = ["required for sanctioned_region rules"]
            elif data.get("regions") == []:
                errors["regions"] = ["must not be empty"]
            for name in _TERRITORY_ONLY:
                if name in data:
                    errors[name] = [
                        "only for distributor_territory and carrier_network rules"
                        if name == "distributors"
                        else "only for distributor_territory rules"
                    ]
        elif kind == DISTRIBUTOR_TERRITORY and "regions" in data:
            errors["regions"] = ["only for sanctioned_region rules"]
        if errors:
            raise ValidationError(errors)

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # A fixed key order per type keeps the normalised bundle (and its hash/diff) stable.
        out: dict[str, Any] = {"id": data["id"], "type": data["type"], "mode": data["mode"]}
        if data["type"] == SANCTIONED_REGION:
            out["regions"] = _dedupe(data["regions"])
        if data["type"] == CARRIER_NETWORK:
            return _normalise_carrier_rule(data, out)
        out["signals"] = list(data["signals"])
        out["min_signals"] = data["min_signals"]
        out["action"] = data["action"]
        out["grace_days"] = data["grace_days"]
        if data["type"] == DISTRIBUTOR_TERRITORY:
            out["bind"] = data.get("bind", "activation")
            out["unknown_device"] = data.get("unknown_device", "allow")
            # None means "every distributor"; [] would mean "none" and is kept as such.
            dists = data.get("distributors")
            out["distributors"] = _dedupe(dists) if dists is not None else None
        _keep_optional(data, out, ("message", "rollout_percent"))
        return out


def _check_carrier_rule(
    data: Mapping[str, Any], given: set[str], errors: dict[str, list[str]]
) -> None:
    """A ``carrier_network`` rule (SPEC §12.3): action lock or warn, no place-judging fields."""
    for name in _NOT_FOR_CARRIER:
        if name in given:
            errors[name] = ["not for carrier_network rules (they judge the SIMs' home networks)"]
    if data.get("action") == "allow":
        errors.setdefault("action", []).append("must be lock or warn for carrier_network rules")


def _normalise_carrier_rule(data: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """The normalised ``carrier_network`` rule, in a fixed key order."""
    out["action"] = data["action"]
    out["grace_days"] = data["grace_days"]
    dists = data.get("distributors")
    out["distributors"] = _dedupe(dists) if dists is not None else None
    _keep_optional(data, out, ("message", "rollout_percent"))
    return out


#: Entries of ``device_proof.required_for`` (TACs and distributors).
MAX_PROOF_REQUIRED_FOR = 10_000


def _proof_entry(value: str) -> None:
    # All digits: meant as a TAC, so it must be one; else a distributor id (checked to be a
    # known one in validation.py, which sees the whole bundle).
    if value.isdigit() and not is_tac(value):
        raise ValidationError("a TAC must be a string of 8 digits")
    if not value.isdigit() and not is_id(value):
        raise ValidationError("must be a distributor id or a TAC (8 digits)")


class DeviceProofSchema(Schema):
    """``device_proof: {required_for: [distributor ids or TACs]}`` (SPEC §13): devices whose
    check-ins need a valid proof whatever REGIONLOCK_DEVICE_PROOF says."""

    required_for = fields.List(
        fields.String(validate=_proof_entry),
        load_default=list,
        validate=_at_most(MAX_PROOF_REQUIRED_FOR, "entries"),
    )

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {"required_for": _dedupe(data["required_for"])}


#: Rule kinds a bundle exception may lift (SPEC §12.2): never sanctions.
EXCEPTION_LIFTABLE: tuple[str, ...] = (DISTRIBUTOR_TERRITORY, CARRIER_NETWORK)
_EXCEPTION_KEYS = frozenset({"imei", "tac", "from", "to", "lifts", "note"})


def is_imei(value: Any) -> bool:
    """True for a 15-digit IMEI string with a valid Luhn check digit."""
    return is_digits(value, 15) and luhn.is_valid(value)


def _exception_entry(item: Any, errors: dict[str, list[str]]) -> dict[str, Any] | None:
    """One exception (SPEC §12.2) normalised, or None after recording its errors (keys are
    paths relative to the entry, ``""`` the entry itself)."""
    if not isinstance(item, Mapping):
        errors[""] = ["must be an object with imei, tac or from/to, lifts and note"]
        return None
    for key in item:
        if key not in _EXCEPTION_KEYS:
            errors[str(key)] = ["Unknown field."]
    forms = [name for name in ("imei", "tac") if name in item]
    if "from" in item or "to" in item:
        forms.append("from/to")
    out: dict[str, Any] = {}
    if len(forms) != 1:
        errors.setdefault("", []).append("give exactly one of imei, tac or from and to")
    elif forms[0] == "imei":
        if is_imei(item["imei"]):
            out["imei"] = item["imei"]
        else:
            errors["imei"] = ["must be a quoted 15-digit IMEI with a valid check digit"]
    elif forms[0] == "tac":
        if is_tac(item["tac"]):
            out["tac"] = item["tac"]
        else:
            errors["tac"] = ["must be a string of 8 digits"]
    else:
        low, high = item.get("from"), item.get("to")
        for name, value in (("from", low), ("to", high)):
            if name not in item:
                errors[name] = [f"required with '{'to' if name == 'from' else 'from'}'"]
            elif not is_digits(value, 14):
                errors[name] = ["must be a string of 14 digits"]
        if "from" not in errors and "to" not in errors:
            if low > high:
                errors["from"] = ["must not be greater than 'to'"]
            else:
                out["from"], out["to"] = low, high
    lifts = item.get("lifts", [DISTRIBUTOR_TERRITORY])
    if not isinstance(lifts, list) or not lifts:
        errors["lifts"] = [f"must be a non-empty list of rule kinds of {EXCEPTION_LIFTABLE}"]
    else:
        for j, kind in enumerate(lifts):
            if kind == SANCTIONED_REGION:
                errors[f"lifts.{j}"] = [
                    "sanctioned_region may not be lifted by an exception: sanctions are lifted "
                    "per device by a compliance officer"
                ]
            elif kind not in EXCEPTION_LIFTABLE:
                errors[f"lifts.{j}"] = [
                    f"unknown rule kind {quote(kind)}; expected one of {EXCEPTION_LIFTABLE}"
                ]
    note = item.get("note")
    if not isinstance(note, str):
        errors["note"] = ["required: why these devices are excepted (1-500 characters)"]
    else:
        try:
            _check_note(note)
        except ValidationError as exc:
            errors["note"] = list(exc.messages)
    if errors:
        return None
    out["lifts"] = _dedupe(lifts)
    out["note"] = note
    return out


def _check_note(value: str) -> None:
    if not 1 <= len(value) <= MAX_EXCEPTION_NOTE_CHARS:
        raise ValidationError(f"must be 1-{MAX_EXCEPTION_NOTE_CHARS} characters")
    if any(unicodedata.category(c) == "Cs" for c in value):
        raise ValidationError("must not hold lone surrogates")


class ExceptionList(fields.Field):
    """The bundle's ``exceptions`` (SPEC §12.2): devices (by ``imei``, ``tac`` or ``from``/``to``
    range, as allocations) that the rule kinds in ``lifts`` never lock, each with a ``note``.
    Checked by hand in one loop, like allocations: a list may be long."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise ValidationError("Not a valid list.")
        if len(value) > MAX_EXCEPTIONS:
            raise ValidationError(f"at most {MAX_EXCEPTIONS:,} exceptions")
        out: list[dict[str, Any]] = []
        errors: dict[int, Any] = {}
        for i, item in enumerate(value):
            found: dict[str, list[str]] = {}
            entry = _exception_entry(item, found)
            if entry is None:
                errors[i] = _nest(found)
            else:
                out.append(entry)
        if errors:
            raise ValidationError(errors)
        return out


def _nest(flat: dict[str, list[str]]) -> Any:
    """Relative paths (``lifts.1``, ``""`` for the entry) as marshmallow's nested messages."""
    if set(flat) == {""}:
        return flat[""]
    nested: dict[str, Any] = {}
    for path, messages in flat.items():
        if not path:
            nested["_schema"] = messages
            continue
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = messages
        else:
            nested[head] = messages
    return nested


def _keep_optional(data: Mapping[str, Any], out: dict[str, Any], names: tuple[str, ...]) -> None:
    """Copy the optional fields of SPEC §9-§14 that were given: absent ones stay absent, so a
    bundle without them normalises exactly as before (same hash, same diff)."""
    for name in names:
        if data.get(name) is not None:
            out[name] = data[name]


class BundleSchema(Schema):
    """The whole bundle. Unknown top-level keys are ignored (see module docstring)."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(load_default="default", validate=_check_name)
    next_checkin_s = fields.Integer(
        strict=True,
        load_default=86400,
        validate=validate.Range(
            MIN_NEXT_CHECKIN_S,
            MAX_NEXT_CHECKIN_S,
            error=f"must be {MIN_NEXT_CHECKIN_S}-{MAX_NEXT_CHECKIN_S} seconds (a minute to a year)",
        ),
    )
    max_new_lock_ratio = fields.Float(
        load_default=0.05, validate=validate.Range(0, 1, error="must be between 0 and 1")
    )
    rules = fields.List(
        fields.Nested(RuleSchema), load_default=list, validate=_at_most(MAX_RULES, "rules")
    )
    distributors = fields.List(
        fields.Nested(DistributorSchema),
        load_default=list,
        validate=_at_most(MAX_DISTRIBUTORS, "distributors"),
    )
    device_proof = fields.Nested(DeviceProofSchema)

    #: Lock-screen messages by reason code or ``default`` (SPEC §10).
    messages = MessagesField()
    #: The offline self-lock (SPEC §11).
    offline = fields.Nested(OfflineSchema)
    #: Devices some rule kinds never lock (SPEC §12.2).
    exceptions = ExceptionList(
        metadata={
            "description": "devices the listed rule kinds never lock (SPEC §12.2): "
            "[{imei | tac | from, to, lifts: [distributor_territory | carrier_network], note}]"
        }
    )

    @validates_schema
    def _check_offline(self, data: dict[str, Any], **kwargs: Any) -> None:
        check_offline_after_checkin(data)

    @validates_schema
    def _check_total(self, data: dict[str, Any], **kwargs: Any) -> None:
        total = sum(len(d["allocations"]) for d in data.get("distributors", ()))
        if total > MAX_ALLOCATIONS:
            raise ValidationError(
                f"at most {MAX_ALLOCATIONS:,} allocations in a bundle ({total:,} given)",
                "distributors",
            )

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = {
            "name": data["name"],
            "next_checkin_s": data["next_checkin_s"],
            "max_new_lock_ratio": float(data["max_new_lock_ratio"]),
            "rules": data["rules"],
            "distributors": data["distributors"],
            # Only when given: bundles without it keep their normalised form (and diffs).
            **({"device_proof": data["device_proof"]} if "device_proof" in data else {}),
        }
        _keep_optional(data, out, ("messages", "offline", "exceptions"))
        return out


BUNDLE_SCHEMA = BundleSchema()
