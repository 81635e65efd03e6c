"""One check-in, end to end: evidence -> places, state from Redis, engine decision, record."""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.devices.proofs import NO_PROOF, PROVEN, UNPROVEN, ProofOutcome, ProofRequest
from service.devices.stats import basis_reasons, checkin_counts
from service.engine.model import DeviceState, Facts, apply_override, iso_utc, place_labels
from service.store import keys
from service.store.records import DeviceRecord, LastCheckin, encode_outcome

# The only parts of a device record a check-in needs to decide ("proven": SPEC §13).
CHECKIN_FIELDS = ("state", "activation", "proven")

#: A Redis call a check-in needs (CheckinService._steps): a DeviceStore method's name, its
#: positional and keyword arguments.
_Io = tuple[str, tuple, dict]


class CheckinRateLimited(Exception):
    """A check-in over its device's rate or the fleet's ceiling: nothing was recorded."""

    def __init__(self, scope: str, retry_after_s: int):
        super().__init__(scope)
        self.scope = scope  # "device" or "fleet"
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class CheckinLimits:
    """Fixed-window limits on check-ins: DEVICE per IMEI, FLEET for all devices together, each
    (requests, window seconds) or None for no limit. Counted in Redis by the device read itself
    (no extra round trip), so every worker shares them (docs/decisions.md)."""

    device: tuple[int, int] | None = None
    fleet: tuple[int, int] | None = None

    def counters(self, imei: str, now: float) -> list[tuple[str, int]]:
        """The (key, seconds to live) of each counter this check-in increments."""
        out = []
        if self.device is not None:
            period = self.device[1]
            out.append((keys.device_checkin_rate(imei, int(now // period)), period + 1))
        if self.fleet is not None:
            period = self.fleet[1]
            out.append((keys.fleet_checkin_rate(int(now // period)), period + 1))
        return out

    def check(self, counts: tuple[int, ...], now: float) -> None:
        """CheckinRateLimited when a count (in the order of :meth:`counters`) is over its limit."""
        limits = [(name, limit) for name, limit in (("device", self.device), ("fleet", self.fleet))]
        given = iter(counts)
        for name, limit in limits:
            if limit is None:
                continue
            count = next(given, 0)
            amount, period = limit
            if count > amount:
                ends = (now // period + 1) * period
                raise CheckinRateLimited(name, max(1, math.ceil(ends - now)))


class ReadAlong(Protocol):
    """Something read in the check-in's device read (one round trip for all): ``queue(pipe)``
    queues its commands and says how many replies they give, ``read(replies)`` gets them before
    anything is decided (it may raise: the check-in then stops, nothing recorded). The web
    layer's token confirmation (web/auth.py TokenCheck) is one."""

    def queue(self, pipe) -> int: ...

    def read(self, replies: list) -> None: ...


class _AliasRead:
    """What the alias index says about this check-in's IMEIs (SPEC §9), read along with the
    device, so a check-in whose IMEIs did not change writes nothing more (docs/performance.md)."""

    def __init__(self, identities, imei: str, aliases: tuple[str, ...], reported: bool):
        self.identities = identities
        self.imei = imei
        self.aliases = aliases
        self.reported = reported
        self.replies: list = []

    def queue(self, pipe) -> int:
        if self.reported:
            return self.identities.queue_record_reads(pipe, self.imei, self.aliases)
        return self.identities.queue_claimants(pipe, self.imei)

    def read(self, replies: list) -> None:
        self.replies = replies

    def write(self, first: bool) -> None:
        """After the check-in is recorded: the device's other IMEIs into the alias index
        (only when the body carried ``imeis``: old firmware leaves what is stored), and a new
        device whose primary others already report as an alias marked shared on both sides.
        Nothing is taken over (docs/decisions.md "Several IMEIs"). Writes only on a change."""
        if self.reported:
            self.identities.record_from(self.imei, self.aliases, self.replies)
        elif first:
            claimants = set(self.replies[0]) - {self.imei}
            if claimants:
                self.identities.mark_primary_claimed(self.imei, claimants)


class CheckinService:
    """Decides check-ins; the pieces are injected so tests and the simulator share them."""

    def __init__(
        self,
        evidence,
        devices,
        policies,
        mcc_mnc_of_imsi,
        identities=None,
        proofs=None,
        limits: CheckinLimits | None = None,
    ):
        self.limits = limits or CheckinLimits()
        self.evidence = evidence
        self.devices = devices
        self.policies = policies
        self.mcc_mnc_of_imsi = mcc_mnc_of_imsi
        # The alias index (store/identities.py); None: IMEIs other than the primary are ignored.
        self.identities = identities
        # service.devices.proofs.DeviceProofs (SPEC §13); None: proofs are not looked at.
        self.proofs = proofs

    def decide(
        self,
        body: dict,
        ip: str | None,
        now: float,
        proof: ProofRequest | None = None,
        along: Sequence[ReadAlong] = (),
    ) -> dict:
        """Decide and record one validated check-in body; returns the response document.
        PROOF is the request's check-in proof: DeviceProofError when one is required and
        missing, bad or used before (nothing is then recorded); CheckinRateLimited when the
        device or the fleet is over its rate (nothing recorded either). ALONG are read in the
        device read (:class:`ReadAlong`)."""
        steps = self._steps(body, ip, now, proof, along)
        try:
            step = next(steps)
            while True:
                method, args, kwargs = step
                step = steps.send(getattr(self.devices, method)(*args, **kwargs))
        except StopIteration as done:
            return done.value

    async def decide_async(
        self,
        connection,
        body: dict,
        ip: str | None,
        now: float,
        proof: ProofRequest | None = None,
        along: Sequence[ReadAlong] = (),
    ) -> dict:
        """:meth:`decide` with the device read and the write sent over CONNECTION (an asyncio
        connection that pipelines the calls of concurrent check-ins: store/coalesced.py), so
        the event loop serves other check-ins while Redis answers. The rest (evidence, engine,
        and the rare extra round trips: a token verified again after a revocation, an alias
        index that changed) runs as in :meth:`decide`."""
        steps = self._steps(body, ip, now, proof, along)
        try:
            step = next(steps)
            while True:
                method, args, kwargs = step
                call = getattr(self.devices, method + "_async")
                step = steps.send(await call(connection, *args, **kwargs))
        except StopIteration as done:
            return done.value

    def _steps(self, body, ip, now, proof, along) -> Generator[_Io, Any, dict]:
        """The check-in, as steps: it yields each Redis call it needs (the device read and the
        write: ``(DeviceStore method, args, kwargs)``) and is sent its answer, so the same code
        runs blocking (:meth:`decide`) and on an event loop (:meth:`decide_async`)."""
        active = self.policies.current()
        outcome = NO_PROOF
        if self.proofs is not None and proof is not None:
            required = active.policy.proof_required(body["imei"])
            outcome = self.proofs.assess(body["imei"], proof, now, required)
        document = yield from self._decide(body, ip, now, active, outcome, along=along)
        if document is None:  # the proof was a replay: refused, or decided again unproven
            replayed = self.proofs.replayed(outcome, now)
            document = yield from self._decide(
                body, ip, now, active, replayed, counted=True, along=along
            )
        return document

    def _decide(
        self,
        body: dict,
        ip: str | None,
        now: float,
        active,
        proof: ProofOutcome,
        counted: bool = False,
        along: Sequence[ReadAlong] = (),
    ) -> Generator[_Io, Any, dict | None]:
        """Decide and record; None (nothing recorded) when PROOF's MAC was used before.
        COUNTED: this check-in was already counted against the rate limits."""
        imei = body["imei"]
        sim = body.get("sim") or {}
        gps = body.get("gps")
        more_sims = body.get("sims") or ()
        aliases = other_imeis(imei, body.get("imeis"))
        places = self.evidence.gather(
            ip=ip,
            gps=(gps["lat"], gps["lon"]) if gps else None,
            network=sim.get("network"),
            imsi=sim.get("imsi"),
            # SPEC §9: every SIM's serving and home network ("sim" first, then "sims").
            networks=[s["network"] for s in more_sims if s.get("network")],
            imsis=[s["imsi"] for s in more_sims if s.get("imsi")],
        )
        counters = () if counted else self.limits.counters(imei, now)
        # --- the device read: one round trip for the record, the override, the rate-limit
        # counters and every ReadAlong (token confirmation, alias index) ---
        readers = list(along)
        alias_read = None
        if self.identities is not None:
            alias_read = _AliasRead(self.identities, imei, aliases, body.get("imeis") is not None)
            readers.append(alias_read)
        snapshot = yield (
            "snapshot",
            (imei, CHECKIN_FIELDS, counters),
            {"along": [reader.queue for reader in readers]},
        )
        for reader, replies in zip(readers, snapshot.along, strict=True):
            reader.read(replies)
        if counters:
            self.limits.check(snapshot.counts, now)
        state = snapshot.state
        # MCC+MNC only: the full IMSI and ICCID are never stored (SPEC §4 privacy); carrier
        # rules judge them (SPEC §12.3).
        operators = _sim_operators(self.mcc_mnc_of_imsi, sim, more_sims)
        policy_decision = active.policy.decide(
            Facts(
                imei=imei,
                places=places,
                now=now,
                state=state,
                aliases=aliases,
                sim_operators=tuple(operators),
            )
        )
        decision = apply_override(policy_decision, snapshot.override, now)
        new_state = decision.state
        if proof.status == UNPROVEN and snapshot.record is not None and snapshot.record.proven:
            # A device that has proven itself is bound only by proven check-ins (SPEC §13).
            new_state = _without_new_bindings(state, new_state)

        labels = place_labels(places)
        verdict = decision.to_dict()
        decided_at = iso_utc(now)
        device_info = {
            "sim_operator": operators[0] if operators else None,
            # Only for several SIMs, so a one-SIM record is stored as it always was.
            "sim_operators": operators if len(operators) > 1 else None,
            "model": body.get("model"),
            "firmware": body.get("firmware"),
            # The phone's language, so support sees the lock screen the user reads (SPEC §10).
            "locale": body.get("locale"),
        }
        # Empty values are removed from the record rather than stored (DeviceRecord.encode):
        # memory per device is what bounds a fleet's Redis (see docs/performance.md).
        record = DeviceRecord(
            facts=LastCheckin(at=now, places=labels),
            device={k: v for k, v in device_info.items() if v is not None},
            verdict=decision.verdict,
            reasons=verdict["reasons"],
            observed=verdict["observed"],
            lock_at=verdict["lock_at"],
            # What the policy alone says, so support can tell which locks an unlock would lift.
            # With region and distributor: the locked index's basis (devices/stats.py).
            policy_reasons=basis_reasons(policy_decision),
            state=new_state,
            distributor=decision.distributor,
            policy_version=active.version,
            # None leaves the stored activation as it is.
            activation=_activation(snapshot.activation, state, new_state, decided_at, labels),
        )
        brief_reasons = [
            {k: v for k, v in (("code", r.code), ("rule", r.rule), ("region", r.region)) if v}
            for r in decision.reasons
        ]
        recorded = yield (
            "record_checkin",
            (imei, record),
            dict(
                now=now,
                policy_version=active.version,
                outcome=encode_outcome(decision.verdict, brief_reasons, labels),
                facts={"places": labels, "policy_version": active.version},
                proof_status=proof.status,
                proof_mac=proof.mac if proof.status == PROVEN else None,
                # Fleet overview (SPEC §14): counters and locked index, in the same script.
                counts=checkin_counts(decision) if self.devices.overview else None,
            ),
        )
        if not recorded:
            return None
        if alias_read is not None:
            alias_read.write(first=snapshot.record is None)
        return {
            "imei": imei,
            **verdict,
            "policy_version": active.version,
            "next_checkin_s": active.policy.next_checkin_s,
            "decided_at": decided_at,
            **_what_the_user_sees(active.policy, decision, body.get("locale")),
        }


def other_imeis(primary: str, imeis: list[str] | None) -> tuple[str, ...]:
    """A check-in's aliases (SPEC §9): IMEIS without the primary and duplicates, in order."""
    seen = {primary}
    out: list[str] = []
    for imei in imeis or ():
        if imei not in seen:
            seen.add(imei)
            out.append(imei)
    return tuple(out)


def _sim_operators(mcc_mnc_of_imsi, sim: dict, more_sims) -> list[str]:
    """MCC+MNC of every SIM's IMSI, distinct, in order (never the IMSI itself)."""
    out: list[str] = []
    for one in (sim, *more_sims):
        if one.get("imsi"):
            operator = mcc_mnc_of_imsi(one["imsi"])
            if operator and operator not in out:
                out.append(operator)
    return out


def _without_new_bindings(before: DeviceState, after: DeviceState) -> DeviceState:
    """AFTER with the bindings BEFORE did not have taken out (an unproven check-in fixes none)."""
    if after.bindings.keys() <= before.bindings.keys():
        return after
    kept = {rule: outside for rule, outside in after.bindings.items() if rule in before.bindings}
    return DeviceState(bindings=kept, first_hits=after.first_hits)


def _what_the_user_sees(policy, decision, locale: str | None) -> dict:
    """The response's ``message`` (lock screen, SPEC §10) and ``offline`` terms (SPEC §11)."""
    return {
        "message": policy.messages.for_decision(decision, locale),
        "offline": policy.offline,
    }


def _activation(
    current: dict | None,
    before: DeviceState,
    after: DeviceState,
    at: str,
    places: dict[str, str],
) -> dict | None:
    """The activation record to store, or None to leave it as it is.

    The first check-in activates the device; its territory answer (``in_territory``) stays
    null until a ``bind: activation`` rule decides it, and the check-in that decides it becomes
    the activation (its time and places are the ones that fixed the answer).
    """
    decided = {
        rule: outside for rule, outside in after.bindings.items() if rule not in before.bindings
    }
    if current is not None and (current.get("in_territory") is not None or not decided):
        return None
    in_territory = (not any(decided.values())) if decided else None
    return {"at": at, "places": places, "in_territory": in_territory}
