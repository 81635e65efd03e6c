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

# Policy versions: the active version number and the append-only history, one tag.
POLICY_ACTIVE = f"{PREFIX}{{policy}}:active"
POLICY_VERSIONS = f"{PREFIX}{{policy}}:versions"
# Hash: version number -> its metadata alone, so listing the history never loads bundles
# (a bundle with a million allocations is tens of megabytes).
POLICY_VERSION_META = f"{PREFIX}{{policy}}:version-meta"
POLICY_CHANNEL = f"{PREFIX}{{policy}}:published"
# Hash: version number -> the compiled policy's snapshot (what workers load on a publish).
POLICY_COMPILED = f"{PREFIX}{{policy}}:compiled"

# Prefix of flask-limiter's counters (per token name or client IP; never the token itself).
RATE_LIMITS_PREFIX = f"{PREFIX}limits"
