"""Privacy retention: check-in facts older than the retention period are removed (SPEC §4)."""

from __future__ import annotations

import time

import orjson
from click.testing import CliRunner

from service.cli import main
from service.devices.retention import sweep
from service.engine.model import DAY_S
from service.store import keys
from tests.imeis import HK, US

BODY_HK = {"sim": {"network": "45400"}}
BODY_FR = {"sim": {"network": "20801"}}


def test_old_facts_go_and_decisions_stay(app, redis):
    checkin = app.extensions["regionlock"].checkin
    now = time.time()
    long_ago = now - 100 * DAY_S
    # Stream ids are the time of recording: two facts recorded long ago, then today's.
    for offset in (2, 1):
        redis.xadd(keys.CHECKIN_FACTS, {"facts": "{}"}, id=f"{int(long_ago * 1000) - offset}-0")
    checkin.decide({"imei": HK, **BODY_HK}, None, long_ago)  # activated at home, old
    checkin.decide({"imei": US, **BODY_FR}, None, long_ago)  # old and only old
    checkin.decide({"imei": HK, **BODY_FR}, None, now - DAY_S)  # travelling, recent
    assert redis.xlen(keys.CHECKIN_FACTS) == 5

    devices = app.extensions["regionlock"].devices
    report = sweep(devices, retention_days=90, now=now)

    assert (report.devices, report.devices_changed, report.stream_entries_removed) == (2, 2, 2)
    # US: its only check-in is older than 90 days: its facts and history are gone ...
    us = redis.hgetall(keys.device(US))
    assert "facts" not in us and "history" not in us
    # ... but not what was decided from them.
    assert us["verdict"] == "lock" and "activation" in us  # a US phone first seen in FR
    # HK: the recent check-in stays, the old history entry goes, the binding stays.
    hk = redis.hgetall(keys.device(HK))
    assert orjson.loads(hk["facts"])["places"] == {"network": "FR"}
    history = app.extensions["regionlock"].devices.decisions(HK)
    assert [d["places"] for d in history] == [{"network": "FR"}]
    assert orjson.loads(hk["state"])["bindings"] == {"gray-market": False}
    assert redis.xlen(keys.CHECKIN_FACTS) == 3
    # A second sweep finds nothing more to do.
    assert sweep(devices, retention_days=90, now=now).devices_changed == 0


def test_sweep_never_undoes_a_newer_checkin(app, redis):
    """The compare-and-set script leaves a record alone when it changed since it was read."""
    checkin = app.extensions["regionlock"].checkin
    checkin.decide({"imei": HK, **BODY_HK}, None, time.time() - 100 * DAY_S)
    stale = redis.hget(keys.device(HK), "facts")
    checkin.decide({"imei": HK, **BODY_FR}, None, time.time())  # lands after the read
    forget = app.extensions["regionlock"].devices.forget_facts
    assert forget(HK, facts_read=stale, history_read="", new_history="", drop_facts=True) == 0
    assert orjson.loads(redis.hget(keys.device(HK), "facts"))["places"] == {"network": "FR"}


def test_sweep_command(app, redis, redis_url, monkeypatch):
    app.extensions["regionlock"].checkin.decide(
        {"imei": US, **BODY_FR}, None, time.time() - 100 * DAY_S
    )
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    monkeypatch.setenv("REGIONLOCK_FACTS_RETENTION_DAYS", "30")
    result = CliRunner().invoke(main, ["facts", "sweep"])
    assert result.exit_code == 0, result.output
    assert "devices 1, changed 1, stream entries removed 0" in result.stdout
    assert "facts" not in redis.hgetall(keys.device(US))
