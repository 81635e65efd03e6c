"""The shard tags: each hashes to the slot of the IMEIs it serves."""

from hypothesis import given
from hypothesis import strategies as st
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from service.store import keys
from service.store.shards import all_tags, slot_of, slot_tag


def test_one_tag_per_slot_in_slot_order():
    tags = all_tags()
    assert len(tags) == REDIS_CLUSTER_HASH_SLOTS
    assert [key_slot(tag.encode()) for tag in tags] == list(range(REDIS_CLUSTER_HASH_SLOTS))


@given(st.from_regex(r"\A[0-9]{15}\Z"))
def test_a_devices_shard_lives_in_its_records_slot(imei):
    shard_key = f"rl:stats:{{{slot_tag(imei)}}}:2026-11-27"
    assert key_slot(shard_key.encode()) == key_slot(keys.device(imei).encode()) == slot_of(imei)
