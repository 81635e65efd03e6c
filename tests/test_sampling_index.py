"""The sampling index of SPEC §12.5: written by the check-in, read without a scan."""

from __future__ import annotations

from service.store import keys
from service.store.sampling import SamplingIndex, shard_key
from service.store.shards import all_tags, slot_of
from tests.imeis import imei

RUSSIA = {"sim": {"network": "25001"}}


def device(n: int) -> str:
    return imei(f"49015420{n:06d}")


def test_a_device_is_indexed_once_when_first_recorded(checkin, redis):
    imeis = [device(n) for n in range(12)]
    for one in imeis:
        checkin(one, **RUSSIA)
    for one in imeis[:5]:  # later check-ins do not index again
        checkin(one, **RUSSIA)
    index = SamplingIndex(redis)
    counts = index.counts()
    assert sum(counts) == 12
    for one in imeis:
        shard = redis.hgetall(shard_key(one))
        assert list(shard.values()).count(one) == 1
        assert counts[slot_of(one)] == int(shard["n"])
    # Every position of the fleet names a device, each device exactly once.
    assert sorted(index.imeis_at(range(12), counts)) == sorted(imeis)
    # The shard lives in the device's own slot (so the check-in's one script can write it).
    tags = all_tags()
    assert all(tags[slot_of(one)] == shard_key(one)[len("rl:sample:{") : -1] for one in imeis)


def test_the_facts_stream_keeps_its_place_among_the_keys(checkin, redis):
    # The facts stream (KEYS[2] without a proof) is still written: the extra key did not shift it.
    checkin(device(1), **RUSSIA)
    assert redis.xlen(keys.CHECKIN_FACTS) == 1
    assert SamplingIndex(redis).counts()[slot_of(device(1))] == 1


def test_reindex_adds_devices_recorded_before_the_index(checkin, redis):
    for n in range(6):
        checkin(device(n), **RUSSIA)
    # Devices recorded before the index existed: their shards are gone.
    for n in range(3):
        redis.delete(shard_key(device(n)))
    index = SamplingIndex(redis)
    before = sum(index.counts())
    assert before < 6
    assert index.reindex() == (6, 6 - before)
    counts = index.counts()
    assert sorted(index.imeis_at(range(sum(counts)), counts)) == sorted(device(n) for n in range(6))
    assert index.reindex() == (6, 0)  # run again: nothing more


def test_the_loader_records_and_indexes(redis):
    index = SamplingIndex(redis)
    rows = [(device(n), {"first_seen": "1", "verdict": "allow"}) for n in range(50)]
    assert index.load(rows, batch=7) == 50
    counts = index.counts()
    assert sorted(index.imeis_at(range(50), counts)) == sorted(r[0] for r in rows)
    assert redis.hget(keys.device(device(3)), "verdict") == "allow"


def test_the_reindex_command(checkin, redis, redis_url, monkeypatch):
    from click.testing import CliRunner

    from service.cli import main

    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    for n in range(4):
        checkin(device(n), **RUSSIA)
    redis.delete(shard_key(device(0)))
    result = CliRunner().invoke(main, ["devices", "reindex"], catch_exceptions=False)
    assert result.exit_code == 0
    counts = SamplingIndex(redis).counts()
    assert sum(counts) == 4
    assert "4 device(s) recorded" in result.output
