"""The policy bundle: its schema, its validation and the seed-folder loader.

One schema serves the YAML seed in ``policies/`` and the JSON of the policy API. Validation
reports *every* problem at once as :class:`BundleError`, whose ``errors`` map a dotted path
(``rules.0.regions.2``, ``distributors.1.allocations.3.from``) to messages.

Choices where the spec is silent:

- Unknown *top-level* keys are ignored (``EXCLUDE``) so a bundle read from ``GET /v1/policy``
  (which adds ``version``, ``published_at`` ...) can be posted back as is. Unknown keys inside a
  rule, a distributor or an allocation are errors (``RAISE``): a typo such as ``min_signal`` or
  ``form`` would otherwise silently fall back to a default.
- Fields of the other rule type are errors (``regions`` on a territory rule; ``bind``,
  ``unknown_device``, ``distributors`` on a sanctions rule) for the same reason.
- Region and territory codes are accepted in any case and normalised to upper case; repeated
  codes are dropped (first kept). Repeated signals are an error.
- TACs and range bounds must be *strings* of digits: YAML reads an unquoted ``01234567`` as an
  octal number, which would silently change the TAC.
- Rule and distributor ids: letters, digits, ``_ . -`` (they appear in keys, logs and URLs).
- Allocations of the *same* distributor may overlap (harmless); across distributors they may not.

Allocations get a hand-written fast path (a bundle may hold a million of them); anything the fast
path does not accept is re-checked by :class:`AllocationSchema` for its exact error messages.
"""

from __future__ import annotations

import re
from array import array
from base64 import b64decode, b64encode
from bisect import bisect_right
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pycountry
import yaml
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

from service.engine.model import (
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
#: A TAC covers the 14-digit bodies TAC000000 .. TAC999999.
_TAC_SPAN = 1_000_000
#: Cap on reported overlaps: a pasted-twice million-row allocation list should not produce a
#: million-line error response.
_MAX_OVERLAP_ERRORS = 100


class BundleError(Exception):
    """An invalid bundle. ``errors`` maps dotted paths to lists of messages (all problems)."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        first = next(iter(errors.items()), ("", []))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"invalid bundle: {first[0]}: {'; '.join(first[1])}{more}")


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
            raise ValidationError(f"unknown {kind} code {value!r}")
        return text


def _dedupe(codes: list[str]) -> list[str]:
    return list(dict.fromkeys(codes))


_id_field_validator = validate.Regexp(
    _ID, error="must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
)


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


def _digits(value: Any, size: int) -> bool:
    # Cheaper than a regex on a million allocations; isascii() keeps out other scripts' digits.
    return type(value) is str and len(value) == size and value.isdigit() and value.isascii()


def _fast_allocation(item: Any) -> dict[str, str] | None:
    """The common well-formed allocation, checked without marshmallow's per-field machinery;
    None sends the item to :class:`AllocationSchema` for exact error messages."""
    if type(item) is not dict:
        return None
    if len(item) == 1:
        tac = item.get("tac")
        if _digits(tac, 8):
            return {"tac": tac}
    elif len(item) == 2:
        low, high = item.get("from"), item.get("to")
        if _digits(low, 14) and _digits(high, 14) and low <= high:
            return {"from": low, "to": high}
    return None


class AllocationList(fields.Field):
    """A list of allocations, validated in a tight loop (see module docstring)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[dict[str, str]]:
        if not isinstance(value, list):
            raise ValidationError("Not a valid list.")
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
    name = fields.String(load_default=None, allow_none=True)
    territories = fields.List(
        RegionCode(), required=True, validate=validate.Length(min=1, error="must not be empty")
    )
    allocations = AllocationList(load_default=list)

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {
            "id": data["id"],
            "name": data["name"] if data.get("name") is not None else data["id"],
            "territories": _dedupe(data["territories"]),
            "allocations": data["allocations"],
        }


def _one_of(what: str, choices: tuple[str, ...]) -> validate.OneOf:
    return validate.OneOf(choices, error=f"unknown {what} {{input!r}}; expected one of {{choices}}")


_TERRITORY_ONLY = ("bind", "unknown_device", "distributors")


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
    regions = fields.List(RegionCode())
    signals = fields.List(
        fields.String(validate=_one_of("signal", SIGNALS)),
        required=True,
        validate=validate.Length(min=1, error="must not be empty"),
    )
    min_signals = fields.Integer(strict=True, load_default=1)
    action = fields.String(
        load_default="lock",
        validate=_one_of("action", ACTIONS),
    )
    grace_days = fields.Integer(
        strict=True, load_default=0, validate=validate.Range(min=0, error="must be >= 0")
    )
    bind = fields.String(validate=_one_of("bind", BINDS))
    unknown_device = fields.String(validate=_one_of("action", ACTIONS))
    distributors = fields.List(fields.String(), allow_none=True)

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
        if kind == SANCTIONED_REGION:
            if "regions" not in data and "regions" not in errors:
                errors["regions"] = ["required for sanctioned_region rules"]
            elif data.get("regions") == []:
                errors["regions"] = ["must not be empty"]
            for name in _TERRITORY_ONLY:
                if name in data:
                    errors[name] = ["only for distributor_territory rules"]
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
        return out


class BundleSchema(Schema):
    """The whole bundle. Unknown top-level keys are ignored (see module docstring)."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(load_default="default")
    next_checkin_s = fields.Integer(
        strict=True, load_default=86400, validate=validate.Range(min=1, error="must be > 0")
    )
    max_new_lock_ratio = fields.Float(
        load_default=0.05, validate=validate.Range(0, 1, error="must be between 0 and 1")
    )
    rules = fields.List(fields.Nested(RuleSchema), load_default=list)
    distributors = fields.List(fields.Nested(DistributorSchema), load_default=list)

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {
            "name": data["name"],
            "next_checkin_s": data["next_checkin_s"],
            "max_new_lock_ratio": float(data["max_new_lock_ratio"]),
            "rules": data["rules"],
            "distributors": data["distributors"],
        }


_BUNDLE_SCHEMA = BundleSchema()


def _flatten(messages: Any, prefix: str, out: dict[str, list[str]]) -> None:
    """Turn marshmallow's nested error tree into ``{"rules.0.regions.2": [...]}``."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            if key == "_schema":  # schema-level errors belong to the object itself
                path = prefix or "bundle"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            _flatten(value, path, out)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out.setdefault(prefix or "bundle", []).extend(messages)
    elif isinstance(messages, list):
        for item in messages:
            _flatten(item, prefix, out)
    else:
        out.setdefault(prefix or "bundle", []).append(str(messages))


class AllocationIndex:
    """IMEI -> distributor id: a dict keyed by TAC, then sorted disjoint ranges searched with
    ``bisect``, so a lookup costs the same with ten or a million allocations."""

    __slots__ = ("_tacs", "_starts", "_ends", "_owners")

    def __init__(self, tacs: dict[str, str], starts: list[int], ends: list[int], owners: list[str]):
        self._tacs = tacs
        # Contiguous machine words rather than lists of int objects: a million ranges stay
        # within a few MB and a bisect touches a few cache lines, not twenty scattered objects.
        self._starts = array("Q", starts)
        self._ends = array("Q", ends)
        self._owners = owners

    def __len__(self) -> int:
        return len(self._tacs) + len(self._starts)

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able form that :meth:`from_snapshot` loads without parsing or sorting again:
        the TAC map, the owner ids, and the range arrays as base64 of their machine words."""
        ids = sorted(set(self._owners))
        position = {owner: i for i, owner in enumerate(ids)}
        return {
            "tacs": self._tacs,
            "ids": ids,
            "starts": b64encode(self._starts.tobytes()).decode(),
            "ends": b64encode(self._ends.tobytes()).decode(),
            "owners": b64encode(array("I", (position[o] for o in self._owners)).tobytes()).decode(),
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> AllocationIndex:
        """The index saved by :meth:`to_snapshot` (trusted: it was validated when saved)."""
        starts, ends, owner_pos = array("Q"), array("Q"), array("I")
        starts.frombytes(b64decode(data["starts"]))
        ends.frombytes(b64decode(data["ends"]))
        owner_pos.frombytes(b64decode(data["owners"]))
        if not len(starts) == len(ends) == len(owner_pos):
            raise ValueError("allocation snapshot: arrays of different lengths")
        ids = data["ids"]
        return cls(dict(data["tacs"]), starts, ends, [ids[i] for i in owner_pos])

    def owner_of(self, imei: str) -> str | None:
        """Distributor id holding ``imei`` (14 or 15 digits), or None."""
        owner = self._tacs.get(imei[:8])
        if owner is not None:
            return owner
        if not self._starts:
            return None
        body = imei[:14]
        if len(body) != 14 or not body.isdigit():
            return None
        value = int(body)
        i = bisect_right(self._starts, value) - 1
        if i >= 0 and value <= self._ends[i]:
            return self._owners[i]
        return None


def _span(item: Any) -> tuple[int, int, bool] | None:
    """(first body, last body, is_tac) of a well-formed allocation, None otherwise (the schema
    reports those)."""
    if not isinstance(item, Mapping):
        return None
    if len(item) == 1:
        tac = item.get("tac")
        if _digits(tac, 8):
            start = int(tac) * _TAC_SPAN
            return start, start + _TAC_SPAN - 1, True
    elif len(item) == 2:
        low, high = item.get("from"), item.get("to")
        if _digits(low, 14) and _digits(high, 14) and low <= high:
            return int(low), int(high), False
    return None


def _describe(item: Mapping[str, Any]) -> str:
    if "tac" in item:
        return f"tac {item['tac']}"
    return f"range {item['from']}-{item['to']}"


def _index_allocations(
    distributors: Any, errors: dict[str, list[str]], trusted: bool
) -> AllocationIndex:
    """Check that no IMEI belongs to two distributors and build the lookup index.

    Sort-and-sweep over every allocation as an interval of 14-digit bodies (a TAC is the
    interval TAC000000..TAC999999): O(n log n). While sweeping we keep the furthest-reaching
    interval seen and the furthest-reaching one of a *different* distributor, which is enough
    to find an overlap with any earlier interval of another distributor.

    ``trusted``: ``distributors`` is the normalised output of the schema, so allocations need
    no re-checking. Otherwise it is the raw input (the schema found errors elsewhere) and
    malformed allocations are skipped, so overlaps are still reported alongside other errors.
    """
    starts: list[int] = []
    ends: list[int] = []
    owners: list[int] = []  # distributor index
    positions: list[int] = []  # allocation index within its distributor
    is_tac: list[bool] = []
    ids: list[str] = []
    if not isinstance(distributors, list):
        distributors = []
    for d, dist in enumerate(distributors):
        ident = dist.get("id") if isinstance(dist, Mapping) else None
        ids.append(ident if isinstance(ident, str) else "")
        allocations = dist.get("allocations") if isinstance(dist, Mapping) else None
        if not isinstance(allocations, list):
            continue
        for a, item in enumerate(allocations):
            if trusted:
                tac = item.get("tac")
                if tac is not None:
                    start = int(tac) * _TAC_SPAN
                    span = (start, start + _TAC_SPAN - 1, True)
                else:
                    span = (int(item["from"]), int(item["to"]), False)
            else:
                found = _span(item)
                if found is None:
                    continue
                span = found
            starts.append(span[0])
            ends.append(span[1])
            is_tac.append(span[2])
            owners.append(d)
            positions.append(a)

    order = sorted(range(len(starts)), key=starts.__getitem__)
    # best: furthest end so far and its owner; other: furthest end among owners != best owner.
    best_end, best_owner, best_at = -1, -1, -1
    other_end, other_at = -1, -1
    overlaps = 0
    tacs: dict[str, str] = {}
    r_starts: list[int] = []
    r_ends: list[int] = []
    r_owners: list[str] = []
    for k in order:
        start, end, owner = starts[k], ends[k], owners[k]
        # best_end >= other_end, so most intervals are cleared by this one comparison.
        if start <= best_end:
            clash = -1
            if best_owner != owner:
                clash = best_at
            elif other_end >= start:
                clash = other_at
            if clash >= 0:
                overlaps += 1
                if overlaps <= _MAX_OVERLAP_ERRORS:
                    _report_overlap(k, clash, owners, positions, ids, distributors, errors)
        if end > best_end:
            if best_owner != owner:
                other_end, other_at = best_end, best_at
            best_end, best_owner, best_at = end, owner, k
        elif best_owner != owner and end > other_end:
            other_end, other_at = end, k
        # The lookup index is built in the same pass (only meaningful when no overlap).
        if is_tac[k]:
            tacs[f"{start // _TAC_SPAN:08d}"] = ids[owner]
        elif r_ends and r_owners[-1] == ids[owner] and start <= r_ends[-1] + 1:
            # Same distributor's overlapping or adjacent ranges merge, keeping bisect exact.
            if end > r_ends[-1]:
                r_ends[-1] = end
        else:
            r_starts.append(start)
            r_ends.append(end)
            r_owners.append(ids[owner])
    if overlaps > _MAX_OVERLAP_ERRORS:
        errors.setdefault("distributors", []).append(
            f"{overlaps - _MAX_OVERLAP_ERRORS} more overlapping allocations not listed"
        )
    return AllocationIndex(tacs, r_starts, r_ends, r_owners)


def _report_overlap(
    k: int,
    clash: int,
    owners: list[int],
    positions: list[int],
    ids: list[str],
    distributors: list[Any],
    errors: dict[str, list[str]],
) -> None:
    """Report at whichever allocation comes later in the bundle, naming the other one."""
    later_is_k = (owners[k], positions[k]) > (owners[clash], positions[clash])
    here, there = (k, clash) if later_is_k else (clash, k)
    other_item = distributors[owners[there]]["allocations"][positions[there]]
    errors.setdefault(f"distributors.{owners[here]}.allocations.{positions[here]}", []).append(
        f"overlaps {_describe(other_item)} of distributor {ids[owners[there]]!r}"
    )


def _cross_checks(data: Mapping[str, Any], errors: dict[str, list[str]]) -> None:
    """Checks spanning several objects: duplicate ids and rules naming unknown distributors."""
    rules = data.get("rules")
    distributors = data.get("distributors")
    known: set[str] = set()
    if isinstance(distributors, list):
        for d, dist in enumerate(distributors):
            ident = dist.get("id") if isinstance(dist, Mapping) else None
            if isinstance(ident, str):
                if ident in known:
                    errors.setdefault(f"distributors.{d}.id", []).append(
                        f"duplicate distributor id {ident!r}"
                    )
                known.add(ident)
    if isinstance(rules, list):
        seen: set[str] = set()
        for r, rule in enumerate(rules):
            if not isinstance(rule, Mapping):
                continue
            ident = rule.get("id")
            if isinstance(ident, str):
                if ident in seen:
                    errors.setdefault(f"rules.{r}.id", []).append(f"duplicate rule id {ident!r}")
                seen.add(ident)
            names = rule.get("distributors")
            if isinstance(names, list):
                for j, name in enumerate(names):
                    if isinstance(name, str) and name not in known:
                        errors.setdefault(f"rules.{r}.distributors.{j}", []).append(
                            f"unknown distributor {name!r}"
                        )


def validate_and_index(data: Any) -> tuple[dict[str, Any], AllocationIndex]:
    """Validate ``data`` and also return the allocation index built on the way (the compiler
    uses it so a million allocations are parsed and sorted once). Raises :class:`BundleError`."""
    if not isinstance(data, Mapping):
        raise BundleError({"bundle": ["must be an object"]})
    errors: dict[str, list[str]] = {}
    bundle: dict[str, Any] | None = None
    try:
        bundle = _BUNDLE_SCHEMA.load(data)
    except ValidationError as exc:
        _flatten(exc.messages, "", errors)
    _cross_checks(data, errors)
    if bundle is not None:
        index = _index_allocations(bundle["distributors"], errors, trusted=True)
    else:
        index = _index_allocations(data.get("distributors"), errors, trusted=False)
    if errors or bundle is None:
        raise BundleError(dict(sorted(errors.items(), key=_path_key)))
    return bundle, index


def _path_key(item: tuple[str, list[str]]) -> tuple[Any, ...]:
    # Numeric parts sort numerically so rules.10 comes after rules.9.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in item[0].split("."))


def validate_bundle(data: Any) -> dict[str, Any]:
    """Validate a bundle and return its normalised form: a plain JSON-serialisable dict with
    defaults filled in and a stable key order. Raises :class:`BundleError` with every error."""
    return validate_and_index(data)[0]


try:  # the C loader is several times faster on big allocation lists
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

_MERGED_LISTS = ("rules", "distributors")


def read_bundle_dir(
    path: str | Path,
) -> tuple[dict[str, Any], dict[str, list[tuple[str, int]]], dict[str, str]]:
    """Read and merge the ``*.yaml`` files of ``path`` without validating.

    Returns the merged data, where each merged ``rules``/``distributors`` entry came from
    (file name, index in that file) and which file set each other top-level key.
    """
    folder = Path(path)
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise BundleError({str(folder): ["no policy files (*.yaml) found"]})
    merged: dict[str, Any] = {}
    origin: dict[str, list[tuple[str, int]]] = {key: [] for key in _MERGED_LISTS}
    setters: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    for file in files:
        try:
            doc = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            errors[file.name] = [f"not valid YAML: {exc}"]
            continue
        if doc is None:
            continue
        if not isinstance(doc, dict):
            errors[file.name] = ["must hold a mapping at the top level"]
            continue
        for key, value in doc.items():
            if key in _MERGED_LISTS:
                if not isinstance(value, list):
                    errors[f"{file.name}:{key}"] = ["must be a list"]
                    continue
                merged.setdefault(key, []).extend(value)
                origin[key].extend((file.name, i) for i in range(len(value)))
            else:
                # Later files override earlier ones, like a conf.d folder: a local
                # 99-override.yaml can change a setting without editing the shipped files.
                merged[key] = value
                setters[str(key)] = file.name
    if errors:
        raise BundleError(errors)
    return merged, origin, setters


def _locate(path: str, origin: dict[str, list[tuple[str, int]]], setters: dict[str, str]) -> str:
    """Rewrite a merged-bundle path into ``file:path-in-that-file``."""
    parts = path.split(".")
    if parts[0] in origin and len(parts) > 1 and parts[1].isdigit():
        entries = origin[parts[0]]
        i = int(parts[1])
        if i < len(entries):
            file, local = entries[i]
            return ".".join([f"{file}:{parts[0]}", str(local), *parts[2:]])
    if parts[0] in setters:
        return f"{setters[parts[0]]}:{path}"
    return path


def load_bundle_dir(path: str | Path) -> dict[str, Any]:
    """Load the seed bundle: every ``*.yaml`` in ``path`` (not sub-folders), merged in file-name
    order — ``rules`` and ``distributors`` concatenated, any other top-level key taken from the
    *last* file that sets it — then validated.

    Raises :class:`BundleError`: ``{"<file>": [msg]}`` for unreadable YAML; validation errors keyed
    ``<file>:<path inside that file>`` (``10-sanctions.yaml:rules.0.regions.2``).
    """
    merged, origin, setters = read_bundle_dir(path)
    try:
        return validate_bundle(merged)
    except BundleError as exc:
        located: dict[str, list[str]] = {}
        for key, messages in exc.errors.items():
            located.setdefault(_locate(key, origin, setters), []).extend(messages)
        raise BundleError(located) from None
