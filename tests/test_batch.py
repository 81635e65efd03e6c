"""store/batch.py: a device read sent as one script call answers what the pipeline answers."""

from __future__ import annotations

import pytest
import redis as redis_lib

from service.store.batch import BATCH_SCRIPT, ScriptedBatch


def _queue(target, prefix: str):
    """The same reads and counter bumps on TARGET (a pipeline or a ScriptedBatch)."""
    target.hmget(f"{prefix}:hash", ["a", "missing", "b"])
    target.hgetall(f"{prefix}:hash")
    target.hgetall(f"{prefix}:nothing")
    target.get(f"{prefix}:string")
    target.get(f"{prefix}:nothing")
    target.hget(f"{prefix}:hash", "b")
    target.hget(f"{prefix}:hash", "missing")
    target.exists(f"{prefix}:hash")
    target.exists(f"{prefix}:nothing")
    target.smembers(f"{prefix}:set")
    target.smembers(f"{prefix}:nothing")
    target.incr(f"{prefix}:counter")
    target.expire(f"{prefix}:counter", 60)
    target.expire(f"{prefix}:nothing", 60)


@pytest.mark.parametrize("decode", [True, False])
def test_a_scripted_batch_answers_what_a_pipeline_answers(redis, redis_url, decode):
    client = redis_lib.Redis.from_url(redis_url, decode_responses=decode)
    for prefix in ("piped", "scripted"):
        client.hset(f"{prefix}:hash", mapping={"a": "1", "b": "ü"})
        client.set(f"{prefix}:string", "v")
        client.sadd(f"{prefix}:set", "x", "y")
        client.set(f"{prefix}:counter", 41)
    pipe = client.pipeline(transaction=False)
    _queue(pipe, "piped")
    batch = ScriptedBatch(client.register_script(BATCH_SCRIPT))
    _queue(batch, "scripted")
    assert batch.execute() == pipe.execute()
    assert client.ttl("scripted:counter") == client.ttl("piped:counter") > 0
    assert client.get("scripted:counter") in ("42", b"42")
    client.close()


def test_an_empty_batch_asks_nothing(redis):
    assert ScriptedBatch(redis.register_script(BATCH_SCRIPT)).execute() == []
