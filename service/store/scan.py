"""Bulk reads over many keys: SCAN a pattern in batches and read each batch in one round trip.

The retention sweep and the impact simulation both walk every device this way. Against a Redis
Cluster, redis-py's ``scan_iter`` visits every primary in turn, and the readers below never send
one command naming keys of different slots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from service.store.client import is_cluster

#: Reads the values of a batch of keys, one reply per key, in the keys' order.
BatchReader = Callable[[list[str]], list[Any]]


def scan_batches(
    redis, match: str, read: BatchReader, *, batch: int, scan_count: int
) -> Iterator[list[tuple[str, Any]]]:
    """(key, value) of every key matching MATCH, BATCH keys at a time, each batch read by READ
    in one round trip. SCAN_COUNT is the COUNT hint of each SCAN call.

    A key written during the walk may or may not be seen (SCAN's guarantee); a key removed
    between SCAN and READ comes with READ's reply for a missing key (None, or Nones).
    """
    pending: list[str] = []
    for key in redis.scan_iter(match=match, count=scan_count):
        pending.append(key if isinstance(key, str) else key.decode())
        if len(pending) >= batch:
            yield list(zip(pending, read(pending), strict=True))
            pending = []
    if pending:
        yield list(zip(pending, read(pending), strict=True))


def hash_fields_reader(redis, fields: Sequence[str]) -> BatchReader:
    """A reader of FIELDS of each hash: one pipelined HMGET per key."""

    def read(batch: list[str]) -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for key in batch:
            # execute_command skips the per-call argument juggling of pipe.hmget (a million calls).
            pipe.execute_command("HMGET", key, *fields)
        return pipe.execute()

    return read


def strings_reader(redis) -> BatchReader:
    """A reader of string values: one MGET, or in a cluster (where an MGET cannot span slots)
    one pipelined GET per key."""
    if is_cluster(redis):

        def read(batch: list[str]) -> list[Any]:
            pipe = redis.pipeline(transaction=False)
            for key in batch:
                pipe.get(key)
            return pipe.execute()

        return read
    return redis.mget
