"""Publishing policy versions safely: expected version, impact simulation, safety brake, audit.

Shared by the policy API and the ``regionlock policy`` / ``regionlock distributors`` commands, so
both publish the same way and write the same audit entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.engine.compiler import CompiledPolicy, compile_bundle
from service.engine.model import iso_utc
from service.engine.sanctions_changes import sanctions_weakenings
from service.policy.approvals import (
    ApprovalRequired,
    closing_for_publish,
    new_request,
    store_request,
)
from service.policy.simulate import SimulationReport, simulate
from service.store.approvals import ApprovalStore
from service.store.audit import AuditStore
from service.store.devices import DeviceStore
from service.store.idempotency import Operation, check_fingerprint
from service.store.policy import AlreadyPublished, PolicyStore, VersionConflict

__all__ = [
    "ApprovalRequired",
    "Publisher",
    "SafetyBrake",
    "UnknownVersion",
    "VersionConflict",
    "version_metadata",
]

#: Attempts of a rollback racing other publishes (each re-reads the active version).
_ROLLBACK_ATTEMPTS = 3


def brake_message(report: SimulationReport) -> str:
    """Why the safety brake stopped a publish, in words for the editor."""
    if report.fleet is not None and report.drawn != report.fleet:  # a sample (SPEC §12.5)
        interval = report.interval(report.changes.get("allow->lock", 0))
        return (
            f"about {interval['estimate']} of {report.fleet} recorded devices (95 % interval "
            f"{interval['low']}–{interval['high']}, from a sample of {report.drawn}) would go "
            f"from allow to lock; the upper bound, {report.allow_to_lock_upper_ratio:.1%}, is "
            f"above the limit of {report.max_new_lock_ratio:.1%} (max_new_lock_ratio)"
        )
    return (
        f"{report.changes.get('allow->lock', 0)} of {report.evaluated} recorded devices "
        f"({report.allow_to_lock_ratio:.1%}) would go from allow to lock; the limit is "
        f"{report.max_new_lock_ratio:.1%} (max_new_lock_ratio)"
    )


class SafetyBrake(Exception):
    """The candidate would lock too many recorded devices that are allowed now."""

    def __init__(self, report: SimulationReport):
        super().__init__(brake_message(report))
        self.report = report


class SimulationUnusable(ValueError):
    """The ``simulation_id`` of a publish cannot stand for its brake (SPEC §12.5): STATUS and
    CODE are the API's answer (422 unknown or another bundle, 409 not done or outdated)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


class UnknownVersion(LookupError):
    """No published version has this number."""


def version_metadata(entry: dict) -> dict[str, Any]:
    """A stored version's metadata in API form (times as ISO-8601 UTC), without the bundle."""
    meta = {
        "version": entry["version"],
        "published_at": iso_utc(entry["published_at"]),
        "published_by": entry["published_by"],
        "note": entry["note"],
    }
    # A version published by approving a request (SPEC §12.4): who approved which request.
    for name in ("approval", "approved_by"):
        if entry.get(name):
            meta[name] = entry[name]
    return meta


@dataclass(frozen=True, slots=True)
class Published:
    """Outcome of a publish or rollback: the new version's stored entry and, for a publish,
    the simulation it passed."""

    entry: dict
    report: SimulationReport | None
    forced: bool = False
    #: The simulation report in API form (kept in the idempotency record, for a replay).
    simulation: dict | None = None
    #: True when the call had been applied before (same Idempotency-Key): ENTRY holds the
    #: version's metadata only.
    replayed: bool = False

    @classmethod
    def replay(cls, record: dict) -> Published:
        """What the first call with the same Idempotency-Key answered, from its RECORD."""
        return cls(
            entry=record["entry"],
            report=None,
            forced=bool(record.get("forced")),
            simulation=record.get("simulation"),
            replayed=True,
        )


class Publisher:
    """Publishes candidates and rollbacks through PolicyStore's optimistic transaction."""

    def __init__(
        self,
        devices: DeviceStore,
        store: PolicyStore,
        audit: AuditStore,
        compiled_active: Callable[[int], CompiledPolicy | None] | None = None,
    ):
        self.devices = devices
        self.store = store
        self.audit = audit
        # Lets the API reuse the policy its worker already compiled (a million allocations
        # take seconds to compile); returns None when it holds another version.
        self.compiled_active = compiled_active
        # Four eyes on sanctions (SPEC §12.4): requests live in the policy's slot.
        self.approvals = ApprovalStore(store.redis)

    def active_policy(self) -> tuple[int | None, CompiledPolicy | None]:
        """The active version number and its compiled policy (None, None before any publish)."""
        number = self.store.active_version()
        if number is None:
            return None, None
        policy = self.compiled_active(number) if self.compiled_active else None
        if policy is None:
            entry = self.store.version(number)
            if entry is None:
                raise UnknownVersion(f"active version {number} is missing from the history")
            policy = compile_bundle(entry["bundle"])
        return number, policy

    def simulate(self, candidate: CompiledPolicy) -> SimulationReport:
        """Impact of CANDIDATE on the recorded devices, against the active version."""
        number, active = self.active_policy()
        if active is None:  # nothing published: every device is compared with the candidate
            active = candidate
        return simulate(self.devices, candidate, active, active_version=number)

    # --- the safety brake's simulation (SPEC §12.5) ---------------------------------------------

    def brake_report(
        self, candidate: CompiledPolicy, active_number: int | None, simulation_id: str | None
    ) -> SimulationReport:
        """The report the brake reads: the finished job SIMULATION_ID (checked: same bundle,
        done, simulated against ACTIVE_NUMBER), else every device of a fleet of at most
        BRAKE_SAMPLE (the exact replay of §6, which also sees devices recorded before the
        sampling index), else BRAKE_SAMPLE devices drawn from the sampling index."""
        from service.policy.simulation_jobs import (
            BRAKE_SAMPLE,
            brake_report,
            bundle_digest,
            job_report,
        )
        from service.store.sampling import SamplingIndex
        from service.store.simulations import SimulationStore

        if simulation_id is not None:
            job = SimulationStore(self.devices.redis).get(simulation_id)
            if job is None:
                raise SimulationUnusable(
                    422, "unknown_simulation", f"there is no simulation {simulation_id}"
                )
            if job.get("digest") != bundle_digest(candidate.bundle):
                raise SimulationUnusable(
                    422,
                    "simulation_mismatch",
                    f"simulation {simulation_id} was of another bundle: simulate this one",
                )
            if job["state"] != "done":
                raise SimulationUnusable(
                    409, "simulation_not_done", f"simulation {simulation_id} is {job['state']}"
                )
            simulated_on = int(job["active_version"]) if job.get("active_version") else None
            if simulated_on != active_number:
                raise SimulationUnusable(
                    409,
                    "simulation_outdated",
                    f"simulation {simulation_id} compared the bundle with version "
                    f"{simulated_on}; the active version is {active_number}: simulate again",
                )
            return job_report(job, candidate)
        index = SamplingIndex(self.devices.redis)
        number, active = self.active_policy()
        if active is None:
            active = candidate
        if sum(index.counts()) <= BRAKE_SAMPLE:
            return simulate(self.devices, candidate, active, active_version=number)
        return brake_report(
            self.devices, index, candidate, active, active_version=number, limit=BRAKE_SAMPLE
        )

    def _prior(self, operation: Operation | None) -> Published | None:
        """The answer of OPERATION if it was applied before (checked first, so a retry is
        answered as the first call was even though the active version has moved on)."""
        if operation is None or not operation.named:
            return None
        record = self.store.operation_record(operation.digest)
        if record is None:
            return None
        check_fingerprint(record, operation)
        if "approval" in record:  # the first call was sent for approval (SPEC §12.4)
            raise ApprovalRequired(record["approval"], replayed=True)
        return Published.replay(record)

    def _replayed(self, exc: AlreadyPublished, operation: Operation) -> Published:
        check_fingerprint(exc.record, operation)
        if "approval" in exc.record:
            raise ApprovalRequired(exc.record["approval"], replayed=True)
        return Published.replay(exc.record)

    # --- Four eyes on sanctions (SPEC §12.4) ------------------------------------------------

    def _active_bundle(self, number: int | None) -> dict | None:
        """The active version's bundle (its rules are what the detector compares)."""
        if number is None:
            return None
        policy = self.compiled_active(number) if self.compiled_active else None
        if policy is not None:
            return policy.bundle
        entry = self.store.version(number)
        return entry["bundle"] if entry is not None else None

    def _four_eyes(
        self,
        kind: str,
        bundle: dict,
        active_number: int | None,
        *,
        note: str,
        actor: str,
        role: str,
        force: bool = False,
        rolled_back_to: int | None = None,
        operation: Operation | None = None,
    ) -> None:
        """Raise ApprovalRequired, after storing the request, when BUNDLE weakens a sanctions
        rule of version ACTIVE_NUMBER; return when it does not."""
        changes = sanctions_weakenings(self._active_bundle(active_number), bundle)
        if not changes:
            return
        assert active_number is not None  # nothing active: nothing to weaken
        record = new_request(
            kind,
            bundle,
            changes=changes,
            compared_version=active_number,
            note=note,
            actor=actor,
            role=role,
            force=force,
            rolled_back_to=rolled_back_to,
        )
        try:
            approval = store_request(self.approvals, self.audit, record, operation)
        except AlreadyPublished as exc:  # the same call, answered meanwhile
            assert operation is not None
            self._replayed(exc, operation)
            raise
        raise ApprovalRequired(approval)

    def _approving_writes(self, approving: tuple[dict, dict] | None, number: int):
        """The writes closing the approved request in the publish's EXEC, and the version's
        metadata naming it (None, None when not approving)."""
        if approving is None:
            return None, None
        record, decider = approving
        linked = closing_for_publish(self.approvals, self.audit, approving, number)
        return linked, {"approval": record["id"], "approved_by": decider["actor"]}

    # -----------------------------------------------------------------------------------------

    def publish(
        self,
        bundle: dict,
        *,
        note: str,
        expected_version: int | None,
        actor: str,
        role: str,
        force: bool = False,
        operation: Operation | None = None,
        approving: tuple[dict, dict] | None = None,
        simulation_id: str | None = None,
    ) -> Published:
        """Validate, simulate and publish BUNDLE as the version after EXPECTED_VERSION.

        The brake's simulation (SPEC §12.5): the finished job SIMULATION_ID of the same bundle
        against the active version, else at most 100,000 sampled devices (every device of a
        smaller fleet), in this call (:meth:`brake_report`); SimulationUnusable when the job
        cannot stand for it.

        Raises BundleError (invalid), VersionConflict (stale expected_version) or SafetyBrake
        (too many new locks, unless FORCE). Writes one ``policy.publish`` audit entry.
        OPERATION (a named one: the caller's Idempotency-Key) is applied at most once: sent
        again, the first answer is returned (``replayed``); IdempotencyConflict when its key
        was used for another request; OutcomeUnknown when the EXEC's answer was lost.

        Four eyes (SPEC §12.4): a BUNDLE that weakens a sanctions rule is stored as a request
        and ApprovalRequired raised. APPROVING = (request record, {actor, role, note} of the
        decider) publishes an approved request instead, closing it in the same EXEC.
        """
        prior = self._prior(operation)
        if prior is not None:
            return prior
        # The cheap check first: a stale editor learns it before seconds of compiling.
        active_number = self.store.active_version()
        if active_number != expected_version:
            raise VersionConflict(active_number)
        candidate = compile_bundle(bundle)
        if approving is None:  # four eyes on sanctions (SPEC §12.4)
            self._four_eyes(
                "publish",
                candidate.bundle,
                active_number,
                note=note,
                actor=actor,
                role=role,
                force=force,
                operation=operation,
            )
        # >>> safety brake (SPEC §12.5): a finished job of this bundle, or a sample in-request
        report = self.brake_report(candidate, active_number, simulation_id)
        # <<< safety brake
        if report.brakes and not force:
            raise SafetyBrake(report)
        number = (expected_version or 0) + 1
        linked, approved_meta = self._approving_writes(approving, number)
        audit_fields = self.audit.entry_fields(
            actor,
            role,
            "policy.publish",
            None,
            {
                "version": number,
                "note": note,
                "forced": force,
                "changes": report.changes,
                **(approved_meta or {}),
                **({"simulation_id": simulation_id} if simulation_id else {}),
                **({"fleet": report.fleet, "sample": report.drawn} if report.fleet else {}),
            },
        )
        simulation = report.to_dict()
        # The normalised bundle is stored, so versions diff cleanly whatever form was posted.
        try:
            entry = self.store.publish(
                candidate.bundle,
                published_by=approving[0]["requested_by"] if approving else actor,
                note=note,
                expected_version=expected_version,
                audit_fields=audit_fields,
                compiled=candidate.to_snapshot(),
                operation=operation,
                result={"forced": force, "simulation": simulation},
                linked=linked,
                meta=approved_meta,
            )
        except AlreadyPublished as exc:  # the same call, applied meanwhile
            assert operation is not None
            return self._replayed(exc, operation)
        return Published(entry=entry, report=report, forced=force, simulation=simulation)

    def rollback(
        self,
        version: int,
        *,
        note: str,
        actor: str,
        role: str,
        operation: Operation | None = None,
        approving: tuple[dict, dict] | None = None,
    ) -> Published:
        """Publish a new version equal to VERSION's bundle (no safety brake, no simulation).

        Raises UnknownVersion, BundleError (the old bundle no longer validates) or, when other
        publishes keep racing it, VersionConflict. Writes one ``policy.rollback`` audit entry.
        OPERATION is applied at most once, as for :meth:`publish`. Four eyes as for
        :meth:`publish`: a rollback that weakens a sanctions rule of the active version raises
        ApprovalRequired; APPROVING publishes an approved one on top of the version it was
        compared with only (VersionConflict otherwise, no retry).
        """
        prior = self._prior(operation)
        if prior is not None:
            return prior
        entry = self.store.version(version)
        if entry is None:
            raise UnknownVersion(f"there is no version {version}")
        # Checked before it is made active: a bundle every worker fails to compile would leave
        # them serving the old version forever.
        restored = compile_bundle(entry["bundle"])
        bundle, compiled = restored.bundle, restored.to_snapshot()
        conflict: VersionConflict | None = None
        for _ in range(_ROLLBACK_ATTEMPTS if approving is None else 1):
            active = self.store.active_version()
            if approving is None:  # four eyes on sanctions (SPEC §12.4), on each attempt
                self._four_eyes(
                    "rollback",
                    bundle,
                    active,
                    note=note,
                    actor=actor,
                    role=role,
                    rolled_back_to=version,
                    operation=operation,
                )
            else:
                active = approving[0]["compared_version"]
            number = (active or 0) + 1
            linked, approved_meta = self._approving_writes(approving, number)
            audit_fields = self.audit.entry_fields(
                actor,
                role,
                "policy.rollback",
                None,
                {
                    "version": number,
                    "rolled_back_to": version,
                    "note": note,
                    **(approved_meta or {}),
                },
            )
            try:
                published = self.store.publish(
                    bundle,
                    published_by=approving[0]["requested_by"] if approving else actor,
                    note=note,
                    expected_version=active,
                    audit_fields=audit_fields,
                    compiled=compiled,
                    operation=operation,
                    result={"rolled_back_to": version},
                    linked=linked,
                    meta=approved_meta,
                )
            except AlreadyPublished as exc:  # the same call, applied meanwhile
                assert operation is not None
                return self._replayed(exc, operation)
            except VersionConflict as exc:  # someone published meanwhile: restore on top of it
                conflict = exc
                continue
            return Published(entry=published, report=None)
        assert conflict is not None
        raise conflict
