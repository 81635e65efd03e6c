"""Check-in proofs: each device speaks only for itself (SPEC §13).

The device token is shared by a whole fleet, so a check-in is only known to come from the phone
it names when it carries ``X-Device-Proof``, a MAC of its exact body under the phone's own
``auth_key`` (``service.crypto.device_keys``). :class:`DeviceProofs` decides, for one check-in,
whether it is *proven*, *unproven* (answered, counted, never allowed to fix an activation
binding once the device has proven itself) or refused (:class:`DeviceProofError`, a 401).

- ``off``: proofs are not looked at (unless the bundle's ``device_proof.required_for`` names
  the device: that requirement holds whatever the setting);
- ``observe`` (default): checked and counted, never refused;
- ``required``: a check-in without a valid proof is refused and nothing is recorded.

Admin tokens (tests, support tools) are exempt: never refused, never counted as unproven.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.crypto.device_keys import auth_key, check_proof

#: Outcomes of a check-in's proof, as the check-in's write counts them.
PROVEN = "proven"
UNPROVEN = "unproven"
#: Not counted either way: proofs are off, or an admin token checked in without one.
UNCOUNTED = ""


class DeviceProofError(Exception):
    """The check-in needs a valid proof and has none: 401 ``device_proof`` (nothing recorded).
    ``problem`` is safe to show (it never holds a key or the expected MAC)."""

    def __init__(self, problem: str, server_time: float):
        super().__init__(problem)
        self.problem = problem
        self.server_time = int(server_time)


@dataclass(frozen=True, slots=True)
class ProofRequest:
    """What a check-in brings for its proof: the header (None when absent), the body's exact
    bytes, and whether its token is exempt (admin)."""

    header: str | None
    body: bytes
    exempt: bool = False


@dataclass(frozen=True, slots=True)
class ProofOutcome:
    """One check-in's proof: ``status`` (PROVEN, UNPROVEN or UNCOUNTED), ``mac`` (the proof to
    claim as used, when valid), ``required`` (a replay must then be refused)."""

    status: str
    mac: str | None = None
    required: bool = False

    def without_proof(self) -> ProofOutcome:
        """This check-in once its proof turned out to be a replay (``observe``, or exempt)."""
        return ProofOutcome(UNPROVEN if self.status == PROVEN else self.status)


#: A check-in that brings nothing for a proof (internal callers, the simulator).
NO_PROOF = ProofOutcome(UNCOUNTED)


class DeviceProofs:
    """Checks check-in proofs with the deployment's unlock master key, in MODE."""

    def __init__(self, master_key: bytes, mode: str):
        self._master_key = master_key
        self.mode = mode

    def __repr__(self) -> str:  # never the key
        return f"DeviceProofs(mode={self.mode!r})"

    def assess(
        self, imei: str, request: ProofRequest, now: float, required_by_policy: bool
    ) -> ProofOutcome:
        """The proof outcome of a check-in of IMEI; raises DeviceProofError when a proof is
        required (by the setting or the bundle) and the request has no valid one."""
        required = (self.mode == "required" or required_by_policy) and not request.exempt
        if self.mode == "off" and not required:
            return NO_PROOF
        # One HMAC to derive the key, one for the MAC; only when there is a header to check.
        if request.header is None:
            check = None
        else:
            check = check_proof(auth_key(self._master_key, imei), request.header, request.body, now)
        if check is not None and check.valid:
            return ProofOutcome(PROVEN, mac=check.mac, required=required)
        if required:
            raise DeviceProofError(
                check.problem if check is not None else "no X-Device-Proof header", now
            )
        if request.exempt:
            return NO_PROOF
        return ProofOutcome(UNPROVEN)

    def replayed(self, outcome: ProofOutcome, now: float) -> ProofOutcome:
        """OUTCOME's proof was used before: refused when required, else counted unproven."""
        if outcome.required:
            raise DeviceProofError("this proof was used before (send a fresh one)", now)
        return outcome.without_proof()


def unproven_devices(devices, since: float | None = None, batch: int = 1000):
    """(imei, unproven check-ins, last unproven at, proven at) of every device that checked in
    without a proof (at or after SINCE, epoch seconds, when given), in no particular order.

    A SCAN of the device records (read-only, every primary of a cluster): an operator asks this
    a few times before switching to ``required``, so the cost is paid then, not by every
    check-in (an index on the write path would be one more key written per check-in, and a
    fleet-sized one to shard in a cluster)."""
    from service.store.records import DeviceRecord

    fields = ("unproven_checkins", "last_unproven", "proven")
    for rows in devices.field_batches(fields, batch=batch, scan_count=batch):
        for imei, values in rows:
            if not values[0]:
                continue
            record = DeviceRecord.decode(dict(zip(fields, values, strict=True)))
            if since is not None and (record.last_unproven or 0) < since:
                continue
            yield imei, record.unproven_checkins, record.last_unproven, record.proven
