"""The ids of the secrets every host must share (SPEC §15), recorded by the first host."""

from __future__ import annotations

from redis.cluster import RedisCluster

from service.store import keys


class SecretIdStore:
    """``claim`` records a secret's id on first use and tells every later host the recorded one
    (``service.crypto.secrets.ensure_shared`` compares)."""

    def __init__(self, redis):
        self.redis = redis
        self._forget = redis.register_script(_FORGET)

    def claim(self, name: str, secret_id: str) -> str:
        """Record SECRET_ID under NAME unless one is recorded; the recorded id."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(keys.SECRET_IDS, name, secret_id)
        pipe.hget(keys.SECRET_IDS, name)
        _, recorded = pipe.execute()
        return recorded

    def recorded(self) -> dict[str, str]:
        """Every recorded id by secret name."""
        return dict(self.redis.hgetall(keys.SECRET_IDS))

    def forget(self, name: str, audit_fields: dict) -> bool:
        """Drop NAME's recorded id (the deployment replaces that secret on every host; the next
        host to start records the new one) and write its audit entry, together; False (and no
        entry) when no id was recorded."""
        if isinstance(self.redis, RedisCluster):
            # The audit stream lives in another slot: it follows the change it describes.
            if not self.redis.hdel(keys.SECRET_IDS, name):
                return False
            self.redis.xadd(keys.AUDIT, audit_fields)
            return True
        flat = [item for pair in audit_fields.items() for item in pair]
        return bool(self._forget(keys=[keys.SECRET_IDS, keys.AUDIT], args=[name, *flat]))


# KEYS: the ids hash, the audit stream. ARGV: the name, then the audit entry's field/value pairs.
_FORGET = r"""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
return 1
"""
