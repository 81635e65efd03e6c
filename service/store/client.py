"""The Redis client: standalone or Cluster, with bounded timeouts."""

from __future__ import annotations

import logging

import redis as redis_lib
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from service.config import Settings

log = logging.getLogger(__name__)


def connect_redis(url: str, settings: Settings):
    """A Redis client that fails fast (bounded timeouts, one quick retry on a broken
    connection, none on a timeout).

    A timeout means the command was sent and its reply is late: sending it again would apply a
    write (a whole MULTI/EXEC, a script) a second time, so a timeout is never retried; the caller
    answers 503 (a write's outcome then unknown: see docs/decisions.md, "Writes applied at most
    once"). A broken connection (closed by the server while idle, or refused) is retried once;
    the writes that might have reached Redis before it broke carry an idempotency record, so a
    second sending of them is recognised and not applied again (``DeviceStore.change_override``).

    A Redis Cluster is recognised by asking the node at URL (``INFO cluster``); the client then
    follows the cluster's slots from any node. A server that cannot be reached at start-up is
    taken to be a standalone one.
    """
    options = dict(
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(
            ExponentialBackoff(cap=0.1, base=0.01),
            1,
            supported_errors=(redis_lib.ConnectionError,),
        ),
        retry_on_timeout=False,
    )
    if _is_cluster_node(url, settings):
        return RedisCluster.from_url(url, **options)
    return redis_lib.Redis.from_url(url, health_check_interval=30, **options)


def is_cluster(redis) -> bool:
    """True when the client talks to a Redis Cluster."""
    return isinstance(redis, RedisCluster)


def _is_cluster_node(url: str, settings: Settings) -> bool:
    probe = redis_lib.Redis.from_url(
        url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    except redis_lib.RedisError:
        log.warning("Redis at start-up unreachable; assuming a standalone server")
        return False
    finally:
        probe.close()


def ping(redis) -> None:
    """Ask Redis (every primary of a cluster is the client's business) to answer; raises the
    client's error when it cannot (the readiness probe's one Redis call)."""
    redis.ping()
