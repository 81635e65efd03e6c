"""Impact simulation: replay every recorded device's latest check-in under two policies.

Each device record keeps the facts of its latest check-in (``facts`` = ``{"at", "places"}``)
and the engine state it ended with (``state``). The replay decides those facts, at the recorded
time, under the *active* and the *candidate* policy, applies the device's current override to
both, and counts the devices whose verdict differs. Nothing is written: the engine is pure and
only reads are sent to Redis.

Choices: the replay uses the state the device ended its latest check-in with (what its next
check-in would start from) and that check-in's time, so grace periods are judged as they were
then; overrides are the current ones. A device record without ``facts`` is counted as
``skipped``, not evaluated; the safety brake's denominator is ``evaluated``.

It is built for a million devices: the (few) overrides are read first in a SCAN of their own;
then one SCAN with a large COUNT over the device records and, per batch of keys, one pipelined
round trip of HMGETs of just the two fields. Parsed states and places are cached, and so are
verdict pairs when no rule reads the clock (see :func:`simulate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.engine.compiler import CompiledPolicy
from service.engine.model import DeviceState, Facts, Place, PlaceValue, apply_override
from service.policy.estimate import count_interval
from service.store.devices import DeviceStore
from service.store.records import (
    LastCheckin,
    RecordError,
    decode_aliases,
    decode_override,
    decode_sim_operators,
    decode_state,
)

#: Keys asked per SCAN call: big, so a million devices take a few hundred round trips.
SCAN_COUNT = 10_000
#: Devices per pipelined read.
BATCH = 1_000
#: Sample IMEIs kept per kind of change.
SAMPLES = 5
#: Cached parsed values (states and place sets repeat across devices); a cap keeps memory flat.
_CACHE_MAX = 100_000

ALLOW_TO_LOCK = "allow->lock"


@dataclass
class SimulationReport:
    """What a candidate bundle would change, compared with the active one."""

    evaluated: int = 0
    #: Device records without replayable facts (recorded before facts were kept, or corrupt).
    skipped: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    #: Verdict counts under each policy: {"active": {"allow": 9, "lock": 1}, "candidate": ...}.
    verdicts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {"active": {}, "candidate": {}}
    )
    max_new_lock_ratio: float = 0.05
    active_version: int | None = None
    #: A sampled run (SPEC §12.5): devices in the fleet (the sampling index), devices drawn
    #: (evaluated + skipped) and the seed of the draw; None for a replay of every device.
    fleet: int | None = None
    drawn: int | None = None
    seed: int | None = None

    @property
    def allow_to_lock_ratio(self) -> float:
        """Share of the evaluated devices that would go from allow to lock (0 with none)."""
        if not self.evaluated:
            return 0.0
        return self.changes.get(ALLOW_TO_LOCK, 0) / self.evaluated

    def interval(self, count: int) -> dict[str, int]:
        """A count of the sample scaled to the fleet, with its 95 % interval (SPEC §12.5)."""
        assert self.fleet is not None and self.drawn is not None
        return count_interval(count, self.drawn, self.fleet)

    @property
    def allow_to_lock_upper_ratio(self) -> float:
        """What the brake compares: the share of allow->lock devices, at the upper bound of its
        95 % interval for a sampled run (of the fleet's devices with replayable facts, estimated
        as fleet x evaluated / drawn), the exact share otherwise."""
        if self.fleet is None or not self.evaluated or not self.drawn:
            return self.allow_to_lock_ratio
        high = self.interval(self.changes.get(ALLOW_TO_LOCK, 0))["high"]
        return min(1.0, high / (self.fleet * self.evaluated / self.drawn))

    @property
    def brakes(self) -> bool:
        """True when publishing the candidate would trip the safety brake (SPEC §6, §12.5)."""
        return self.evaluated > 0 and self.allow_to_lock_upper_ratio > self.max_new_lock_ratio

    def partial(self) -> dict[str, Any]:
        """The counts so far (a simulation job's checkpoint); :meth:`resume` reads them."""
        return {
            "evaluated": self.evaluated,
            "skipped": self.skipped,
            "changes": self.changes,
            "samples": self.samples,
            "verdicts": self.verdicts,
        }

    def resume(self, partial: Mapping[str, Any]) -> None:
        """Continue from the counts of :meth:`partial`."""
        self.evaluated = partial["evaluated"]
        self.skipped = partial["skipped"]
        self.changes = dict(partial["changes"])
        self.samples = {k: list(v) for k, v in partial["samples"].items()}
        self.verdicts = {k: dict(v) for k, v in partial["verdicts"].items()}

    def to_dict(self) -> dict[str, Any]:
        """The API form of the report."""
        return {
            "evaluated": self.evaluated,
            "skipped": self.skipped,
            "changes": dict(sorted(self.changes.items())),
            "samples": {k: list(v) for k, v in sorted(self.samples.items())},
            "verdicts": {k: dict(sorted(v.items())) for k, v in self.verdicts.items()},
            "allow_to_lock_ratio": round(self.allow_to_lock_ratio, 6),
            "max_new_lock_ratio": self.max_new_lock_ratio,
            "would_brake": self.brakes,
            "active_version": self.active_version,
            **(self._sampled() if self.fleet is not None else {}),
        }

    def _sampled(self) -> dict[str, Any]:
        """A sampled run's fields: the draw, and each count scaled to the fleet."""
        return {
            "fleet": self.fleet,
            "sample": {"size": self.drawn, "seed": self.seed},
            "allow_to_lock_upper_ratio": round(self.allow_to_lock_upper_ratio, 6),
            "intervals": {
                "changes": {k: self.interval(v) for k, v in sorted(self.changes.items())},
                "verdicts": {
                    side: {k: self.interval(v) for k, v in sorted(counts.items())}
                    for side, counts in self.verdicts.items()
                },
            },
        }


#: The fields of a device record a replay needs (``imeis``: its other IMEIs, which name its
#: distributor when no allocation holds the primary, SPEC §9).
REPLAY_FIELDS = ("facts", "state", "imeis")
#: Read too when a policy has carrier rules: ``device`` holds the SIMs' home networks (§12.3).
SIM_FIELDS = ("device",)


class _Parser:
    """Turns stored JSON into engine values, caching the ones that repeat across devices."""

    def __init__(self) -> None:
        self.sims: dict[Any, tuple[str, ...]] = {}
        self.states: dict[Any, DeviceState] = {}
        self.places: dict[tuple, Mapping[str, PlaceValue]] = {}
        self.labels: dict[str, Place] = {}

    def state(self, raw: Any) -> DeviceState:
        hit = self.states.get(raw)
        if hit is not None:
            return hit
        parsed = decode_state(raw)
        if len(self.states) < _CACHE_MAX:
            self.states[raw] = parsed
        return parsed

    def sim_operators(self, raw: Any) -> tuple[str, ...]:
        """The SIMs' home networks of a stored ``device`` field (SPEC §12.3); () when damaged."""
        hit = self.sims.get(raw)
        if hit is not None:
            return hit
        try:
            parsed = decode_sim_operators(raw)
        except RecordError:
            parsed = ()  # a damaged device field: judged as a device without a SIM
        if len(self.sims) < _CACHE_MAX:
            self.sims[raw] = parsed
        return parsed

    def place_map(self, key: tuple) -> Mapping[str, PlaceValue]:
        hit = self.places.get(key)
        if hit is not None:
            return hit
        places: dict[str, PlaceValue] = {}
        for signal, label in key:
            if type(label) is tuple:  # several places (SPEC §9), see place_key
                places[signal] = tuple(self.place(one) for one in label)
            else:
                places[signal] = self.place(label)
        if len(self.places) < _CACHE_MAX:
            self.places[key] = places
        return places

    def place(self, label: str) -> Place:
        place = self.labels.get(label)
        if place is None:
            place = self.labels[label] = Place.parse(label)
        return place


def place_key(places: Mapping[str, str | list[str]]) -> tuple:
    """Stored places as a hashable key: a signal's list of labels becomes a tuple (duplicates
    dropped, order kept; one label left is that label)."""
    key = []
    for signal, label in places.items():
        if type(label) is list:
            distinct = tuple(dict.fromkeys(label))
            label = distinct[0] if len(distinct) == 1 else distinct
        key.append((signal, label))
    return tuple(key)


def _time_independent(*policies: CompiledPolicy) -> bool:
    """True when no rule has a grace period, the one place a decision reads the clock."""
    return not any(rule.grace_s for policy in policies for rule in policy.rules)


class Replay:
    """Accumulates a report from device rows (the loop of :func:`simulate`, shared with the
    sampled simulation jobs of SPEC §12.5, which feed it batch by batch). ``fields``: the
    stored fields each row must carry, in order."""

    def __init__(
        self,
        candidate: CompiledPolicy,
        active: CompiledPolicy,
        report: SimulationReport,
        samples: int = SAMPLES,
    ):
        self.candidate = candidate
        self.active = active
        self.report = report
        self.samples = samples
        self.parser = _Parser()
        # A verdict depends on the IMEI only through its distributor (and, SPEC §12.1-§12.2, its
        # rollout groups and exceptions: CompiledPolicy.device_key), and on the time only
        # through grace periods; without those, devices with the same distributor, places, SIMs
        # and state share their pair of verdicts, and most devices look like many others.
        self.memo: dict[tuple, tuple[str, str]] | None = (
            {} if _time_independent(active, candidate) else None
        )
        # Carrier rules (SPEC §12.3) judge the SIMs' home networks, kept in the ``device`` field.
        judges_sims = active.judges_sims or candidate.judges_sims
        self.fields = REPLAY_FIELDS + SIM_FIELDS if judges_sims else REPLAY_FIELDS

    def feed(self, rows, overrides: Mapping[str, Any]) -> None:
        """Replay ROWS, (imei, [the values of ``fields``]) as stored, each with its override
        from OVERRIDES (IMEI -> stored override) if any."""
        report, active, candidate, parser, memo = (
            self.report,
            self.active,
            self.candidate,
            self.parser,
            self.memo,
        )
        samples = self.samples
        changes = report.changes
        sampled = report.samples
        before_counts = report.verdicts["active"]
        after_counts = report.verdicts["candidate"]
        for imei, (raw_facts, raw_state, raw_aliases, *raw_sims) in rows:
            raw_override = overrides.get(imei)
            if not raw_facts:
                report.skipped += 1  # no facts kept: nothing to replay
                continue
            try:
                facts = LastCheckin.decode(raw_facts)
            except RecordError:
                report.skipped += 1  # a damaged record: nothing to replay
                continue
            at = facts.at
            places = place_key(facts.places)
            try:
                aliases = decode_aliases(raw_aliases) if raw_aliases else ()
            except RecordError:
                aliases = ()  # a damaged list of other IMEIs: judge by the primary alone
            operators = parser.sim_operators(raw_sims[0]) if raw_sims and raw_sims[0] else ()
            key = pair = None
            if memo is not None and raw_override is None:
                key = (
                    active.distributor_of(imei, aliases),
                    candidate.distributor_of(imei, aliases),
                    places,
                    raw_state,
                    # Staged rollouts and exceptions (SPEC §12.1, §12.2) read the IMEI itself.
                    active.device_key(imei, aliases),
                    candidate.device_key(imei, aliases),
                    operators,
                )
                pair = memo.get(key)
            if pair is None:
                try:
                    device = Facts(
                        imei,
                        parser.place_map(places),
                        at,
                        parser.state(raw_state),
                        aliases,
                        operators,
                    )
                    override = decode_override(raw_override)
                except (KeyError, TypeError, ValueError):  # RecordError is a ValueError
                    report.skipped += 1
                    continue
                before = active.decide(device)
                after = candidate.decide(device)
                if override is not None:
                    before = apply_override(before, override, at)
                    after = apply_override(after, override, at)
                pair = (before.verdict, after.verdict)
                if key is not None and len(memo) < _CACHE_MAX:
                    memo[key] = pair
            old, new = pair
            report.evaluated += 1
            before_counts[old] = before_counts.get(old, 0) + 1
            after_counts[new] = after_counts.get(new, 0) + 1
            if old != new:
                change = f"{old}->{new}"
                changes[change] = changes.get(change, 0) + 1
                kept = sampled.setdefault(change, [])
                if len(kept) < samples:
                    kept.append(imei)


def simulate(
    devices: DeviceStore,
    candidate: CompiledPolicy,
    active: CompiledPolicy,
    *,
    active_version: int | None = None,
    batch: int = BATCH,
    samples: int = SAMPLES,
) -> SimulationReport:
    """Replay every recorded device's latest check-in under ACTIVE and CANDIDATE (pure)."""
    report = SimulationReport(
        max_new_lock_ratio=candidate.max_new_lock_ratio, active_version=active_version
    )
    overrides = devices.overrides_by_imei(batch=batch, scan_count=SCAN_COUNT)
    replay = Replay(candidate, active, report, samples)
    for rows in devices.field_batches(replay.fields, batch=batch, scan_count=SCAN_COUNT):
        replay.feed(rows, overrides)
    return report
