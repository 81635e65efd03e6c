"""Expected-decision cases: the policy's own unit tests (``policies/cases/*.yaml``).

Each case is a device (IMEI) and one or more check-ins in order; the device state the engine
returns after one check-in is carried into the next, exactly as the service would store it.
File format::

    cases:
      - name: phone in Havana by IP          # unique across all case files
        imei: "353879234252633"
        imeis: ["356938035643809"]           # optional: the device's other IMEIs (SPEC §9)
        checkins:
          - places: {ip: CU, gps: CU}        # signal -> region code (country or ISO 3166-2),
                                             # or a list of them: {network: [CU, FR]} (SPEC §9)
            sim_operators: ["20815"]         # optional: SIMs' home networks, MCC+MNC (§12.3)
            at: "2026-01-01T00:00:00Z"       # optional, see below
            override: {kind: unlock, lifts: [distributor_territory]}   # optional
            expect:
              verdict: lock                  # required
              reasons: [sanctioned_region]   # optional: reason codes, in order
              observed: []                   # optional: codes of observe-mode hits, in order
              lock_at: "2026-01-08T00:00:00Z"  # optional (null: none)
              distributor: hk-global         # optional (null: unknown device)
              message: {reason: sanctioned_region, lang: es}   # optional (null: no message)
              held_back: [gray-market]       # optional: rules whose hit was held back by
                                             # their rollout_percent (SPEC §12.1), in order
              lifted: [gray-market]          # optional: rules whose hit an exception
                                             # lifted (SPEC §12.2), in order

A check-in may also give the phone's ``locale`` (``es-CU``) for the lock-screen message, and a
manual lock override its own ``message`` text. ``expect.message`` compares only the parts it
names (``reason``, ``lang``, ``text``); null expects no message.

``at`` defaults to 2026-01-01T00:00:00Z for the first check-in and to the previous check-in plus
the policy's ``next_checkin_s`` for the others. ``override`` applies a support override (active,
no expiry) to that check-in's decision only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from service.engine.compiler import CompiledPolicy
from service.engine.model import (
    RULE_KINDS,
    SIGNALS,
    DeviceState,
    Facts,
    Override,
    Place,
    PlaceValue,
    apply_override,
    iso_utc,
    place_value,
)
from service.engine.schema import is_region_code

#: Time of a case's first check-in when it gives no ``at``.
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

_EXPECT_KEYS = (
    "verdict",
    "reasons",
    "observed",
    "lock_at",
    "distributor",
    "message",
    "held_back",
    "lifted",
)
_MESSAGE_KEYS = ("reason", "lang", "text")


class CaseError(Exception):
    """A case file that cannot be read; ``errors`` maps ``file:path`` to messages."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        first = next(iter(errors.items()), ("", []))
        super().__init__(f"invalid case file: {first[0]}: {'; '.join(first[1])}")


@dataclass(frozen=True, slots=True)
class Checkin:
    """One check-in of a case and what it must produce."""

    places: Mapping[str, PlaceValue]
    at: float | None
    expect: Mapping[str, Any]
    override: Override | None = None
    locale: str | None = None
    sim_operators: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Case:
    """A device and its check-ins; ``source`` is ``file:cases.N`` for messages."""

    name: str
    imei: str
    checkins: tuple[Checkin, ...]
    source: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CaseResult:
    """Outcome of one case: ``messages`` explain each mismatch (empty when passed)."""

    name: str
    passed: bool
    messages: tuple[str, ...] = field(default_factory=tuple)


def _parse_time(value: Any) -> float:
    if isinstance(value, datetime):  # YAML parses unquoted timestamps itself
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return stamp.timestamp()
    if isinstance(value, str):
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp()
    raise ValueError("must be an ISO-8601 time")


def _parse_checkin(raw: Any, path: str, errors: dict[str, list[str]]) -> Checkin | None:
    if not isinstance(raw, Mapping):
        errors[path] = ["must be a mapping with places and expect"]
        return None
    ok = True
    for key in raw:
        if key not in ("places", "at", "expect", "override", "locale", "sim_operators"):
            errors.setdefault(f"{path}.{key}", []).append("unknown field")
            ok = False
    places: dict[str, PlaceValue] = {}
    raw_places = raw.get("places") or {}
    if not isinstance(raw_places, Mapping):
        errors[f"{path}.places"] = ["must map signals to region codes"]
        ok = False
        raw_places = {}
    for signal, code in raw_places.items():
        if signal not in SIGNALS:
            errors[f"{path}.places.{signal}"] = [f"unknown signal; expected one of {SIGNALS}"]
            ok = False
        elif isinstance(code, list) and code:
            # Several places for one signal (a device with several SIMs, SPEC §9).
            bad = [
                c for c in code if not isinstance(c, str) or not is_region_code(c.strip().upper())
            ]
            if bad:
                errors[f"{path}.places.{signal}"] = [f"unknown region code {bad[0]!r}"]
                ok = False
            else:
                value = place_value(Place.parse(c) for c in code)
                if value is not None:
                    places[signal] = value
        elif not isinstance(code, str) or not is_region_code(code.strip().upper()):
            errors[f"{path}.places.{signal}"] = [
                f"unknown region code {code!r} (a code or a non-empty list of codes)"
            ]
            ok = False
        else:
            places[signal] = Place.parse(code)
    sim_operators = raw.get("sim_operators") or []
    if not isinstance(sim_operators, list) or not all(
        isinstance(op, str) and op.isascii() and op.isdigit() and len(op) in (5, 6)
        for op in sim_operators
    ):
        errors[f"{path}.sim_operators"] = ["must be a list of quoted MCC+MNC (5-6 digits)"]
        ok = False
        sim_operators = []
    at: float | None = None
    if raw.get("at") is not None:
        try:
            at = _parse_time(raw["at"])
        except ValueError as exc:
            errors[f"{path}.at"] = [str(exc)]
            ok = False
    expect = raw.get("expect")
    if not isinstance(expect, Mapping) or "verdict" not in expect:
        errors[f"{path}.expect"] = ["must be a mapping with at least a verdict"]
        ok = False
        expect = {}
    for key in expect:
        if key not in _EXPECT_KEYS:
            errors[f"{path}.expect.{key}"] = [f"unknown field; expected one of {_EXPECT_KEYS}"]
            ok = False
    if expect.get("verdict") not in (None, "allow", "warn", "lock"):
        errors[f"{path}.expect.verdict"] = ["must be allow, warn or lock"]
        ok = False
    if expect.get("lock_at") is not None:
        # Compare as canonical ISO text whatever form (quoted or YAML timestamp) was written.
        try:
            expect = {**expect, "lock_at": iso_utc(_parse_time(expect["lock_at"]))}
        except ValueError as exc:
            errors[f"{path}.expect.lock_at"] = [str(exc)]
            ok = False
    ok = _check_message_expectations(raw, expect, path, errors) and ok
    override: Override | None = None
    raw_override = raw.get("override")
    if raw_override is not None:
        kind = raw_override.get("kind") if isinstance(raw_override, Mapping) else None
        lifts = raw_override.get("lifts", []) if isinstance(raw_override, Mapping) else None
        if kind not in ("lock", "unlock") or not isinstance(lifts, list):
            errors[f"{path}.override"] = ["must be {kind: lock|unlock, lifts: [rule kinds]}"]
            ok = False
        elif any(kind not in RULE_KINDS for kind in lifts):
            errors[f"{path}.override.lifts"] = [f"rule kinds are {RULE_KINDS}"]
            ok = False
        else:
            message = raw_override.get("message")
            override = Override(kind=kind, lifts=frozenset(lifts), reason="case", message=message)
    for key in ("held_back", "lifted"):
        if key in expect and not (
            isinstance(expect[key], list) and all(isinstance(r, str) for r in expect[key])
        ):
            errors[f"{path}.expect.{key}"] = ["must be a list of rule ids"]
            ok = False
    if not ok:
        return None
    return Checkin(
        places=places,
        at=at,
        expect=dict(expect),
        override=override,
        locale=raw.get("locale"),
        sim_operators=tuple(dict.fromkeys(sim_operators)),
    )


def _check_message_expectations(
    raw: Mapping[str, Any], expect: Mapping[str, Any], path: str, errors: dict[str, list[str]]
) -> bool:
    """The lock-screen parts of a check-in (``locale``, ``expect.message``,
    ``override.message``); False after recording what is wrong."""
    ok = True
    locale = raw.get("locale")
    if locale is not None and not isinstance(locale, str):
        errors[f"{path}.locale"] = ["must be a language tag (a string)"]
        ok = False
    message = expect.get("message")
    if message is not None:
        if not isinstance(message, Mapping) or any(k not in _MESSAGE_KEYS for k in message):
            errors[f"{path}.expect.message"] = [
                f"must be null or a mapping of some of {_MESSAGE_KEYS}"
            ]
            ok = False
    override = raw.get("override")
    text = override.get("message") if isinstance(override, Mapping) else None
    if text is not None and (not isinstance(text, str) or not text):
        errors[f"{path}.override.message"] = ["must be a non-empty string"]
        ok = False
    return ok


def _parse_aliases(raw: Any, path: str, errors: dict[str, list[str]]) -> tuple[str, ...]:
    """A case's other IMEIs (SPEC §9): a list of quoted 14- or 15-digit strings."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors[path] = ["must be a list of quoted IMEIs"]
        return ()
    for i, imei in enumerate(raw):
        if not isinstance(imei, str) or not imei.isdigit() or len(imei) not in (14, 15):
            errors[f"{path}.{i}"] = ["must be a quoted string of 14 or 15 digits"]
    return tuple(raw)


def parse_cases(data: Any, source: str) -> list[Case]:
    """Cases from one parsed YAML document; ``source`` (the file name) prefixes error paths."""
    errors: dict[str, list[str]] = {}
    if not isinstance(data, Mapping) or not isinstance(data.get("cases"), list):
        raise CaseError({source: ["must hold a mapping with a 'cases' list"]})
    cases: list[Case] = []
    for i, raw in enumerate(data["cases"]):
        path = f"{source}:cases.{i}"
        if not isinstance(raw, Mapping):
            errors[path] = ["must be a mapping"]
            continue
        name, imei, checkins = raw.get("name"), raw.get("imei"), raw.get("checkins")
        if not isinstance(name, str) or not name.strip():
            errors[f"{path}.name"] = ["required"]
        if not isinstance(imei, str) or not imei.isdigit() or len(imei) not in (14, 15):
            errors[f"{path}.imei"] = ["must be a quoted string of 14 or 15 digits"]
        aliases = _parse_aliases(raw.get("imeis"), f"{path}.imeis", errors)
        if not isinstance(checkins, list) or not checkins:
            errors[f"{path}.checkins"] = ["must be a non-empty list"]
            continue
        parsed = [_parse_checkin(c, f"{path}.checkins.{j}", errors) for j, c in enumerate(checkins)]
        if isinstance(name, str) and isinstance(imei, str) and None not in parsed:
            steps = tuple(c for c in parsed if c is not None)
            cases.append(Case(name=name, imei=imei, checkins=steps, source=path, aliases=aliases))
    if errors:
        raise CaseError(errors)
    return cases


def load_cases(directory: str | Path) -> list[Case]:
    """Load every ``*.yaml`` in ``directory`` (name order). Raises :class:`CaseError` listing
    every problem, including case names used twice."""
    errors: dict[str, list[str]] = {}
    cases: list[Case] = []
    for file in sorted(Path(directory).glob("*.yaml")):
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
            cases.extend(parse_cases(data, file.name))
        except yaml.YAMLError as exc:
            errors[file.name] = [f"not valid YAML: {exc}"]
        except CaseError as exc:
            errors.update(exc.errors)
    seen: dict[str, str] = {}
    for case in cases:
        if case.name in seen:
            errors.setdefault(f"{case.source}.name", []).append(
                f"case name {case.name!r} already used at {seen[case.name]}"
            )
        seen.setdefault(case.name, case.source)
    if errors:
        raise CaseError(errors)
    return cases


def _compare(step: int, expect: Mapping[str, Any], got: dict[str, Any]) -> list[str]:
    messages = []
    for key in _EXPECT_KEYS:
        if key == "message" and isinstance(expect.get(key), Mapping):
            shown = got[key]
            part = {k: shown.get(k) for k in expect[key]} if shown is not None else None
            if part != dict(expect[key]):
                messages.append(f"check-in {step}: message {part!r}, expected {expect[key]!r}")
        elif key in expect and expect[key] != got[key]:
            messages.append(f"check-in {step}: {key} {got[key]!r}, expected {expect[key]!r}")
    return messages


def run_case(policy: CompiledPolicy, case: Case) -> CaseResult:
    """Play one case's check-ins through ``policy``, carrying device state between them."""
    state = DeviceState()
    now: float | None = None
    messages: list[str] = []
    for step, checkin in enumerate(case.checkins, start=1):
        if checkin.at is not None:
            now = checkin.at
        elif now is None:
            now = DEFAULT_START
        else:
            now += policy.next_checkin_s
        decision = policy.decide(
            Facts(case.imei, checkin.places, now, state, case.aliases, checkin.sim_operators)
        )
        state = decision.state
        decision = apply_override(decision, checkin.override, now)
        got = {
            "verdict": decision.verdict,
            "reasons": [r.code for r in decision.reasons],
            "observed": [r.code for r in decision.observed],
            "lock_at": iso_utc(decision.lock_at) if decision.lock_at is not None else None,
            "distributor": decision.distributor,
            "message": policy.messages.for_decision(decision, checkin.locale),
            "held_back": [r.rule for r in decision.observed if r.held_back],
            "lifted": [r.rule for r in decision.observed if r.lifted],
        }
        mismatches = _compare(step, checkin.expect, got)
        if mismatches and "reasons" not in checkin.expect:
            mismatches.append(f"check-in {step}: reasons were {got['reasons']!r}")
        messages.extend(mismatches)
    return CaseResult(name=case.name, passed=not messages, messages=tuple(messages))


def run_cases(policy: CompiledPolicy, cases: Sequence[Case]) -> list[CaseResult]:
    """Run every case against ``policy`` (each starts from an empty device state)."""
    return [run_case(policy, case) for case in cases]
