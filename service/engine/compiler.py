"""Compile a validated bundle into a :class:`CompiledPolicy` and decide check-ins with it.

A bundle is checked and turned into lookup structures once (frozensets of regions and
territories, a TAC dict and sorted ranges for allocations); :meth:`CompiledPolicy.decide` is then
a tight loop over a handful of rules with no parsing and no I/O.

Semantics (SPEC §4), with the choices made where it is silent:

``sanctioned_region``
    Counts the rule's signals whose place lies in *any* of its regions (a place is in ``CU`` when
    its country is CU, in ``UA-43`` when its subdivision is UA-43). Hit at ``min_signals``. The
    reason's ``region`` is the region matched by most of those signals (tie: first in the rule's
    list) and ``signals`` the signals that put the device there.

``distributor_territory``
    Applies to devices of the listed ``distributors`` (all when unlisted); devices of other
    distributors, and unknown devices when ``distributors`` is given, are not judged by it.
    Unknown device (no allocation holds the IMEI): the rule's ``unknown_device`` action applies
    at once (no evidence needed, no binding, no grace); ``allow`` gives no reason, ``warn``/``lock``
    an ``outside_territory`` reason with ``distributor: null``.
    Known device: *outside* when ``min_signals`` of the rule's signals put it outside every
    territory; *inside* when not outside but ``min_signals`` of its signals are present; else
    undecided. ``bind: activation`` stores the first decided answer in
    ``DeviceState.bindings[rule_id]`` and uses it from then on (reason flagged ``bound: true``,
    with the current signals, since the binding check-in's are not kept).
    ``bind: every_checkin`` decides afresh each time.

``grace_days`` (both kinds, rules whose action is ``lock``)
    The first hit is stored in ``DeviceState.first_hits[rule_id]``; until first hit + N days the
    hit is a ``warn`` with code ``grace_period`` and ``lock_at``, then the rule's action with its
    own code. A check-in without a hit clears the rule's first hit. For ``warn``/``allow`` rules
    grace is meaningless (there is no lock to postpone) and is ignored.

Several places per signal (SPEC §9)
    A phone with several SIMs gives its ``network`` and ``sim`` signals a tuple of places. Such a
    signal puts the device *in* a region when any of its places is in it, and *outside every
    territory* when none of its places is inside one; a reason then shows all of the signal's
    places (a list in the API form). One place stays a bare :class:`Place` (no tuple).

``carrier_network`` (SPEC §12.3)
    Applies to devices of distributors with ``networks`` (and of the listed ``distributors``);
    hits when one of the device's SIMs has a home network (``Facts.sim_operators``, MCC+MNC from
    the IMSI) outside them: reason ``foreign_sim`` naming the first such ``sim_operator``. A
    network matches when equal, or when one is the other plus a last digit (the MNC length of an
    IMSI is not always known: 31026 and 310260). No SIM, no distributor, no ``networks``: no hit.

``rollout_percent`` and ``exceptions`` (SPEC §12.1, §12.2)
    Looked at only once a rule hits (see :mod:`service.engine.rollout`). A hit of an enforced
    rule on a device outside its rollout goes to ``observed`` with ``held_back``; a hit of a
    rule kind the bundle's exceptions lift for the device goes to ``observed`` with ``lifted:
    ["exception"]`` (warn hits too: such devices are left alone by that kind of rule). Both are
    evaluated like observe-mode rules, state included.

``mode: observe``
    Evaluated like an enforced rule, *including* its own bindings and first hits in the state,
    so ``observed`` shows exactly what enforcing it would do (and switching it to ``enforce``
    under the same id keeps what was learnt). Its hits never reach the verdict or ``lock_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from service.engine.allocation_index import AllocationIndex
from service.engine.messages import MessageBook, offline_terms
from service.engine.model import (
    CARRIER_NETWORK,
    DAY_S,
    LIFTED_BY_EXCEPTION,
    SANCTIONED_REGION,
    Decision,
    DeviceState,
    Facts,
    Place,
    PlaceValue,
    Reason,
    combine_actions,
    earliest_lock_at,
    places_of,
    signal_label,
)
from service.engine.rollout import ExceptionIndex, in_rollout
from service.engine.schema import is_tac
from service.engine.validation import validate_and_index

__all__ = [
    "CompiledPolicy",
    "CompiledRule",
    "DistributorInfo",
    "combine_actions",
    "compile_bundle",
]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with everything precomputed that :meth:`CompiledPolicy.decide` needs."""

    id: str
    kind: str
    enforced: bool
    signals: tuple[str, ...]
    min_signals: int
    action: str
    #: Seconds of grace before a lock; 0 when none (or when the action is not ``lock``).
    grace_s: float
    #: Region code -> position in the rule's list (tie-break when reporting); sanctions only.
    region_rank: Mapping[str, int]
    regions: frozenset[str]
    bind_activation: bool
    unknown_device: str
    #: None: every distributor.
    distributors: frozenset[str] | None
    #: Staged rollout (SPEC §12.1): 100 (the default) enforces on every device.
    rollout_percent: int = 100


@dataclass(frozen=True, slots=True)
class DistributorInfo:
    """What the engine knows of a distributor; ``networks`` (SPEC §12.3) is None without any."""

    id: str
    name: str
    territories: tuple[str, ...]
    territory_set: frozenset[str]
    networks: frozenset[str] | None = None
    #: The networks as one length shorter or longer (see :meth:`carries`).
    network_variants: frozenset[str] = frozenset()

    def carries(self, operator: str) -> bool:
        """True when a SIM with home network ``operator`` (MCC+MNC) is one of the distributor's
        networks: equal, or equal but for a third MNC digit on either side (the MNC length of an
        IMSI is not always known, so 31026 and 310260 are taken as the same network)."""
        networks = self.networks
        if networks is None:
            return True
        if operator in networks or operator in self.network_variants:
            return True
        return len(operator) == 6 and operator[:5] in networks  # 31026 listed, 310260 read


def _distributor_info(d: Mapping[str, Any]) -> DistributorInfo:
    networks = d.get("networks")
    variants: set[str] = set()
    for network in networks or ():
        if len(network) == 6:
            variants.add(network[:5])  # 310260 listed: an IMSI read as 31026 matches
    return DistributorInfo(
        id=d["id"],
        name=d["name"],
        territories=tuple(d["territories"]),
        territory_set=frozenset(d["territories"]),
        networks=frozenset(networks) if networks is not None else None,
        network_variants=frozenset(variants),
    )


def _compile_rule(rule: Mapping[str, Any]) -> CompiledRule:
    regions = tuple(rule.get("regions") or ())
    dists = rule.get("distributors")
    grace = rule["grace_days"] * DAY_S if rule["action"] == "lock" else 0.0
    return CompiledRule(
        id=rule["id"],
        kind=rule["type"],
        enforced=rule["mode"] == "enforce",
        signals=tuple(rule.get("signals") or ()),  # carrier rules have none
        min_signals=rule.get("min_signals", 1),
        action=rule["action"],
        grace_s=grace,
        region_rank={code: i for i, code in enumerate(regions)},
        regions=frozenset(regions),
        bind_activation=rule.get("bind", "activation") == "activation",
        unknown_device=rule.get("unknown_device", "allow"),
        distributors=frozenset(dists) if dists is not None else None,
        rollout_percent=rule.get("rollout_percent", 100),
    )


def _most_common_label(signals: Mapping[str, str | tuple[str, ...]]) -> str | None:
    """Label given by most signals' places (tie: the earlier one), None when there are none."""
    labels: list[str] = []
    for value in signals.values():
        if type(value) is str:
            labels.append(value)
        else:
            labels.extend(value)
    if len(labels) < 3:  # with one or two labels the first one always wins (or ties)
        return labels[0] if labels else None
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    best: str | None = None
    for label, count in counts.items():  # dicts keep first-seen order: ties go to the earlier
        if best is None or count > counts[best]:
            best = label
    return best


class CompiledPolicy:
    """A validated bundle ready to decide check-ins.

    ``bundle`` is the normalised bundle dict; ``rules`` the compiled rules in bundle order;
    ``messages`` the lock-screen messages (:class:`~service.engine.messages.MessageBook`) and
    ``offline`` the response's offline terms.
    """

    __slots__ = (
        "bundle",
        "next_checkin_s",
        "max_new_lock_ratio",
        "rules",
        "_index",
        "_distributors",
        "_proof_tacs",
        "_proof_distributors",
        "messages",
        "offline",
        "_exceptions",
        "_staged",
        "judges_sims",
    )

    def __init__(
        self,
        bundle: dict[str, Any],
        index: AllocationIndex,
        exceptions: ExceptionIndex | None = None,
    ):
        self.bundle = bundle
        self.next_checkin_s: int = bundle["next_checkin_s"]
        self.max_new_lock_ratio: float = bundle["max_new_lock_ratio"]
        self.rules: tuple[CompiledRule, ...] = tuple(_compile_rule(r) for r in bundle["rules"])
        self._index = index
        self._distributors: dict[str, DistributorInfo] = {
            d["id"]: _distributor_info(d) for d in bundle["distributors"]
        }
        # SPEC §12.2: None when the bundle has no exceptions (nothing to look up per check-in);
        # a snapshot hands the index over ready-made.
        if exceptions is None:
            exceptions = ExceptionIndex(bundle.get("exceptions") or ())
        self._exceptions: ExceptionIndex | None = exceptions if exceptions else None
        # SPEC §12.1: the enforced rules with a staged rollout (see device_key).
        self._staged = tuple(r for r in self.rules if r.enforced and r.rollout_percent < 100)
        #: True when a rule judges the SIMs' home networks (``Facts.sim_operators``, §12.3).
        self.judges_sims: bool = any(r.kind == CARRIER_NETWORK for r in self.rules)
        # device_proof.required_for (SPEC §13): 8-digit entries are TACs, others distributors.
        required_for = (bundle.get("device_proof") or {}).get("required_for") or ()
        self._proof_tacs = frozenset(x for x in required_for if is_tac(x))
        self._proof_distributors = frozenset(x for x in required_for if not is_tac(x))

        # What the user sees (SPEC §10, §11): the lock-screen messages and the response's
        # ``offline`` terms (None when the bundle has no offline block).
        self.messages: MessageBook = MessageBook.from_bundle(bundle)
        self.offline: dict[str, int] | None = offline_terms(bundle.get("offline"))

    def to_snapshot(self) -> bytes:
        """The compiled policy as bytes that :meth:`from_snapshot` loads in a fraction of the
        time a compile takes (no validation, no parsing or sorting of allocations): published
        with each version so every worker can switch to it within a second, whatever its size.
        ``bundle`` comes back without the distributors' allocations (the index holds them) and
        without ``exceptions`` (their index, SPEC §12.2, is saved beside it when there are)."""
        slim = dict(self.bundle)
        slim["distributors"] = [
            {k: v for k, v in d.items() if k != "allocations"} for d in self.bundle["distributors"]
        ]
        snapshot = {"format": 1, "bundle": slim, "index": self._index.to_snapshot()}
        if self._exceptions is not None:
            del slim["exceptions"]
            snapshot["exceptions"] = self._exceptions.to_snapshot()
        return orjson.dumps(snapshot)

    @classmethod
    def from_snapshot(cls, raw: bytes | str) -> CompiledPolicy:
        """Load a policy saved by :meth:`to_snapshot` (trusted: validated when it was saved)."""
        data = orjson.loads(raw)
        if data.get("format") != 1:
            raise ValueError(f"unknown compiled-policy snapshot format {data.get('format')!r}")
        exceptions = data.get("exceptions")
        return cls(
            data["bundle"],
            AllocationIndex.from_snapshot(data["index"]),
            ExceptionIndex.from_snapshot(exceptions) if exceptions is not None else None,
        )

    def distributor_of(self, imei: str, aliases: tuple[str, ...] = ()) -> str | None:
        """Id of the distributor whose allocation holds ``imei``, or None (unknown device).

        A device with several IMEIs (SPEC §9) is judged by its primary ``imei``; when no
        allocation holds it, by the first of ``aliases`` (in the order the device reported them)
        that one holds."""
        owner = self._index.owner_of(imei)
        if owner is None and aliases:
            for alias in aliases:
                owner = self._index.owner_of(alias)
                if owner is not None:
                    break
        return owner

    def proof_required(self, imei: str) -> bool:
        """True when the bundle's ``device_proof.required_for`` names this device's TAC or
        distributor: its check-ins need a valid proof whatever the setting (SPEC §13)."""
        if not self._proof_tacs and not self._proof_distributors:
            return False
        if imei[:8] in self._proof_tacs:
            return True
        return bool(self._proof_distributors) and (
            self._index.owner_of(imei) in self._proof_distributors
        )

    def device_key(self, imei: str, aliases: tuple[str, ...] = ()) -> tuple:
        """What, beyond its distributor, a decision reads of a device's IMEIs: its group in
        each staged rollout and what the exceptions lift for it (SPEC §12.1, §12.2); ``()``
        when the bundle has neither. Devices with equal keys, distributors and facts get equal
        decisions (the impact simulation caches on it)."""
        if not self._staged and self._exceptions is None:
            return ()
        groups = tuple(in_rollout(r.id, imei, r.rollout_percent) for r in self._staged)
        if self._exceptions is None:
            return groups
        return (*groups, tuple(sorted(self._exceptions.lifts_for(imei, aliases))))

    def distributor(self, distributor_id: str) -> DistributorInfo | None:
        """Name and territories of a distributor, None for an unknown id."""
        return self._distributors.get(distributor_id)

    def decide(self, facts: Facts) -> Decision:
        """Evaluate every rule for one check-in and combine the enforced hits into a verdict.

        Three steps: judge each rule by its kind (a reason, or None for no hit), postpone lock
        hits by their grace period, then combine the enforced reasons with the named conflict
        strategy (:func:`combine_actions`) into a :class:`Decision`.

        Pure: reads only ``facts`` and the compiled bundle; the new device state is returned in
        ``Decision.state`` for the caller to persist.
        """
        places = facts.places
        distributor_id = self._index.owner_of(facts.imei)
        if distributor_id is None and facts.aliases:
            distributor_id = self.distributor_of(facts.imei, facts.aliases)
        device = self._distributors.get(distributor_id) if distributor_id is not None else None
        state = _StateChanges(facts.state)
        reasons: list[Reason] = []
        observed: list[Reason] = []
        exceptions = self._exceptions
        for rule in self.rules:
            if rule.kind == SANCTIONED_REGION:
                reason = _judge_sanctions(rule, places)
            elif rule.distributors is not None and distributor_id not in rule.distributors:
                continue  # another distributor's devices (or unknown ones): not judged here
            elif rule.kind == CARRIER_NETWORK:
                reason = _judge_carrier(rule, facts.sim_operators, places, device)
            elif device is None:
                # Unknown device: its unknown_device action applies as is (no grace, no binding).
                reason = _judge_unknown_device(rule, places)
                if reason is not None:
                    if rule.rollout_percent == 100 and exceptions is None:
                        (reasons if rule.enforced else observed).append(reason)
                    else:
                        _file_staged(rule, reason, facts, exceptions, reasons, observed)
                continue
            else:
                reason = _judge_territory(rule, places, device, state)
            if reason is None:
                state.clear_first_hit(rule.id)  # a clean check-in restarts the grace period
                continue
            if rule.grace_s:
                reason = _with_grace(rule, reason, facts.now, state)
            if rule.rollout_percent == 100 and exceptions is None:  # the §1-§8 path
                (reasons if rule.enforced else observed).append(reason)
            else:
                _file_staged(rule, reason, facts, exceptions, reasons, observed)
        return _decision(reasons, observed, distributor_id, state.result())


def _file_staged(
    rule: CompiledRule,
    reason: Reason,
    facts: Facts,
    exceptions: ExceptionIndex | None,
    reasons: list[Reason],
    observed: list[Reason],
) -> None:
    """File a hit of a rule with a staged rollout, or of a bundle with exceptions: enforced
    only when the rule is, the device is in its rollout and no exception lifts its kind;
    otherwise observed, flagged ``held_back`` (outside the rollout of an enforced rule) and/or
    ``lifted: ["exception"]``."""
    held_back = rule.enforced and not in_rollout(rule.id, facts.imei, rule.rollout_percent)
    lifted = exceptions is not None and rule.kind in exceptions.lifts_for(facts.imei, facts.aliases)
    if not held_back and not lifted:
        (reasons if rule.enforced else observed).append(reason)
        return
    # Built directly rather than with dataclasses.replace (three times slower, on every hit).
    observed.append(
        Reason(
            reason.code,
            reason.rule,
            reason.kind,
            reason.action,
            reason.region,
            reason.signals,
            reason.distributor,
            reason.territories,
            reason.lock_at,
            reason.bound,
            LIFTED_BY_EXCEPTION if lifted else reason.lifted,
            held_back,
            reason.sim_operator,
        )
    )


class _StateChanges:
    """The device state as it changes during one decision, copied on first write: most
    check-ins change nothing, and then the old state object itself is handed back."""

    __slots__ = ("_old", "_bindings", "_first_hits")

    def __init__(self, old: DeviceState):
        self._old = old
        self._bindings: dict[str, bool] | None = None
        self._first_hits: dict[str, float] | None = None

    def binding(self, rule_id: str) -> bool | None:
        """The stored answer of a ``bind: activation`` rule (True: outside), None when unbound."""
        return self._old.bindings.get(rule_id)

    def bind(self, rule_id: str, outside: bool) -> None:
        """Fix a ``bind: activation`` rule's answer for this device from now on."""
        if self._bindings is None:
            self._bindings = dict(self._old.bindings)
        self._bindings[rule_id] = outside

    def first_hit(self, rule_id: str, now: float) -> float:
        """When the rule first hit this device; ``now`` (and recorded) when this is the first."""
        first = self._old.first_hits.get(rule_id)
        if first is None:
            first = now
            if self._first_hits is None:
                self._first_hits = dict(self._old.first_hits)
            self._first_hits[rule_id] = now
        return first

    def clear_first_hit(self, rule_id: str) -> None:
        """Forget the rule's first hit (the device checked in without hitting it)."""
        if rule_id in self._old.first_hits:
            if self._first_hits is None:
                self._first_hits = dict(self._old.first_hits)
            del self._first_hits[rule_id]

    def result(self) -> DeviceState:
        """The state to persist: the old object when nothing changed."""
        if self._bindings is None and self._first_hits is None:
            return self._old
        return DeviceState(
            bindings=self._bindings if self._bindings is not None else dict(self._old.bindings),
            first_hits=(
                self._first_hits if self._first_hits is not None else dict(self._old.first_hits)
            ),
        )


def _judge_sanctions(rule: CompiledRule, places: Mapping[str, PlaceValue]) -> Reason | None:
    """A ``sanctioned_region`` reason when ``min_signals`` signals put the device in one of the
    rule's regions, else None."""
    matched = _sanction_signals(rule, places)
    if matched is None:
        return None
    region, signals = _best_region(rule, matched, places)
    return Reason("sanctioned_region", rule.id, rule.kind, rule.action, region, signals)


def _judge_carrier(
    rule: CompiledRule,
    operators: tuple[str, ...],
    places: Mapping[str, PlaceValue],
    device: DistributorInfo | None,
) -> Reason | None:
    """A ``foreign_sim`` reason when the device's distributor lists ``networks`` and one of its
    SIMs' home networks is not among them (the first such one is named), else None."""
    if device is None or device.networks is None or not operators:
        return None
    for operator in operators:
        if not device.carries(operator):
            sim = places.get("sim")
            return Reason(
                "foreign_sim",
                rule.id,
                rule.kind,
                rule.action,
                signals={"sim": signal_label(sim)} if sim is not None else {},
                distributor=device.id,
                sim_operator=operator,
            )
    return None


def _judge_unknown_device(rule: CompiledRule, places: Mapping[str, PlaceValue]) -> Reason | None:
    """A territory rule on a device no allocation holds: nothing to compare places with, so the
    rule's ``unknown_device`` action applies at once (``allow``: no reason)."""
    if rule.unknown_device == "allow":
        return None
    return Reason(
        "outside_territory",
        rule.id,
        rule.kind,
        rule.unknown_device,
        signals=_present(rule, places),
    )


def _judge_territory(
    rule: CompiledRule,
    places: Mapping[str, PlaceValue],
    device: DistributorInfo,
    state: _StateChanges,
) -> Reason | None:
    """An ``outside_territory`` reason when the device is outside its distributor's territories
    (by ``min_signals`` signals now, or by the stored binding of a ``bind: activation`` rule),
    else None. Binds the rule's first decided answer."""
    outside, present = _territory_signals(rule, places, device.territory_set)
    hit = len(outside) >= rule.min_signals
    bound = False
    if rule.bind_activation:
        stored = state.binding(rule.id)
        if stored is not None:
            bound, hit = True, stored
        elif hit or present >= rule.min_signals:  # the evidence decides it
            state.bind(rule.id, hit)
    if not hit:
        return None
    # A bound hit may have no outside signal now (back home): report what the device says now,
    # flagged as bound.
    signals = _present(rule, places) if bound else outside
    return Reason(
        "outside_territory",
        rule.id,
        rule.kind,
        rule.action,
        _most_common_label(signals),
        signals,
        device.id,
        device.territories,
        None,
        bound,
    )


def _with_grace(rule: CompiledRule, reason: Reason, now: float, state: _StateChanges) -> Reason:
    """Until first hit + the rule's grace, a lock hit is a ``grace_period`` warning that names
    when the lock comes (``lock_at``); after it, the rule's own reason."""
    lock_at = state.first_hit(rule.id, now) + rule.grace_s
    if now < lock_at:
        return replace(reason, code="grace_period", action="warn", lock_at=lock_at)
    return reason


def _decision(
    reasons: list[Reason],
    observed: list[Reason],
    distributor_id: str | None,
    state: DeviceState,
) -> Decision:
    """Combine the enforced reasons into the verdict (the strongest action wins); observed
    reasons are reported but never change it."""
    if not reasons:  # the common case: skip combining nothing
        return Decision("allow", (), tuple(observed), None, distributor_id, state)
    return Decision(
        combine_actions([r.action for r in reasons]),
        tuple(reasons),
        tuple(observed),
        earliest_lock_at(reasons),
        distributor_id,
        state,
    )


def _sanction_signals(rule: CompiledRule, places: Mapping[str, PlaceValue]) -> list[str] | None:
    """Signals placing the device in one of the rule's regions, None below ``min_signals``."""
    regions = rule.regions
    matched: list[str] | None = None
    for signal in rule.signals:
        place = places.get(signal)
        if place is None:
            continue
        if type(place) is Place:
            hit = place.country in regions or place.subdivision in regions
        else:  # several places (SPEC §9): in the region when any of them is
            hit = any(p.country in regions or p.subdivision in regions for p in place)
        if hit:
            if matched is None:
                matched = [signal]
            else:
                matched.append(signal)
    if matched is None or len(matched) < rule.min_signals:
        return None
    return matched


def _best_region(
    rule: CompiledRule, matched: list[str], places: Mapping[str, PlaceValue]
) -> tuple[str, dict[str, str | tuple[str, ...]]]:
    """The region matched by most of the ``matched`` signals (tie: listed first in the rule) and
    the signal -> label map of the signals in that region."""
    rank = rule.region_rank
    if len(matched) == 1 and type(places[matched[0]]) is Place:  # the usual case, no counting
        signal = matched[0]
        place = places[signal]
        country_rank = rank.get(place.country)
        sub = place.subdivision
        sub_rank = rank.get(sub) if sub is not None else None
        if (
            sub is None
            or sub_rank is None
            or (country_rank is not None and country_rank < sub_rank)
        ):
            return place.country, {signal: place.label}
        return sub, {signal: place.label}
    counts: dict[str, int] = {}
    regions_by_signal: dict[str, set[str]] = {}
    for signal in matched:
        # A place can lie in two listed regions (UA and UA-43): it counts for both. A signal
        # with several places counts once for each listed region any of them lies in.
        found: set[str] = set()
        for place in places_of(places[signal]):
            if place.country in rank:
                found.add(place.country)
            if place.subdivision in rank:
                found.add(place.subdivision)
        regions_by_signal[signal] = found
        for code in found:
            counts[code] = counts.get(code, 0) + 1
    if len(counts) == 1:  # the usual case: every signal agrees
        best = next(iter(counts))
        return best, {s: signal_label(places[s]) for s in matched}
    best = min(counts, key=lambda code: (-counts[code], rank[code]))
    signals = {s: signal_label(places[s]) for s in matched if best in regions_by_signal[s]}
    return best, signals


def _territory_signals(
    rule: CompiledRule, places: Mapping[str, PlaceValue], territories: frozenset[str]
) -> tuple[dict[str, str | tuple[str, ...]], int]:
    """(signal -> label(s) for signals outside every territory, number of signals present).
    A signal with several places is outside when none of them is inside a territory."""
    outside: dict[str, str | tuple[str, ...]] = {}
    present = 0
    for signal in rule.signals:
        place = places.get(signal)
        if place is None:
            continue
        present += 1
        if type(place) is Place:
            if place.country not in territories and place.subdivision not in territories:
                outside[signal] = place.label
        elif not any(p.country in territories or p.subdivision in territories for p in place):
            outside[signal] = signal_label(place)
    return outside, present


def _present(
    rule: CompiledRule, places: Mapping[str, PlaceValue]
) -> dict[str, str | tuple[str, ...]]:
    """signal -> label(s) for each of the rule's signals that gave a place."""
    return {s: signal_label(places[s]) for s in rule.signals if s in places}


def compile_bundle(bundle: Mapping[str, Any]) -> CompiledPolicy:
    """Validate ``bundle`` (raw or already normalised) and compile it.

    Raises :class:`~service.engine.validation.BundleError` when invalid. Allocations are parsed and
    sorted once, so a million of them compile in a few seconds and a lookup stays O(log n).
    """
    normalised, index = validate_and_index(bundle)
    return CompiledPolicy(normalised, index)
