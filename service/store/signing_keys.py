"""The deployment's verdict signing keys in Redis (SPEC §15): one ring every host reads.

Records are opaque JSON here (``service.crypto.signing`` gives them meaning: the public key,
the private key sealed under the key-encryption key every host holds, when the key signs and
until when it is published). Every change is a compare-and-set on a version counter, applied
with its audit entry by one script, so two rotations at once (or two hosts making the first key
at once) never both win.
"""

from __future__ import annotations

import orjson
from redis.cluster import RedisCluster

from service.store import keys

# KEYS: the keys hash, the version counter, [the audit stream].
# ARGV: expected version, number W of records written, W kid/record pairs, number D of kids
#       deleted, D kids, then the audit entry's field/value pairs.
_APPLY = r"""
local version = tonumber(redis.call('GET', KEYS[2]) or '0')
if version ~= tonumber(ARGV[1]) then
  return 0
end
local written = tonumber(ARGV[2])
if written > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3, 2 + 2 * written))
end
local at = 3 + 2 * written
local deleted = tonumber(ARGV[at])
if deleted > 0 then
  redis.call('HDEL', KEYS[1], unpack(ARGV, at + 1, at + deleted))
end
redis.call('INCR', KEYS[2])
if KEYS[3] and #ARGV > at + deleted then
  redis.call('XADD', KEYS[3], '*', unpack(ARGV, at + deleted + 1))
end
return 1
"""


def _decode(raw: str) -> dict | None:
    """A record, or None when it is not a JSON object (the ring reports it and goes on)."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


class SigningKeyStore:
    """Reads the ring whole; changes it by compare-and-set on its version."""

    def __init__(self, redis):
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)
        self._apply = redis.register_script(_APPLY)

    def read(self) -> tuple[int, dict[str, dict | None]]:
        """The ring's version and every key record by kid, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.SIGNING_KEYS_VERSION)
        pipe.hgetall(keys.SIGNING_KEYS)
        version, records = pipe.execute()
        return int(version or 0), {kid: _decode(raw) for kid, raw in records.items()}

    def version(self) -> int:
        """The ring's version alone (bumped by every change)."""
        return int(self.redis.get(keys.SIGNING_KEYS_VERSION) or 0)

    def apply(
        self,
        expected_version: int,
        writes: dict[str, dict],
        deletes: list[str],
        audit_fields: dict | None = None,
    ) -> bool:
        """Write and delete records, and append the audit entry, unless the ring changed since
        EXPECTED_VERSION (then nothing is written and False returned)."""
        args: list = [expected_version, len(writes)]
        for kid, record in writes.items():
            args.extend((kid, orjson.dumps(record)))
        args.append(len(deletes))
        args.extend(deletes)
        in_script = audit_fields is not None and not self.cluster
        if in_script:
            args.extend(item for pair in audit_fields.items() for item in pair)
        stream = [keys.AUDIT] if in_script else []
        applied = bool(
            self._apply(keys=[keys.SIGNING_KEYS, keys.SIGNING_KEYS_VERSION, *stream], args=args)
        )
        if applied and audit_fields is not None and self.cluster:
            # In a cluster the audit stream lives in another slot: it follows the change.
            self.redis.xadd(keys.AUDIT, audit_fields)
        return applied
