"""Devices with several IMEIs (SPEC §9): the alias index and the IMEIs two devices share.

Three things are stored:

- ``imeis``, a field of the device's record hash (:func:`keys.device`): the device's other
  IMEIs as it last reported them, in its order (:func:`records.encode_aliases`);
- :func:`keys.imei_alias` ``rl:alias:{<alias>}``: a set of the primaries that reported that
  IMEI as an alias. It is tagged by the alias, so resolving any IMEI reads keys of one slot
  (the IMEI's own) in one round trip;
- :func:`keys.device_shared_imeis` ``rl:dev:{<primary>}:shared``: a set of the IMEIs this
  device reported that another device reports too (its primary or one of its aliases).

In a Redis Cluster the alias sets live in the aliases' slots, not the device's, so they cannot
join the device's MULTI: they are written after the device's record, idempotently (SADD/SREM),
and the next check-in that carries the device's IMEIs writes them again if a write was lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.store import keys
from service.store.client import is_cluster
from service.store.records import decode_aliases, encode_aliases


@dataclass(frozen=True, slots=True)
class Resolution:
    """What an IMEI names: ``primaries`` are the devices it reaches (one: that device; several:
    an alias of several devices; none: no device is known by it)."""

    imei: str
    primaries: tuple[str, ...] = ()
    #: True when IMEI is itself a device's primary (a record or an override is kept under it).
    is_primary: bool = False


@dataclass(frozen=True, slots=True)
class Identity:
    """A device's IMEIs as support sees them."""

    aliases: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    #: shared IMEI -> the other devices (primaries) that report it.
    shared_with: dict[str, list[str]] = field(default_factory=dict)


class IdentityStore:
    """The alias index and shared-IMEI marks; every call is a few round trips at most."""

    def __init__(self, redis):
        self.redis = redis
        self.cluster = is_cluster(redis)

    def resolve(self, imei: str) -> Resolution:
        """Which device(s) IMEI names: its own when a record or an override is kept under it
        (a primary always wins), else the devices that report it as an alias."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.device(imei), keys.device_override(imei))
        pipe.smembers(keys.imei_alias(imei))
        own, claimants = pipe.execute()
        if own:
            return Resolution(imei, (imei,), is_primary=True)
        return Resolution(imei, tuple(sorted(claimants)))

    def identity(self, primary: str) -> Identity:
        """The device's aliases and the IMEIs it shares with other devices (and with whom)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(keys.device(primary), "imeis")
        pipe.smembers(keys.device_shared_imeis(primary))
        raw_aliases, shared = pipe.execute()
        aliases = decode_aliases(raw_aliases)
        shared_sorted = tuple(sorted(shared))
        if not shared_sorted:
            return Identity(aliases=aliases)
        pipe = self.redis.pipeline(transaction=False)
        for imei in shared_sorted:
            pipe.exists(keys.device(imei))
            pipe.smembers(keys.imei_alias(imei))
        replies = pipe.execute()
        with_whom: dict[str, list[str]] = {}
        for i, imei in enumerate(shared_sorted):
            others = set(replies[2 * i + 1])
            if replies[2 * i] and imei != primary:
                others.add(imei)
            others.discard(primary)
            with_whom[imei] = sorted(others)
        return Identity(aliases=aliases, shared=shared_sorted, shared_with=with_whom)

    def claimants(self, imei: str) -> set[str]:
        """The primaries that report IMEI as an alias (a new device's check-in asks whether its
        primary is already someone else's alias)."""
        return set(self.redis.smembers(keys.imei_alias(imei)))

    @staticmethod
    def queue_claimants(pipe, imei: str) -> int:
        """Queue on PIPE the read of :meth:`claimants` (one reply: the set)."""
        pipe.smembers(keys.imei_alias(imei))
        return 1

    def record(self, primary: str, aliases: tuple[str, ...]) -> tuple[str, ...]:
        """Record that PRIMARY's device reports ALIASES (its other IMEIs, in its order) after
        its check-in was recorded: the device's ``imeis`` field, the alias sets (added, and
        removed for IMEIs it no longer reports), and the shared marks on this device and on
        every other device that reports one of the same IMEIs. Nothing is taken over: a
        primary stays its device's and an alias set only grows by this device. Returns the
        IMEIs found shared (sorted)."""
        pipe = self.redis.pipeline(transaction=False)
        self.queue_record_reads(pipe, primary, aliases)
        return self.record_from(primary, aliases, pipe.execute())

    @staticmethod
    def queue_record_reads(pipe, primary: str, aliases: tuple[str, ...]) -> int:
        """Queue on PIPE what :meth:`record_from` needs to know (a check-in queues them on its
        device read, so the steady state costs no round trip); the number of replies."""
        pipe.hget(keys.device(primary), "imeis")
        pipe.smembers(keys.imei_alias(primary))
        for alias in aliases:
            pipe.exists(keys.device(alias))
            pipe.smembers(keys.imei_alias(alias))
        return 2 + 2 * len(aliases)

    def record_from(self, primary: str, aliases: tuple[str, ...], replies: list) -> tuple[str, ...]:
        """:meth:`record` given the REPLIES of :meth:`queue_record_reads`: writes (one
        pipeline) only when the reported IMEIs or their index changed, which is rare."""
        previous = decode_aliases(replies[0])
        indexed = all(primary in replies[3 + 2 * i] for i in range(len(aliases)))
        others_by_imei: dict[str, set[str]] = {}
        claim_primary = set(replies[1]) - {primary}
        if claim_primary:
            others_by_imei[primary] = claim_primary
        for i, alias in enumerate(aliases):
            others = set(replies[3 + 2 * i]) - {primary}
            if replies[2 + 2 * i]:
                others.add(alias)  # another device's primary
            if others:
                others_by_imei[alias] = others
        dropped = tuple(a for a in previous if a not in aliases)
        if previous == aliases and indexed and not others_by_imei:
            return ()  # the steady state: nothing to write
        # Several slots: a plain pipeline (each command is idempotent; a lost one is written
        # again by the next check-in that reports these IMEIs).
        pipe = self.redis.pipeline(transaction=False)
        if previous != aliases:
            if aliases:
                pipe.hset(keys.device(primary), "imeis", encode_aliases(aliases))
            else:
                pipe.hdel(keys.device(primary), "imeis")
        for alias in aliases:
            pipe.sadd(keys.imei_alias(alias), primary)
        for alias in dropped:
            pipe.srem(keys.imei_alias(alias), primary)
        self._mark_shared(pipe, primary, others_by_imei)
        pipe.execute()
        return tuple(sorted(others_by_imei))

    def mark_primary_claimed(self, primary: str, claimants: set[str]) -> None:
        """A new device's primary is already reported as an alias by CLAIMANTS: mark it shared
        on every one of them."""
        pipe = self.redis.pipeline(transaction=False)
        self._mark_shared(pipe, primary, {primary: claimants})
        pipe.execute()

    @staticmethod
    def _mark_shared(pipe, primary: str, others_by_imei: dict[str, set[str]]) -> None:
        for imei, others in others_by_imei.items():
            pipe.sadd(keys.device_shared_imeis(primary), imei)
            for other in others:
                pipe.sadd(keys.device_shared_imeis(other), imei)
