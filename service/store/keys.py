"""Every Redis key regionlock uses, in one place.

One prefix (``rl:``). Per-device keys carry the hash tag ``{imei}`` so that all of a
device's keys live in one Redis Cluster slot and can be written in one MULTI. Keys that
are written together elsewhere share a tag too (``{policy}``, ``{tokens}``).
"""

PREFIX = "rl:"


def device(imei: str) -> str:
    """Hash: the device's record (first seen, activation, last check-in, verdict, state)."""
    return f"{PREFIX}dev:{{{imei}}}"


def device_override(imei: str) -> str:
    """String (JSON): the device's active override; a time-boxed unlock carries a TTL."""
    return f"{PREFIX}dev:{{{imei}}}:override"


def device_shared_imeis(imei: str) -> str:
    """Set: the IMEIs this device reported that another device reports too (a cloned or reused
    IMEI, SPEC §9); in the device's slot, beside its record."""
    return f"{PREFIX}dev:{{{imei}}}:shared"


def imei_alias(imei: str) -> str:
    """Set: the primary IMEIs of the devices that reported IMEI as one of their other IMEIs
    (SPEC §9). Tagged by the alias itself, so a lookup by any IMEI is one key in one slot; it
    lives in another slot than its devices' records and is written after them (never in
    their MULTI)."""
    return f"{PREFIX}alias:{{{imei}}}"


def device_used_proof(imei: str, mac: str) -> str:
    """String with a TTL: a check-in proof (its MAC) the device used, refused if sent again
    (SPEC §13). In the device's slot, so the check-in's script claims it in the same call."""
    return f"{PREFIX}dev:{{{imei}}}:proof:{mac}"


def device_checkin_rate(imei: str, window: int) -> str:
    """Check-ins of IMEI counted in fixed window number WINDOW (its per-device rate limit)."""
    return f"{PREFIX}dev:{{{imei}}}:rate:{window}"


def fleet_checkin_rate(window: int) -> str:
    """Check-ins of the whole fleet counted in fixed window number WINDOW (the ceiling)."""
    return f"{PREFIX}fleet-rate:{window}"


def idempotency(imei: str, digest: str) -> str:
    """String (JSON, TTL): the record of one state-changing call on the device (its request's
    fingerprint and result), named by a digest of the caller's token name and Idempotency-Key
    (or of a random id): written in the same script as the change, so a call sent again is
    replayed, not applied twice."""
    return f"{PREFIX}dev:{{{imei}}}:idem:{digest}"


def idempotent_request(digest: str) -> str:
    """String (JSON, TTL): the result of a call spanning many devices (bulk unlock), named like
    :func:`idempotency`; each device's change has its own record as well."""
    return f"{PREFIX}idem:{digest}"


# SCAN pattern matching only the device record hashes (their names end with the tag).
DEVICE_SCAN_PATTERN = f"{PREFIX}dev:{{*}}"


def imei_of_device_key(key: str) -> str:
    """The IMEI inside a device record key."""
    return key[len(PREFIX) + 5 : -1]


# SCAN pattern matching only the override keys (the simulation reads them in a pass of their own).
DEVICE_OVERRIDE_SCAN_PATTERN = f"{PREFIX}dev:{{*}}:override"


def imei_of_override_key(key: str) -> str:
    """The IMEI inside an override key."""
    return key[len(PREFIX) + 5 : -len("}:override")]


# Stream: check-in facts (places per signal, no raw evidence), bounded by count and age.
CHECKIN_FACTS = f"{PREFIX}checkin-facts"

# Stream: the audit trail (append-only; never trimmed by the service).
AUDIT = f"{PREFIX}audit"

# Tokens: both hashes are written together, so they share a tag.
TOKENS_BY_HASH = f"{PREFIX}{{tokens}}:by-hash"
TOKENS_BY_NAME = f"{PREFIX}{{tokens}}:by-name"
# A counter every revocation increments (in its MULTI): a worker that cached a token at one
# value believes it only while the check-in's read still sees that value (web/auth.py).
TOKENS_GENERATION = f"{PREFIX}{{tokens}}:generation"

# Policy versions: the active version number and the append-only history, one tag.
POLICY_ACTIVE = f"{PREFIX}{{policy}}:active"
POLICY_VERSIONS = f"{PREFIX}{{policy}}:versions"
# Hash: version number -> its metadata alone, so listing the history never loads bundles
# (a bundle with a million allocations is tens of megabytes).
POLICY_VERSION_META = f"{PREFIX}{{policy}}:version-meta"
POLICY_CHANNEL = f"{PREFIX}{{policy}}:published"
# Hash: version number -> the compiled policy's snapshot (what workers load on a publish).
POLICY_COMPILED = f"{PREFIX}{{policy}}:compiled"


def policy_idempotency(digest: str) -> str:
    """String (JSON, TTL): the record of one publish or rollback made with an Idempotency-Key
    (its request's fingerprint and result), named like :func:`idempotency`; in the policy's
    slot, so the publish's EXEC writes it with the version."""
    return f"{PREFIX}{{policy}}:idem:{digest}"


# --- Four eyes on sanctions (SPEC §12.4): approval requests, in the policy's slot so that
# approving one publishes the version and closes the request in one MULTI/EXEC.


def policy_approval(approval_id: str) -> str:
    """String (JSON, TTL): one approval request (bundle, requester, changes, state); 7 days
    while pending, 7 more once closed."""
    return f"{PREFIX}{{policy}}:approval:{approval_id}"


# Sorted set: id of each pending approval request -> the epoch second it expires.
POLICY_APPROVALS_PENDING = f"{PREFIX}{{policy}}:approvals-pending"


# Prefix of flask-limiter's counters (per token name or client IP; never the token itself).
RATE_LIMITS_PREFIX = f"{PREFIX}limits"

# Hash: secret name -> the public id (first 8 hex digits of its SHA-256) of the secret every
# host of the deployment must share (console secret key, signing keys' key-encryption key,
# unlock master key), recorded by the first host that uses it (SPEC §15).
SECRET_IDS = f"{PREFIX}secret-ids"

# Verdict signing keys of the whole deployment (SPEC §15): kid -> record (JSON: public key,
# private key sealed under the key-encryption key, when it signs, until when it is published),
# and a counter bumped by every change, which writers check (their compare-and-set).
SIGNING_KEYS = f"{PREFIX}{{signing}}:keys"
SIGNING_KEYS_VERSION = f"{PREFIX}{{signing}}:version"


def console_session(session_digest: str) -> str:
    """Hash: one signed-in console session, named by the SHA-256 of its random id (the cookie
    holds the id itself, Redis only its digest); TTL: the idle timeout."""
    return f"{PREFIX}console-session:{session_digest}"


# --- Fleet overview (SPEC §14): sharded by slot (store/shards.py), beside each device -------
# A device's check-in script and override script write the shards tagged ``slot_tag(imei)``:
# that tag hashes to the device's own slot, so the counters and the index entry change in the
# same atomic script as the record or override (docs/DESIGN.md "Fleet overview").


def stats_shard(tag: str, day: str) -> str:
    """Hash: one shard of a UTC day's counters (DAY is YYYYMMDD); fields ``n`` (check-ins),
    ``<verdict>:t|r:<code>|c:<country>|g:<region>|d:<distributor>`` (devices whose verdict
    became VERDICT), ``o:<unlock|lock>:<role>`` (overrides), ``codes`` (unlock codes). TTL
    400 days."""
    return f"{PREFIX}stats:{{{tag}}}:{day}"


def stats_day(day: str) -> str:
    """Hash: a closed UTC day's counters, the sum of its shards (the sweeper's roll-up). A
    bounded summary, not the fleet: one key per day. TTL 400 days."""
    return f"{PREFIX}stats-day:{day}"


# String: the last UTC day (YYYYMMDD) whose shards the sweeper rolled up into stats_day.
STATS_ROLLED_THROUGH = f"{PREFIX}stats-rolled-through"


def locked_index(tag: str) -> str:
    """Hash: one shard of the locked-devices index: IMEI -> ``since\\tfields\\tcsv row``."""
    return f"{PREFIX}locked:{{{tag}}}"


def locked_counts(tag: str) -> str:
    """Hash: one shard of the locked devices' counts (``t``, ``r:``, ``c:``, ``g:``, ``d:``),
    kept by the same scripts as the index."""
    return f"{PREFIX}locked-n:{{{tag}}}"


def override_expiries(tag: str) -> str:
    """Sorted set: one shard of the time-boxed overrides, IMEI scored by its expiry (epoch
    seconds): the sweeper re-indexes a device within seconds of its unlock lapsing."""
    return f"{PREFIX}override-exp:{{{tag}}}"


# Sorted set: shard tag -> the earliest expiry in that tag's override_expiries (at most one
# member per slot, never the fleet): the sweeper visits only the shards due, with a full pass
# now and then in case a mark was lost (written just after the override's script).
OVERRIDE_EXPIRY_DUE = f"{PREFIX}override-exp-due"

# --- simulations as jobs (SPEC §12.5) ----------------------------------------------------------

#: Prefix of the sampling index's shards (the check-in's script finds its shard by it).
SAMPLE_SHARD_PREFIX = f"{PREFIX}sample:"


def sample_shard(tag: str) -> str:
    """Hash: one shard of the sampling index, tagged with a slot tag (``store/shards.py``):
    ``n`` -> how many devices of this slot were recorded, ``"1"``..``"n"`` -> their IMEIs in
    the order they were first recorded (an ordinal never changes)."""
    return f"{SAMPLE_SHARD_PREFIX}{{{tag}}}"


def simulation_job(job_id: str) -> str:
    """Hash (TTL 7 days): one simulation job: its request, state, progress, checkpoint and
    report (``store/simulations.py``)."""
    return f"{PREFIX}{{sim}}:job:{job_id}"


# Sorted set: job id -> creation time, the list of simulation jobs (trimmed past 7 days).
SIMULATION_JOBS = f"{PREFIX}{{sim}}:jobs"

# The rq queue of simulation jobs (on the jobs Redis: REGIONLOCK_JOBS_REDIS_URL).
SIMULATION_QUEUE = "regionlock-simulations"
