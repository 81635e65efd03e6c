"""store/coalesced.py: commands of concurrent callers go out together, replies come back to
the right caller, and failures are redis-py's (so the API answers them as it always did)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis as redis_lib

from service.store.coalesced import CoalescedConnection, connection_for
from service.store.server import EmbeddedRedis


@pytest.fixture
def lone(tmp_path):
    """A Redis of this test alone (its read counter counts only this test's traffic)."""
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as server:
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        yield server, client
        client.close()


def _connection(url: str, timeout_s: float = 2.0) -> CoalescedConnection:
    connection = connection_for(redis_lib.Redis.from_url(url, decode_responses=True), timeout_s)
    assert connection is not None
    return connection


def _reads(client) -> int:
    return int(client.info("stats")["total_reads_processed"])


def test_concurrent_calls_go_out_in_one_write_and_each_gets_its_reply(lone):
    server, client = lone
    client.mset({f"k{i}": f"v{i}" for i in range(50)})

    async def run():
        connection = _connection(server.url)
        await connection.call("PING")  # connected (and its handshake done)
        before = _reads(client)
        replies = await asyncio.gather(*(connection.call("GET", f"k{i}") for i in range(50)))
        after = _reads(client)
        connection.close()
        return replies, after - before - 1  # the INFO that asked is one read

    replies, reads = asyncio.run(run())
    assert replies == [f"v{i}" for i in range(50)]
    assert reads == 1


def test_a_script_redis_does_not_know_is_loaded_and_called(lone):
    server, client = lone
    source = "return {KEYS[1], ARGV[1], redis.call('GET', KEYS[1])}"
    sha = client.script_load(source)
    client.script_flush()
    client.set("a", "1")

    async def run():
        connection = _connection(server.url)
        try:
            return await connection.evalsha(sha, source, ["a"], ["x"])
        finally:
            connection.close()

    assert asyncio.run(run()) == ["a", "x", "1"]
    assert client.script_exists(sha) == [True]


def test_an_error_reply_is_redis_pys_exception_and_the_connection_stays_usable(lone):
    server, client = lone
    client.sadd("a-set", "x")

    async def run():
        connection = _connection(server.url)
        wrong, right = await asyncio.gather(
            connection.call("GET", "a-set"),
            connection.call("SCARD", "a-set"),
            return_exceptions=True,
        )
        again = await connection.call("SCARD", "a-set")
        connection.close()
        return wrong, right, again

    wrong, right, again = asyncio.run(run())
    assert isinstance(wrong, redis_lib.exceptions.ResponseError) and "WRONGTYPE" in str(wrong)
    assert right == 1 and again == 1


def test_password_and_database_are_sent_before_any_call(tmp_path):
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as server:
        admin = redis_lib.Redis.from_url(server.url, decode_responses=True)
        admin.config_set("requirepass", "s3cret")
        url = server.url.replace("redis://", "redis://:s3cret@").rstrip("/0") + "/5"
        writer = redis_lib.Redis.from_url(url, decode_responses=True)
        writer.set("here", "db5")

        async def run():
            connection = _connection(url)
            try:
                return await asyncio.gather(
                    connection.call("GET", "here"), connection.call("GET", "here")
                )
            finally:
                connection.close()

        assert asyncio.run(run()) == ["db5", "db5"]
        writer.config_set("requirepass", "")
        writer.close()
        admin.close()


def test_a_late_reply_is_a_timeout_for_every_waiting_call_then_a_new_connection():
    """A server that accepts and never answers: calls time out (redis-py's TimeoutError), and
    nothing waits longer than the timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"

        async def run():
            connection = _connection(url, timeout_s=0.3)
            started = asyncio.get_running_loop().time()
            results = await asyncio.gather(
                connection.call("GET", "a"), connection.call("GET", "b"), return_exceptions=True
            )
            return results, asyncio.get_running_loop().time() - started

        results, took = asyncio.run(run())
    assert all(isinstance(r, redis_lib.exceptions.TimeoutError) for r in results)
    assert took < 2.0


def test_a_refused_connection_and_a_lost_one_are_connection_errors(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"

    async def refused():
        return await _connection(closed).call("PING")

    with pytest.raises(redis_lib.exceptions.ConnectionError):
        asyncio.run(refused())

    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()

    async def lost():
        connection = _connection(server.url)
        await connection.call("PING")
        server.stop()
        with pytest.raises(redis_lib.exceptions.ConnectionError):
            await connection.call("PING")
        server.start()  # the same port again: the next call connects anew
        return await connection.call("PING")

    try:
        assert asyncio.run(lost()) == "PONG"
    finally:
        server.stop()


def test_clients_it_does_not_speak_get_no_connection(tmp_path):
    assert connection_for(redis_lib.Redis(decode_responses=False), 1.0) is None
    assert connection_for(redis_lib.Redis(ssl=True, decode_responses=True), 1.0) is None


def test_a_worker_paused_longer_than_the_timeout_fails_no_call_redis_answered(lone):
    """The loop stuck (a long turn, a descheduled VM) before a call left or after it left:
    its reply is read before any timer, and a call is timed from when it was sent."""
    server, client = lone
    client.set("a", "1")

    async def run():
        connection = _connection(server.url, timeout_s=0.2)
        await connection.call("PING")
        loop = asyncio.get_running_loop()
        loop.call_soon(time.sleep, 0.5)  # the next turn is stuck before the flush
        queued_then_stuck = await connection.call("GET", "a")
        sent = asyncio.ensure_future(connection.call("GET", "a"))
        await asyncio.sleep(0)  # queued
        await asyncio.sleep(0)  # flushed
        time.sleep(0.5)  # stuck while Redis answers
        sent_then_stuck = await sent
        connection.close()
        return queued_then_stuck, sent_then_stuck

    assert asyncio.run(run()) == ("1", "1")


def test_the_late_word_of_a_dropped_connection_does_not_fail_the_current_one(lone):
    """The connection object is the protocol of each connection it makes: a dropped
    connection's connection_lost may come after a new one is up, and must not touch it."""
    server, client = lone
    client.set("a", "1")

    async def run():
        connection = _connection(server.url)
        await connection.call("PING")
        connection.close()  # dropped; its connection_lost is still to come
        pending = asyncio.ensure_future(connection.call("GET", "a"))  # a new connection
        while connection._transport is None or connection._connecting is not None:
            await asyncio.sleep(0)
        connection.connection_lost(None)  # what a late word from the old one looks like
        try:
            return await pending
        finally:
            connection.close()

    assert asyncio.run(run()) == "1"
