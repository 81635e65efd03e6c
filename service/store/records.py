"""What is stored per device, typed, with its one encoding.

A device's record is the hash ``rl:dev:{imei}`` (:func:`keys.device`) and its override the JSON
string ``rl:dev:{imei}:override`` (:func:`keys.device_override`). Every reader and writer goes
through this module: :class:`DeviceRecord` decodes the hash's fields and encodes them back, byte
for byte as they have always been stored; :func:`encode_override` / :func:`decode_override` do
the same for the override. The one other writer is the check-in's Lua script
(``store/devices.py``): it sets ``first_seen`` once and merges the newest ``history`` line inside
Redis, in the line format :class:`HistoryLine` reads.

Fields whose value is empty are not stored at all (memory per device bounds a fleet's Redis):
in :meth:`DeviceRecord.encode` they come out as None, meaning "delete the field".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.engine.model import SIGNALS, DeviceState, Override, iso_utc

#: Field order of the hash as a check-in writes it.
FIELDS = (
    "first_seen",
    "facts",
    "device",
    "verdict",
    "reasons",
    "observed",
    "lock_at",
    "policy_reasons",
    "state",
    "distributor",
    "policy_version",
    "activation",
    "history",
    # Check-in proofs (SPEC §13), written by the check-in script alone: see DeviceRecord.
    "proven",
    "unproven_checkins",
    "last_unproven",
)

_DAMAGE = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError)


class RecordError(ValueError):
    """A stored field that cannot be read (a damaged record); the message names the field."""


@dataclass(frozen=True, slots=True)
class LastCheckin:
    """The facts of the device's latest check-in (field ``facts``): when, and the place label
    each signal gave (a list of labels for a signal with several places, SPEC §9; records
    written before that hold strings only and read as they are). Kept to explain the verdict
    and to replay it in a simulation."""

    at: float
    places: dict[str, str | list[str]]

    def encode(self) -> bytes:
        """Stored form: ``{"at": <epoch seconds>, "places": {signal: label or [labels]}}``."""
        return orjson.dumps({"at": self.at, "places": self.places})

    @classmethod
    def decode(cls, raw: str | bytes) -> LastCheckin:
        """Inverse of :meth:`encode`; RecordError when RAW is not such a document."""
        try:
            data = orjson.loads(raw)
            places = data["places"]
            if not isinstance(places, dict) or not all(
                isinstance(v, str)
                or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
                for v in places.values()
            ):
                raise TypeError("places is not an object of labels")
            return cls(at=float(data["at"]), places=places)
        except _DAMAGE as exc:
            raise RecordError("facts") from exc


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """One entry of the decision history (field ``history``, newest line first).

    Two stored forms; both are read, the check-in script writes the compact one:

    - compact (since issue 17): ``since|count|age|policy_version|outcome``: the epoch second of
      the first check-in with that outcome, how many check-ins in a row had it, the seconds from
      ``since`` to the latest of them, its policy version, and the outcome as
      :func:`encode_outcome` writes it (verdict, places, reasons; the run-length key). About 45
      bytes where the JSON form took 230: memory per device is what bounds a fleet's Redis.
      ``signature`` is then "" and ``entry`` the text after ``count``.
    - JSON (before): ``signature|since|count|entry``: the outcome's digest, ``since`` (epoch
      seconds as written), the count, and the latest check-in as JSON (``at``, ``verdict``,
      ``reasons``, ``places``, ``policy_version``).

    ``since`` and ``entry`` are kept as the text stored, so an untouched line encodes back to
    the very same bytes (the retention sweep compares what it read with what it writes).
    """

    signature: str
    since: str
    count: int
    entry: str

    @classmethod
    def parse(cls, line: str) -> HistoryLine:
        """One stored line; RecordError when it is neither form."""
        try:
            signature, since, count, entry = line.split("|", 3)
            if entry.startswith("{"):
                return cls(signature, since, int(count), entry)
            since, count, entry = line.split("|", 2)
            int(since)
            return cls("", since, int(count), entry)
        except ValueError as exc:
            raise RecordError("history") from exc

    def encode(self) -> str:
        """The stored line."""
        if not self.signature:
            return f"{self.since}|{self.count}|{self.entry}"
        return f"{self.signature}|{self.since}|{self.count}|{self.entry}"

    @property
    def at(self) -> float:
        """Epoch seconds of the latest check-in of this entry."""
        try:
            if not self.signature:
                return int(self.since) + int(self.entry.split("|", 1)[0])
            return orjson.loads(self.entry)["at"]
        except _DAMAGE as exc:
            raise RecordError("history") from exc

    def decision(self) -> dict[str, Any]:
        """API form: the entry with ``at``, ``since`` (ISO-8601 UTC) and ``count``."""
        try:
            if not self.signature:
                _, version, outcome = self.entry.split("|", 2)
                verdict, reasons, places = decode_outcome(outcome)
                out = {
                    "at": iso_utc(self.at),
                    "verdict": verdict,
                    "reasons": reasons,
                    "places": places,
                    "policy_version": int(version) if version else None,
                }
            else:
                out = orjson.loads(self.entry)
                out["at"] = iso_utc(out["at"])
            out["since"] = iso_utc(float(self.since))
        except _DAMAGE as exc:
            raise RecordError("history") from exc
        out["count"] = self.count
        return out


# The compact outcome of a history line: ``verdict;places;reasons``. Verdicts and the engine's
# reason codes by a letter; places by signal position (SIGNALS order, "," between, "+" between
# the labels of a signal with several places, SPEC §9); reasons ``code:rule:region`` with ","
# between. Anything with other characters than these codes, ids and labels use (never seen
# from the engine) is kept as JSON after a "=".
_VERDICTS = {"allow": "a", "warn": "w", "lock": "l"}
_CODES = {
    "sanctioned_region": "S",
    "outside_territory": "T",
    "grace_period": "G",
    "manual_lock": "M",
    "override_unlock": "U",
}
_VERDICT_OF = {v: k for k, v in _VERDICTS.items()}
_CODE_OF = {v: k for k, v in _CODES.items()}
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def _plain(text: Any) -> bool:
    return isinstance(text, str) and set(text) <= _PLAIN


def encode_outcome(verdict: str, reasons: list[dict], places: Mapping[str, Any]) -> str:
    """The outcome part of a compact history line (see :class:`HistoryLine`); REASONS are
    ``{code, rule?, region?}``. Equal outcomes give equal text (the run-length key)."""
    labels = []
    plain = verdict in _VERDICTS and set(places) <= set(SIGNALS)
    for signal in SIGNALS:
        value = places.get(signal)
        items = [value] if isinstance(value, str) else list(value or ())
        plain = plain and all(_plain(item) and item for item in items)
        plain = plain and (isinstance(value, str) or value is None or len(items) > 1)
        labels.append("+".join(items) if plain else "")
    parts = []
    for reason in reasons:
        code, rule, region = reason.get("code"), reason.get("rule") or "", reason.get("region")
        plain = plain and set(reason) <= {"code", "rule", "region"}
        plain = plain and _plain(code) and _plain(rule) and _plain(region or "")
        if plain:
            text = f"{_CODES.get(code, code)}:{rule}"
            parts.append(f"{text}:{region}" if region else text)
    if not plain:
        return (
            "="
            + orjson.dumps(
                {"verdict": verdict, "reasons": reasons, "places": dict(places)},
                option=orjson.OPT_SORT_KEYS,
            ).decode()
        )
    return f"{_VERDICTS[verdict]};{','.join(labels).rstrip(',')};{','.join(parts)}"


def decode_outcome(text: str) -> tuple[str, list[dict], dict[str, Any]]:
    """(verdict, reasons, places) of an outcome written by :func:`encode_outcome`."""
    if text.startswith("="):
        data = orjson.loads(text[1:])
        return data["verdict"], data["reasons"], data["places"]
    verdict, labels, reasons = text.split(";")
    places: dict[str, Any] = {}
    for signal, label in zip(SIGNALS, labels.split(",") if labels else (), strict=False):
        if label:
            places[signal] = label.split("+") if "+" in label else label
    out = []
    for part in reasons.split(",") if reasons else ():
        code, rule, *region = part.split(":")
        reason = {"code": _CODE_OF.get(code, code)}
        if rule:
            reason["rule"] = rule
        if region:
            reason["region"] = region[0]
        out.append(reason)
    return _VERDICT_OF[verdict], out, places


def encode_history(lines: Iterable[HistoryLine]) -> str:
    """Stored form of a decision history ("" for none)."""
    return "\n".join(line.encode() for line in lines)


def decode_history(raw: str | None) -> tuple[HistoryLine, ...]:
    """The lines of a stored history, newest first (none for an absent field)."""
    if not raw:
        return ()
    return tuple(HistoryLine.parse(line) for line in raw.split("\n"))


def encode_state(state: DeviceState) -> bytes | None:
    """Stored form of the engine state (its empty parts left out); None when all is empty."""
    kept = {k: v for k, v in state.to_dict().items() if v}
    return orjson.dumps(kept) if kept else None


def decode_state(raw: str | bytes | None) -> DeviceState:
    """The engine state of a stored ``state`` field (the empty state when absent)."""
    try:
        return DeviceState.from_dict(orjson.loads(raw) if raw else None)
    except _DAMAGE as exc:
        raise RecordError("state") from exc


def _json(name: str, raw: str | bytes | None, default: Any = None) -> Any:
    if not raw:
        return default
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(name) from exc


def _json_or_none(value: Any) -> bytes | None:
    return orjson.dumps(value) if value else None


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device's record (the hash ``rl:dev:{imei}``), typed.

    What the latest check-in concluded (``verdict``, ``reasons``, ``observed``, ``lock_at``,
    ``policy_reasons``: what the policy alone said, for the scope check of unlocks), from what
    (``facts``, ``device``: SIM operator MCC+MNC, model, firmware), the engine state carried to
    the next check-in, the activation record once there is one, and the decision history.
    A field absent from the hash has its default here.
    """

    first_seen: float | None = None
    facts: LastCheckin | None = None
    device: dict[str, str] = field(default_factory=dict)
    verdict: str | None = None
    reasons: list[dict] = field(default_factory=list)
    observed: list[dict] = field(default_factory=list)
    lock_at: str | None = None
    policy_reasons: list[dict] = field(default_factory=list)
    state: DeviceState = field(default_factory=DeviceState)
    distributor: str | None = None
    policy_version: int | None = None
    #: ``{"at": ISO-8601, "places": {signal: label}, "in_territory": bool | None}``.
    activation: dict | None = None
    history: tuple[HistoryLine, ...] = ()
    #: Check-in proofs (SPEC §13): epoch seconds of the first check-in with a valid proof
    #: (None: never proven), how many check-ins came without one (``observe``), the latest.
    proven: float | None = None
    unproven_checkins: int = 0
    last_unproven: float | None = None

    @classmethod
    def decode(cls, fields: Mapping[str, Any]) -> DeviceRecord:
        """The record of stored FIELDS (all of the hash, or only some of them); RecordError
        naming the field when one cannot be read."""
        get = fields.get
        first_seen = get("first_seen")
        facts = get("facts")
        policy_version = get("policy_version")
        try:
            first_seen = float(first_seen) if first_seen else None
        except ValueError as exc:
            raise RecordError("first_seen") from exc
        try:
            policy_version = int(policy_version) if policy_version else None
        except ValueError as exc:
            raise RecordError("policy_version") from exc
        proofs = _decode_proof_fields(get)
        return cls(
            first_seen=first_seen,
            facts=LastCheckin.decode(facts) if facts else None,
            device=_json("device", get("device"), {}),
            verdict=get("verdict") or None,
            reasons=_json("reasons", get("reasons"), []),
            observed=_json("observed", get("observed"), []),
            lock_at=get("lock_at") or None,
            policy_reasons=_json("policy_reasons", get("policy_reasons"), []),
            state=decode_state(get("state")),
            distributor=get("distributor") or None,
            policy_version=policy_version,
            activation=_json("activation", get("activation")),
            history=decode_history(get("history")),
            **proofs,
        )

    def encode(self) -> dict[str, Any]:
        """Every field's stored form, in storage order; None for a field not to be stored."""
        return {
            "first_seen": repr(self.first_seen) if self.first_seen is not None else None,
            "facts": self.facts.encode() if self.facts is not None else None,
            "device": _json_or_none(self.device),
            "verdict": self.verdict or None,
            "reasons": _json_or_none(self.reasons),
            "observed": _json_or_none(self.observed),
            "lock_at": self.lock_at or None,
            "policy_reasons": _json_or_none(self.policy_reasons),
            "state": encode_state(self.state),
            "distributor": self.distributor or None,
            "policy_version": self.policy_version,
            "activation": orjson.dumps(self.activation) if self.activation is not None else None,
            "history": encode_history(self.history) or None,
            "proven": repr(self.proven) if self.proven is not None else None,
            "unproven_checkins": self.unproven_checkins or None,
            "last_unproven": repr(self.last_unproven) if self.last_unproven is not None else None,
        }

    def decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The recent decisions in API form, newest first; ``count`` check-ins with the same
        outcome since ``since`` are merged into one entry."""
        return [line.decision() for line in self.history[:limit]]


def _decode_proof_fields(get) -> dict[str, Any]:
    """The check-in proof fields of a stored record (SPEC §13)."""
    out: dict[str, Any] = {}
    for name in ("proven", "last_unproven"):
        raw = get(name)
        try:
            out[name] = float(raw) if raw else None
        except ValueError as exc:
            raise RecordError(name) from exc
    raw = get("unproven_checkins")
    try:
        out["unproven_checkins"] = int(raw) if raw else 0
    except ValueError as exc:
        raise RecordError("unproven_checkins") from exc
    return out


def encode_override(override: Override) -> bytes:
    """Stored form of an override (JSON; times as epoch seconds, lifts sorted). A manual lock's
    ``message`` is stored only when it has one, so other overrides keep their bytes."""
    data = {
        "kind": override.kind,
        "lifts": sorted(override.lifts),
        "reason": override.reason,
        "ticket": override.ticket,
        "actor": override.actor,
        "role": override.role,
        "created_at": override.created_at,
        "expires_at": override.expires_at,
    }
    if override.message is not None:
        data["message"] = override.message
    return orjson.dumps(data)


def decode_override(raw: str | bytes | None) -> Override | None:
    """The override of a stored value (None for none); RecordError when it cannot be read."""
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
        return Override(
            kind=data["kind"],
            lifts=frozenset(data.get("lifts", ())),
            reason=data.get("reason", ""),
            ticket=data.get("ticket"),
            actor=data.get("actor"),
            role=data.get("role"),
            created_at=float(data.get("created_at", 0.0)),
            expires_at=data.get("expires_at"),
            message=data.get("message"),
        )
    except _DAMAGE as exc:
        raise RecordError("override") from exc


def decode_sim_operators(raw: str | bytes | None) -> tuple[str, ...]:
    """The SIMs' home networks (MCC+MNC) of a stored ``device`` field: ``sim_operators`` for
    several SIMs, else ``sim_operator``; none when absent (what carrier rules judge, §12.3)."""
    device = _json("device", raw, {})
    if not isinstance(device, dict):
        raise RecordError("device")
    many = device.get("sim_operators")
    if isinstance(many, list):
        return tuple(op for op in many if isinstance(op, str))
    one = device.get("sim_operator")
    return (one,) if isinstance(one, str) else ()


# --- several IMEIs (SPEC §9): the record's ``imeis`` field, written by store/identities.py ----


def encode_aliases(aliases: Iterable[str]) -> bytes:
    """Stored form of a device's other IMEIs (JSON list, in the device's order)."""
    return orjson.dumps(list(aliases))


def decode_aliases(raw: str | bytes | None) -> tuple[str, ...]:
    """A device's other IMEIs from a stored ``imeis`` field (none when absent)."""
    if not raw:
        return ()
    try:
        data = orjson.loads(raw)
        if not isinstance(data, list) or not all(isinstance(i, str) for i in data):
            raise TypeError("imeis is not a list of strings")
        return tuple(data)
    except _DAMAGE as exc:
        raise RecordError("imeis") from exc
