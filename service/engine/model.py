"""Value objects of the decision engine.

Everything here is a frozen, slotted dataclass so a decision can be shared between threads and
cached without defensive copies. Times are epoch seconds (``float``) inside the engine; the API
form (``to_dict``) turns them into ISO-8601 UTC strings.

The store keeps a :class:`DeviceState` per device between check-ins; the engine receives it inside
:class:`Facts` and hands the next one back in :class:`Decision.state`. The engine never persists
anything itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

#: Seconds in a day (grace periods, key grace, retention).
DAY_S = 86_400

#: The latest check-in time (epoch seconds: 9000-01-01) the engine is built to decide. With the
#: bundle bounds (engine/schema.py) every time derived from one, such as ``lock_at`` (a first
#: hit plus at most a year of grace), stays within what :func:`iso_utc` formats (year 9999).
MAX_DECISION_TIME = 221_845_392_000.0

#: Every signal that can place a device, in the order they are reported.
SIGNALS: tuple[str, ...] = ("ip", "gps", "network", "sim")

#: Verdict strength used by :func:`combine_actions`; higher wins.
ACTION_RANK: Mapping[str, int] = {"allow": 0, "warn": 1, "lock": 2}

#: Rule kinds (the ``type`` of a bundle rule).
SANCTIONED_REGION = "sanctioned_region"
DISTRIBUTOR_TERRITORY = "distributor_territory"
#: Carrier channels (SPEC §12.3): a SIM of another operator than the distributor's networks.
CARRIER_NETWORK = "carrier_network"
RULE_KINDS: tuple[str, ...] = (SANCTIONED_REGION, DISTRIBUTOR_TERRITORY, CARRIER_NETWORK)
#: What ``Reason.lifted`` says of a hit that a bundle exception set aside (SPEC §12.2).
LIFTED_BY_EXCEPTION: tuple[str, ...] = ("exception",)


def lifted_kinds(lifts: frozenset[str]) -> frozenset[str]:
    """The rule kinds an unlock with ``lifts`` sets aside: lifting ``distributor_territory``
    lifts ``carrier_network`` too (the gray-market kinds: SPEC §11's ``gray`` scope lifts
    ``distributor_territory`` and ``foreign_sim`` locks), so overrides stored before carrier
    rules existed, and every agent's unlock, keep meaning what their scope says."""
    if DISTRIBUTOR_TERRITORY in lifts and CARRIER_NETWORK not in lifts:
        return lifts | {CARRIER_NETWORK}
    return lifts


def iso_utc(ts: float) -> str:
    """Format epoch seconds as ISO-8601 UTC with a ``Z`` suffix (second precision)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def combine_actions(actions: Iterable[str]) -> str:
    """The conflict strategy: the strongest action wins (``lock`` > ``warn`` > ``allow``).

    No actions at all means nothing objected, hence ``allow``. Kept as one named function (like
    pycasbin's effectors) so the way hits combine is a decision, not an accident of rule order.
    """
    best = "allow"
    for action in actions:
        if ACTION_RANK[action] > ACTION_RANK[best]:
            best = action
            if best == "lock":  # cannot get stronger
                break
    return best


@dataclass(frozen=True, slots=True)
class Place:
    """Where one signal puts a device: an ISO 3166-1 country and, when known, an ISO 3166-2
    subdivision."""

    country: str
    subdivision: str | None = None

    @property
    def label(self) -> str:
        """The most specific code known: the subdivision when set, else the country."""
        return self.subdivision or self.country

    @classmethod
    def parse(cls, code: str) -> Place:
        """Build a place from a region code: ``"UA-43"`` -> ``Place("UA", "UA-43")``, ``"CU"`` ->
        ``Place("CU")``. Case is normalised; the code is not checked against ISO lists here
        (the bundle validator does that)."""
        text = code.strip().upper()
        country, sep, rest = text.partition("-")
        if len(country) != 2 or not country.isalpha() or (sep and not rest):
            raise ValueError(f"not a region code: {code!r}")
        return cls(country, text if sep else None)

    def in_region(self, region: str) -> bool:
        """True when this place lies in ``region`` (a country code or a subdivision code)."""
        return region == self.country or region == self.subdivision


#: What one signal gave: one :class:`Place`, or, for a device with several SIMs (SPEC §9), a
#: tuple of at least two distinct places in the order the SIMs were reported. A lone place is
#: never wrapped in a tuple, so the one-SIM case costs what it always did.
PlaceValue = Place | tuple[Place, ...]


def places_of(value: PlaceValue) -> tuple[Place, ...]:
    """Every place of one signal's value, as a tuple."""
    return (value,) if type(value) is Place else value


def place_value(places: Iterable[Place]) -> PlaceValue | None:
    """One signal's value from the places it gave (duplicates dropped, first seen first):
    None for none, the place itself for one, a tuple for several."""
    distinct: list[Place] = []
    for place in places:
        if place not in distinct:
            distinct.append(place)
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else tuple(distinct)


def signal_label(value: PlaceValue) -> str | tuple[str, ...]:
    """A signal's value as labels: a plain string for one place, a tuple for several."""
    if type(value) is Place:
        return value.label
    return tuple(place.label for place in value)


def place_labels(places: Mapping[str, PlaceValue]) -> dict[str, str | list[str]]:
    """signal -> label (a list of labels for a signal with several places): the stored and
    reported form of a check-in's places."""
    out: dict[str, str | list[str]] = {}
    for signal, value in places.items():
        out[signal] = value.label if type(value) is Place else [p.label for p in value]
    return out


def parse_place_value(label: str | Iterable[str]) -> PlaceValue:
    """Inverse of one entry of :func:`place_labels`: a region code, or a list of them.
    ValueError when a code is malformed or the list is empty."""
    if isinstance(label, str):
        return Place.parse(label)
    value = place_value(Place.parse(code) for code in label)
    if value is None:
        raise ValueError("a signal's list of places is empty")
    return value


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the store keeps for a device between check-ins.

    ``bindings[rule_id]``: a ``bind: activation`` rule fixed the device as outside its territory
    (True, a gray import) or inside (False). ``first_hits[rule_id]``: epoch second of the rule's
    first hit, the start of its ``grace_days``.
    """

    bindings: Mapping[str, bool] = field(default_factory=dict)
    first_hits: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form for the store."""
        return {"bindings": dict(self.bindings), "first_hits": dict(self.first_hits)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DeviceState:
        """Inverse of :meth:`to_dict`; ``None`` or ``{}`` gives the empty state."""
        data = data or {}
        return cls(
            bindings={str(k): bool(v) for k, v in (data.get("bindings") or {}).items()},
            first_hits={str(k): float(v) for k, v in (data.get("first_hits") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything one decision depends on: the IMEI, the place(s) each signal gave (see
    :data:`PlaceValue`), the time and the state carried from earlier check-ins. Signals with no
    place are simply absent. ``aliases`` are the device's other IMEIs in the order it reported
    them (SPEC §9); they only matter when no allocation holds the primary ``imei`` (and for
    the bundle's ``exceptions``, SPEC §12.2)."""

    imei: str
    places: Mapping[str, PlaceValue]
    now: float
    state: DeviceState = field(default_factory=DeviceState)
    aliases: tuple[str, ...] = ()
    #: MCC+MNC of each SIM's home network (from its IMSI), distinct, in the order reported:
    #: what ``carrier_network`` rules judge (SPEC §12.3). Never the IMSI itself.
    sim_operators: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a rule (or an override) contributed to a decision.

    ``kind`` is the rule type (``sanctioned_region`` / ``distributor_territory``) and is None for
    override reasons (``manual_lock``, ``override_unlock``). ``action`` is what this reason asks
    for (``lock``, ``warn`` or ``allow``). ``bound`` is True when a ``bind: activation`` rule
    answered from the stored binding rather than from the current evidence; ``signals`` are then
    the current check-in's places, not those of the binding check-in (those are not kept).
    ``lifted``: on an ``override_unlock`` reason, the rules the unlock set aside; on a rule's
    hit, ``("exception",)`` when a bundle exception set it aside (SPEC §12.2; reported under
    ``observed``). ``held_back`` marks an enforced rule's hit on a device outside its
    ``rollout_percent`` (SPEC §12.1; reported under ``observed``). ``sim_operator`` is the
    foreign SIM's home network (MCC+MNC) of a ``foreign_sim`` hit (SPEC §12.3).
    """

    code: str
    rule: str | None
    kind: str | None
    action: str
    region: str | None = None
    #: signal -> label, or a tuple of labels for a signal with several places (SPEC §9).
    signals: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    distributor: str | None = None
    territories: tuple[str, ...] = ()
    lock_at: float | None = None
    bound: bool = False
    lifted: tuple[str, ...] = ()
    held_back: bool = False
    sim_operator: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """API form: ``code, rule, region, signals`` always; ``distributor`` and ``territories``
        for territory rules (``distributor`` may be null: unknown device); ``sim_operator`` for
        carrier rules; ``lock_at`` (ISO-8601 UTC), ``bound``, ``lifted`` and ``held_back`` only
        when set."""
        out: dict[str, Any] = {
            "code": self.code,
            "rule": self.rule,
            "region": self.region,
            "signals": {
                signal: label if type(label) is str else list(label)
                for signal, label in self.signals.items()
            },
        }
        if self.kind == CARRIER_NETWORK:
            out["distributor"] = self.distributor
            out["sim_operator"] = self.sim_operator
        elif self.kind == DISTRIBUTOR_TERRITORY or self.distributor is not None:
            out["distributor"] = self.distributor
            out["territories"] = list(self.territories)
        if self.lock_at is not None:
            out["lock_at"] = iso_utc(self.lock_at)
        if self.bound:
            out["bound"] = True
        if self.lifted:
            out["lifted"] = list(self.lifted)
        if self.held_back:
            out["held_back"] = True
        return out


@dataclass(frozen=True, slots=True)
class Override:
    """A support action on one device: a manual ``lock`` or an ``unlock``.

    ``lifts`` is the set of rule kinds an unlock sets aside; the caller derives it from the
    author's role (agent: ``{"distributor_territory", "carrier_network"}``; compliance/admin:
    also ``sanctioned_region``).
    ``expires_at`` None means until removed. ``message`` (manual locks only, SPEC §10) is the
    lock-screen text the support agent wrote, shown as given instead of the bundle's.
    """

    kind: str
    lifts: frozenset[str] = frozenset()
    reason: str = ""
    ticket: str | None = None
    actor: str | None = None
    role: str | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    message: str | None = None

    def active(self, now: float) -> bool:
        """True until ``expires_at`` (exclusive); forever when it is None."""
        return self.expires_at is None or now < self.expires_at

    def device_view(self) -> dict[str, Any]:
        """What the device itself is told (in its signed verdict): the kind, what it lifts and
        until when. Never the support reason, ticket or agent: anyone holding the fleet's
        device token could read those."""
        return {
            "kind": self.kind,
            "lifts": sorted(self.lifts),
            "expires_at": iso_utc(self.expires_at) if self.expires_at is not None else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """API form for support, times as ISO-8601 UTC; ``message`` only when set."""
        out = {
            "kind": self.kind,
            "lifts": sorted(self.lifts),
            "reason": self.reason,
            "ticket": self.ticket,
            "actor": self.actor,
            "role": self.role,
            "created_at": iso_utc(self.created_at),
            "expires_at": iso_utc(self.expires_at) if self.expires_at is not None else None,
        }
        if self.message is not None:
            out["message"] = self.message
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer to one check-in.

    ``reasons`` are the enforced hits (plus override reasons), ``observed`` the hits of
    ``mode: observe`` rules, ``lock_at`` the earliest ``lock_at`` among enforced ``warn`` reasons,
    ``distributor`` the device's distributor id (None: unknown device), ``state`` the
    :class:`DeviceState` to persist, ``override`` the override that shaped the verdict, if any.
    """

    verdict: str
    reasons: tuple[Reason, ...]
    observed: tuple[Reason, ...]
    lock_at: float | None
    distributor: str | None
    state: DeviceState
    override: Override | None = None

    def to_dict(self) -> dict[str, Any]:
        """The verdict part of the check-in response (``verdict, reasons, observed, lock_at,
        override``); the API adds imei, policy version, timestamps and signature."""
        return {
            "verdict": self.verdict,
            "reasons": [r.to_dict() for r in self.reasons],
            "observed": [r.to_dict() for r in self.observed],
            "lock_at": iso_utc(self.lock_at) if self.lock_at is not None else None,
            "override": self.override.device_view() if self.override is not None else None,
        }


def earliest_lock_at(reasons: Iterable[Reason]) -> float | None:
    """Earliest ``lock_at`` among ``warn`` reasons (when the device will lock), else None."""
    times = [r.lock_at for r in reasons if r.action == "warn" and r.lock_at is not None]
    return min(times) if times else None


def apply_override(decision: Decision, override: Override | None, now: float) -> Decision:
    """Apply a support override to a policy decision.

    - no override, or an expired one: the decision unchanged;
    - ``lock``: verdict ``lock`` whatever the policy said, policy reasons kept and a
      ``manual_lock`` reason appended (``lock_at`` cleared: the device is locked already);
    - ``unlock``: enforced reasons whose rule kind is in ``override.lifts`` are removed, an
      ``override_unlock`` reason (listing the lifted rules) is appended and the verdict is
      recombined from what remains, so an agent's unlock leaves a sanctions lock in place.

    ``observed`` and ``state`` are never touched: the policy keeps evaluating underneath, so
    removing the override later falls back to exactly what the policy says.
    """
    if override is None or not override.active(now):
        return decision
    if override.kind == "lock":
        manual = Reason(code="manual_lock", rule=None, kind=None, action="lock")
        return replace(
            decision,
            verdict="lock",
            reasons=(*decision.reasons, manual),
            lock_at=None,
            override=override,
        )
    if override.kind != "unlock":
        raise ValueError(f"unknown override kind: {override.kind!r}")
    lifts = lifted_kinds(override.lifts)
    kept = tuple(r for r in decision.reasons if r.kind not in lifts)
    lifted = tuple(r.rule for r in decision.reasons if r.kind in lifts and r.rule is not None)
    unlock = Reason(code="override_unlock", rule=None, kind=None, action="allow", lifted=lifted)
    reasons = (*kept, unlock)
    return replace(
        decision,
        verdict=combine_actions(r.action for r in reasons),
        reasons=reasons,
        lock_at=earliest_lock_at(reasons),
        override=override,
    )
