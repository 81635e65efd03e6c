"""A pipeline of reads (and counter bumps) sent as one script call on a standalone Redis.

A check-in's device read is a handful of small commands: the record, the override, the rate
counters, the token's revocation counter, the alias index. Sent as a pipeline, each costs the
client a command packed and a reply parsed through redis-py's layers, and the server one
command dispatched; sent as one ``EVALSHA`` of :data:`_BATCH`, the client packs one command and
parses one array (docs/performance.md, "Check-in speed"). :class:`ScriptedBatch` queues the same
calls a pipeline does (the subset the device read uses), so whoever queues reads on a device
read (``devices/checkin.py`` ``ReadAlong``) is unchanged, and ``execute()`` answers the same
values a pipeline would.

In a Redis Cluster the keys of one read span slots (the token's counter, the fleet's rate), and
a script may only touch one slot: there the device read stays a pipeline
(:func:`reads_for`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# KEYS: one per command. ARGV: per command, its name, the number of its further arguments and
# those arguments. Returns each command's reply in order (a nil reply as nil).
BATCH_SCRIPT = r"""
local out, a = {}, 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[a + 1])
  out[i] = redis.call(ARGV[a], KEYS[i], unpack(ARGV, a + 2, a + 1 + n))
  a = a + 2 + n
end
return out
"""


def _as_set(reply: Any) -> set:
    return set(reply or ())


def _as_bool(reply: Any) -> bool:
    return bool(reply)


class ScriptedBatch:
    """Queue commands as on a pipeline, then ``execute()`` them in one script call (atomic:
    nothing runs between them). Replies are converted as redis-py converts a pipeline's
    (SMEMBERS a set, EXPIRE a bool)."""

    __slots__ = ("_script", "_keys", "_args", "_convert")

    def __init__(self, script):
        self._script = script
        self._keys: list[str] = []
        self._args: list[Any] = []
        self._convert: list[tuple[int, Callable[[Any], Any]]] = []

    def _queue(self, name: str, key: str, *args: Any) -> ScriptedBatch:
        self._keys.append(key)
        self._args.extend((name, len(args), *args))
        return self

    def get(self, key: str) -> ScriptedBatch:
        return self._queue("GET", key)

    def hget(self, key: str, field: str) -> ScriptedBatch:
        return self._queue("HGET", key, field)

    def hmget(self, key: str, fields) -> ScriptedBatch:
        return self._queue("HMGET", key, *fields)

    def hgetall(self, key: str) -> ScriptedBatch:
        self._convert.append((len(self._keys), _pairs_to_dict))
        return self._queue("HGETALL", key)

    def exists(self, key: str) -> ScriptedBatch:
        return self._queue("EXISTS", key)

    def smembers(self, key: str) -> ScriptedBatch:
        self._convert.append((len(self._keys), _as_set))
        return self._queue("SMEMBERS", key)

    def incr(self, key: str) -> ScriptedBatch:
        return self._queue("INCR", key)

    def expire(self, key: str, seconds: int) -> ScriptedBatch:
        self._convert.append((len(self._keys), _as_bool))
        return self._queue("EXPIRE", key, int(seconds))

    def execute(self) -> list:
        """Run the queued commands; their replies, in order."""
        if not self._keys:
            return []
        return self.converted(self._script(keys=self._keys, args=self._args))

    def request(self) -> tuple[list[str], list[Any]]:
        """The script call's KEYS and ARGV (for a caller that sends it itself)."""
        return self._keys, self._args

    def converted(self, replies: list) -> list:
        """The script's REPLIES as a pipeline's would be."""
        for position, convert in self._convert:
            replies[position] = convert(replies[position])
        return replies


def _pairs_to_dict(reply: Any) -> dict:
    items = reply or ()
    return dict(zip(items[::2], items[1::2], strict=True))


def reads_for(redis, script, cluster: bool):
    """Something to queue a device read's commands on: a :class:`ScriptedBatch` on a standalone
    Redis, a pipeline in a cluster (whose keys span slots)."""
    if cluster:
        return redis.pipeline(transaction=False)
    return ScriptedBatch(script)
