"""Fleet overview (SPEC §14): day counters and the locked index, kept by the write path."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import pytest

from service.devices.overrides import OverrideService
from service.devices.stats import (
    StatsService,
    StatsSweeper,
    backfill,
    entry_from_basis,
)
from service.engine.model import apply_override
from service.store import keys
from service.store.audit import AuditStore
from service.store.devices import DeviceStore
from service.store.fleet_stats import StatsStore, day_of
from service.store.records import DeviceRecord, decode_override, encode_outcome
from service.store.shards import slot_tag
from service.store.tokens import Principal
from tests.conftest import bearer
from tests.imeis import EU, HK, HK2, UNKNOWN, UNKNOWN2, US

CUBA = {"sim": {"network": "36801"}}
CRIMEA_GPS = {"gps": {"lat": 44.95, "lon": 34.1}}
US_NETWORK = {"sim": {"network": "310260"}}
HK_NETWORK = {"sim": {"network": "45400"}}
FR_NETWORK = {"sim": {"network": "20801"}}

AGENT = Principal("agent-ann", "agent")
COMPLIANCE = Principal("co-cleo", "compliance")


@pytest.fixture
def overrides(redis):
    return OverrideService(DeviceStore(redis), AuditStore(redis))


@pytest.fixture
def stats(redis):
    return StatsService(StatsStore(redis), AuditStore(redis))


def today() -> date:
    return datetime.now(UTC).date()


def test_checkins_and_verdict_changes_are_counted_per_day(app, checkin, overrides, stats):
    checkin(UNKNOWN, **CUBA)  # new device: became lock (sanctions, CU)
    checkin(UNKNOWN, **CUBA)  # same verdict: a check-in, no change
    checkin(HK, **HK_NETWORK)  # new device, allowed with no reason: allow total only
    checkin(HK2, **US_NETWORK)  # gray import: lock outside_territory, hk-global
    checkin(UNKNOWN, **US_NETWORK)  # lock -> allow
    overrides.unlock(HK2, AGENT, "customer moved", expires_in_s=3600)
    overrides.lock(HK, COMPLIANCE, "stolen")
    day = stats.report(today(), today())["days"][0]
    assert day["checkins"] == 5
    lock = day["verdicts"]["lock"]
    assert lock["total"] == 2
    assert lock["by_reason"] == {"sanctioned_region": 1, "outside_territory": 1}
    assert lock["by_country"] == {"CU": 1, "US": 1}
    assert lock["by_region"] == {"CU": 1, "US": 1}
    assert lock["by_distributor"] == {"hk-global": 1}
    assert day["verdicts"]["allow"]["total"] == 2
    assert day["verdicts"]["allow"]["by_reason"] == {}
    assert day["verdicts"]["warn"]["total"] == 0
    assert day["overrides"] == {"unlock": {"agent": 1}, "lock": {"compliance": 1}}
    assert day["unlock_codes"] == 0


def test_report_has_every_day_with_zeros_and_refuses_long_ranges(stats):
    report = stats.report(date(2026, 1, 30), date(2026, 2, 2))
    assert [d["date"] for d in report["days"]] == [
        "2026-01-30",
        "2026-01-31",
        "2026-02-01",
        "2026-02-02",
    ]
    empty = report["days"][0]
    assert empty["checkins"] == 0 and empty["unlock_codes"] == 0
    assert set(empty["verdicts"]) == {"lock", "warn", "allow"}
    assert empty["verdicts"]["warn"] == {
        "total": 0,
        "by_reason": {},
        "by_country": {},
        "by_region": {},
        "by_distributor": {},
    }
    assert report["locked_now"]["total"] == 0
    from service.devices.stats import RangeError

    with pytest.raises(RangeError):
        stats.report(date(2025, 1, 1), date(2026, 2, 5))
    with pytest.raises(RangeError):
        stats.report(date(2026, 2, 2), date(2026, 2, 1))


def test_counters_are_sharded_beside_the_device_and_expire(app, checkin, redis):
    checkin(US, **CUBA)
    day = day_of(time.time())
    shard = keys.stats_shard(slot_tag(US), day)
    assert redis.hget(shard, "n") == "1"
    ttl = redis.ttl(shard)
    assert 399 * 86400 < ttl <= 401 * 86400
    from redis.crc import key_slot

    assert key_slot(shard.encode()) == key_slot(keys.device(US).encode())
    assert key_slot(keys.locked_index(slot_tag(US)).encode()) == key_slot(keys.device(US).encode())


def test_roll_up_sums_a_closed_day_into_one_key(app, checkin, redis, stats):
    store = StatsStore(redis)
    # Two devices in different slots, counted "yesterday".
    yesterday = time.time() // 86400 * 86400 - 43200  # midday yesterday
    devices = app.extensions["regionlock"].devices
    from service.devices.stats import checkin_counts
    from service.engine.model import Decision, DeviceState

    allow = Decision("allow", (), (), None, None, DeviceState())
    for imei in (US, HK):
        devices.record_checkin(
            imei,
            DeviceRecord(verdict="allow"),
            now=yesterday,
            policy_version=1,
            outcome=encode_outcome("allow", [], {}),
            facts={},
            counts=checkin_counts(allow),
        )
    day = day_of(yesterday)
    before = store.day_counts([day])[day]
    assert before == {"n": 2, "allow:t": 2}
    sweeper = StatsSweeper(store)
    midday = (time.time() // 86400) * 86400 + 43200  # today, whatever the time of the run
    assert sweeper.roll_up(midday) == [day]
    assert redis.exists(keys.stats_shard(slot_tag(US), day)) == 0
    assert store.day_counts([day])[day] == {"n": 2, "allow:t": 2}
    assert redis.ttl(keys.stats_day(day)) > 398 * 86400
    # Rolled through: the next round has nothing more to do for that day, and an earlier
    # day with no roll-up reads as empty without visiting its shards.
    assert sweeper.roll_up(midday) == []
    earlier = day_of(yesterday - 86400)
    redis.hset(keys.stats_shard(slot_tag(US), earlier), "n", 5)  # not a day ever counted
    assert store.day_counts([earlier])[earlier] == {}


# --- the locked index follows SPEC §14's definition ------------------------------------------


def current_verdicts(redis, now: float) -> dict[str, tuple[str, str]]:
    """IMEI -> (verdict, lock reason codes) of every device, from its record and override:
    the last decision with the override applied, as SPEC §14 defines it (recomputed here from
    the engine's apply_override, independently of the index)."""
    store = DeviceStore(redis)
    out = {}
    imeis = {keys.imei_of_device_key(k) for k in redis.scan_iter(keys.DEVICE_SCAN_PATTERN)}
    imeis |= {
        keys.imei_of_override_key(k) for k in redis.scan_iter(keys.DEVICE_OVERRIDE_SCAN_PATTERN)
    }
    from service.devices.stats import basis_decision

    for imei in imeis:
        basis = store.index_basis(imei)
        decision = apply_override(basis_decision(basis), decode_override(basis.override_raw), now)
        codes = ";".join(dict.fromkeys(r.code for r in decision.reasons if r.action == "lock"))
        out[imei] = (decision.verdict, codes)
    return out


def index_matches_records(redis):
    now = time.time()
    expected = {
        imei: codes
        for imei, (verdict, codes) in current_verdicts(redis, now).items()
        if verdict == "lock"
    }
    rows = {row.imei: row.reasons for row in StatsStore(redis).locked_rows()}
    assert rows == expected
    counts = StatsStore(redis).locked_counts()
    assert counts.get("t", 0) == len(expected)
    return rows


def test_locked_index_follows_every_kind_of_change(app, checkin, overrides, redis, tokens, client):
    store = StatsStore(redis)
    checkin(UNKNOWN, **CUBA)  # sanctions lock
    checkin(HK2, **US_NETWORK)  # gray import lock
    checkin(HK, **HK_NETWORK)  # allowed
    checkin(EU, **FR_NETWORK)  # allowed
    assert index_matches_records(redis) == {
        UNKNOWN: "sanctioned_region",
        HK2: "outside_territory",
    }
    since = store.locked_row(UNKNOWN).since

    # An agent's unlock lifts the gray lock at once, not the sanctions one.
    overrides.unlock(HK2, AGENT, "moved")
    assert HK2 not in index_matches_records(redis)
    # A manual lock puts an allowed device in at once.
    overrides.lock(HK, AGENT, "stolen")
    rows = index_matches_records(redis)
    assert rows[HK] == "manual_lock" and store.locked_row(HK).override == "lock"
    # A manual lock of a never-seen device is a lock too.
    overrides.lock(UNKNOWN2, AGENT, "reported stolen before activation")
    assert index_matches_records(redis)[UNKNOWN2] == "manual_lock"
    # Removing the override: back to what the policy said.
    overrides.remove(HK, AGENT)
    overrides.remove(HK2, AGENT)
    rows = index_matches_records(redis)
    assert HK not in rows and rows[HK2] == "outside_territory"
    # A check-in with the same verdict keeps locked_since.
    checkin(UNKNOWN, **CUBA)
    assert store.locked_row(UNKNOWN).since == since
    # A compliance unlock lifts sanctions; a check-in under it stays unlocked.
    overrides.unlock(UNKNOWN, COMPLIANCE, "investigated")
    assert UNKNOWN not in index_matches_records(redis)
    checkin(UNKNOWN, **CUBA)
    assert UNKNOWN not in index_matches_records(redis)
    # A device leaving the sanctioned place leaves the index at its check-in.
    overrides.remove(UNKNOWN, COMPLIANCE)
    assert index_matches_records(redis)[UNKNOWN] == "sanctioned_region"
    checkin(UNKNOWN, **US_NETWORK)
    assert UNKNOWN not in index_matches_records(redis)
    assert store.locked_counts() == {
        "t": 2,
        "r:outside_territory": 1,
        "r:manual_lock": 1,
        "g:US": 1,
        "c:US": 1,
        "d:hk-global": 1,
    }


def test_a_lapsing_unlock_leaves_the_index_by_the_sweeper_not_the_next_checkin(
    app, checkin, overrides, redis
):
    store = StatsStore(redis)
    checkin(HK2, **US_NETWORK)
    overrides.unlock(HK2, AGENT, "two seconds", expires_in_s=1)
    assert HK2 not in index_matches_records(redis)
    assert redis.zscore(keys.override_expiries(slot_tag(HK2)), HK2) is not None
    time.sleep(1.2)
    # Lapsed: the device is locked again by SPEC §14's definition, before any check-in.
    sweeper = StatsSweeper(store)
    # The sweeper's rounds visit only the shards marked due.
    assert redis.zscore(keys.OVERRIDE_EXPIRY_DUE, slot_tag(HK2)) is not None
    assert sweeper.lapse(full=False) == 1
    assert index_matches_records(redis)[HK2] == "outside_territory"
    assert redis.zscore(keys.override_expiries(slot_tag(HK2)), HK2) is None
    assert redis.zscore(keys.OVERRIDE_EXPIRY_DUE, slot_tag(HK2)) is None
    assert sweeper.lapse() == 0


def test_a_lost_due_mark_is_caught_by_the_full_pass(app, checkin, overrides, redis):
    checkin(HK2, **US_NETWORK)
    overrides.unlock(HK2, AGENT, "one second", expires_in_s=1)
    redis.delete(keys.OVERRIDE_EXPIRY_DUE)  # as if the mark after the script was lost
    time.sleep(1.2)
    sweeper = StatsSweeper(StatsStore(redis))
    assert sweeper.lapse(full=False) == 0
    sweeper.once()  # the first round is a full pass
    assert index_matches_records(redis)[HK2] == "outside_territory"


def test_a_publish_changes_the_index_at_each_devices_next_checkin(
    app, checkin, client, tokens, redis
):
    """SPEC §14: the index holds the last decision; a publish that would change a verdict
    does so at the device's next check-in under the new policy (docs/decisions.md)."""
    checkin(EU, **FR_NETWORK)
    checkin(UNKNOWN, **CUBA)
    assert set(index_matches_records(redis)) == {UNKNOWN}
    policy = client.get("/v1/policy", headers=bearer(tokens["editor"])).get_json()
    policy["rules"][0]["regions"].append("FR")
    response = client.post(
        "/v1/policy",
        json={"bundle": policy, "note": "FR", "expected_version": policy["version"], "force": True},
        headers=bearer(tokens["editor"]),
    )
    assert response.status_code == 201, response.get_json()
    # Not re-decided yet: the index is what the records say (their last decisions).
    assert set(index_matches_records(redis)) == {UNKNOWN}
    app.extensions["regionlock"].policies.refresh()
    checkin(EU, **FR_NETWORK)
    assert index_matches_records(redis) == {UNKNOWN: "sanctioned_region", EU: "sanctioned_region"}


def test_backfill_indexes_devices_recorded_before_the_index(app, checkin, overrides, redis):
    checkin(UNKNOWN, **CUBA)
    checkin(HK2, **US_NETWORK)
    overrides.lock(HK, AGENT, "stolen")
    # As if recorded before the index existed: no index, no counts, old policy_reasons.
    for tag in {slot_tag(i) for i in (UNKNOWN, HK2, HK)}:
        redis.delete(keys.locked_index(tag), keys.locked_counts(tag))
    assert list(StatsStore(redis).locked_rows()) == []
    visited = backfill(StatsStore(redis), DeviceStore(redis))
    assert visited == 3
    rows = index_matches_records(redis)
    assert rows == {UNKNOWN: "sanctioned_region", HK2: "outside_territory", HK: "manual_lock"}
    assert StatsStore(redis).locked_row(UNKNOWN).regions == "CU"


def test_entry_from_basis_agrees_with_the_checkin(app, checkin, overrides, redis):
    """The two ways an entry is computed (from the check-in's decision; from the stored basis
    with the override) agree, so an override change never rewrites an unchanged entry."""
    checkin(HK2, **US_NETWORK)
    stored = redis.hget(keys.locked_index(slot_tag(HK2)), HK2).split("\t", 1)[1]
    basis = DeviceStore(redis).index_basis(HK2)
    assert entry_from_basis(basis, None, time.time()) == stored


# --- the API ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("compliance", 200),
        ("editor", 200),
        ("auditor", 200),
        ("admin", 200),
        ("agent", 403),
        ("device", 403),
    ],
)
def test_stats_roles(client, tokens, role, status):
    assert client.get("/v1/stats", headers=bearer(tokens[role])).status_code == status
    assert client.get("/v1/stats").status_code == 401


@pytest.mark.parametrize(
    ("role", "status"),
    [("compliance", 200), ("auditor", 200), ("admin", 200), ("editor", 403), ("agent", 403)],
)
@pytest.mark.parametrize("path", ["/v1/reports/locked-devices", "/v1/reports/audit"])
def test_report_roles(client, tokens, role, status, path):
    response = client.get(path, headers=bearer(tokens[role]))
    assert response.status_code == status
    if status == 200:
        assert response.mimetype == "text/csv"
        response.get_data()


def test_stats_api_answers_the_contract(app, client, tokens, checkin):
    checkin(UNKNOWN, **CUBA)
    headers = bearer(tokens["auditor"])
    response = client.get(f"/v1/stats?from={today().isoformat()}", headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["from"] == body["to"] == today().isoformat()
    assert body["days"][0]["checkins"] == 1
    assert body["days"][0]["verdicts"]["lock"]["by_region"] == {"CU": 1}
    assert body["locked_now"]["total"] == 1
    assert body["locked_now"]["by_reason"] == {"sanctioned_region": 1}
    default = client.get("/v1/stats", headers=headers).get_json()
    assert len(default["days"]) == 30 and default["to"] == today().isoformat()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2024-01-01&to=2026-01-01", "from"),
        ("from=2026-02-02&to=2026-02-01", "from"),
        ("from=2026-13-01", "from"),
        ("to=yesterday", "to"),
        ("form=2026-01-01", "form"),
    ],
)
def test_stats_bad_ranges_are_422_naming_the_field(client, tokens, query, field):
    response = client.get(f"/v1/stats?{query}", headers=bearer(tokens["admin"]))
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


def test_locked_devices_export_is_filtered_streamed_csv_and_audited_first(
    app, client, tokens, checkin, overrides, redis
):
    import csv
    import io

    from tests.conftest import audit_entries

    checkin(UNKNOWN, **CUBA)
    checkin(HK2, **US_NETWORK)
    checkin(HK, **HK_NETWORK)
    overrides.lock(HK, AGENT, "=stolen")
    response = client.get("/v1/reports/locked-devices", headers=bearer(tokens["auditor"]))
    assert response.is_streamed
    # The audit entry is written before the first byte is sent.
    exported = [e for e in audit_entries(redis) if e["action"] == "report.locked_devices"]
    assert len(exported) == 1 and exported[0]["actor"] == "test-auditor"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert {
        r["imei"]: (r["reason"], r["region"], r["distributor"], r["override"]) for r in rows
    } == {
        UNKNOWN: ("sanctioned_region", "CU", "", ""),
        HK2: ("outside_territory", "US", "hk-global", ""),
        HK: ("manual_lock", "", "hk-global", "lock"),
    }
    assert all(r["locked_since"].endswith("Z") for r in rows)
    only = client.get(
        "/v1/reports/locked-devices?distributor=hk-global&reason=outside_territory",
        headers=bearer(tokens["compliance"]),
    ).get_data(as_text=True)
    assert [line.split(",")[0] for line in only.splitlines()] == ["imei", HK2]
    by_region = client.get(
        "/v1/reports/locked-devices?region=cu", headers=bearer(tokens["admin"])
    ).get_data(as_text=True)
    assert [line.split(",")[0] for line in by_region.splitlines()] == ["imei", UNKNOWN]
    last = [e for e in audit_entries(redis) if e["action"] == "report.locked_devices"][-1]
    assert '"region":"CU"' in last["detail"]
    bad = client.get("/v1/reports/locked-devices?regoin=CU", headers=bearer(tokens["admin"]))
    assert bad.status_code == 422 and "regoin" in bad.get_json()["error"]["fields"]


def test_audit_export_has_the_same_filters_as_the_audit_call(
    app, client, tokens, checkin, overrides, redis
):
    import csv
    import io

    overrides.lock(HK, AGENT, "stolen")
    overrides.lock(US, COMPLIANCE, "=1+1")
    response = client.get(f"/v1/reports/audit?imei={HK}", headers=bearer(tokens["compliance"]))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["action"], r["imei"], r["actor"]) for r in rows] == [
        ("device.lock", HK, "agent-ann")
    ]
    everything = client.get("/v1/reports/audit", headers=bearer(tokens["admin"]))
    rows = list(csv.DictReader(io.StringIO(everything.get_data(as_text=True))))
    # Newest first: the exports' own entries (this one, the one before), then the locks.
    assert [r["action"] for r in rows[:4]] == [
        "report.audit",
        "report.audit",
        "device.lock",
        "device.lock",
    ]
    assert rows[2]["detail"].startswith("{") and '"reason":"=1+1"' in rows[2]["detail"]
    limited = client.get(
        "/v1/reports/audit?limit=1&action=device.lock", headers=bearer(tokens["admin"])
    ).get_data(as_text=True)
    assert len(limited.splitlines()) == 2
    bad = client.get("/v1/reports/audit?limit=0", headers=bearer(tokens["admin"]))
    assert bad.status_code == 422 and "limit" in bad.get_json()["error"]["fields"]


def test_unlock_codes_and_bulk_unlocks_are_counted_by_role(app, client, tokens, checkin, stats):
    checkin(HK2, **US_NETWORK)
    checkin(HK, **US_NETWORK)
    issued = client.post(
        f"/v1/devices/{HK2}/unlock-code",
        json={"challenge": "0123456789", "reason": "on the phone", "valid_days": 3},
        headers=bearer(tokens["agent"]),
    )
    assert issued.status_code == 201, issued.get_json()
    bulk = client.post(
        "/v1/devices/unlock",
        json={"imeis": [HK], "reason": "recall"},
        headers=bearer(tokens["compliance"]),
    )
    assert bulk.status_code == 200 and bulk.get_json()["applied"] == 1
    day = stats.report(today(), today())["days"][0]
    assert day["unlock_codes"] == 1
    assert day["overrides"]["unlock"] == {"agent": 1, "compliance": 1}
    # Both left the index at once; the code's unlock is time-boxed (3 days): in the expiries.
    assert index_matches_records(client.application.extensions["regionlock"].redis) == {}


def test_the_checkin_builds_the_shard_names_keys_py_makes():
    from service.store.fleet_stats import CheckinCounts, checkin_args

    now = time.time()
    names, _ = checkin_args(US, CheckinCounts("allow", "t", ""), now)
    tag = slot_tag(US)
    assert names == [
        keys.stats_shard(tag, day_of(now)),
        keys.locked_index(tag),
        keys.locked_counts(tag),
    ]
    assert day_of(now) == datetime.now(UTC).strftime("%Y%m%d") or abs(time.time() % 86400) < 5


def test_cli_backfill_and_sweep(app, checkin, redis, redis_url, monkeypatch):
    from click.testing import CliRunner

    from service.cli import main

    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    checkin(UNKNOWN, **CUBA)
    redis.delete(keys.locked_index(slot_tag(UNKNOWN)), keys.locked_counts(slot_tag(UNKNOWN)))
    result = CliRunner().invoke(main, ["stats", "backfill"])
    assert result.exit_code == 0, result.output
    assert "devices visited 1, locked now 1" in result.output
    assert StatsStore(redis).locked_row(UNKNOWN).reasons == "sanctioned_region"
    result = CliRunner().invoke(main, ["stats", "sweep"])
    assert result.exit_code == 0 and "lapsed unlocks re-indexed 0" in result.output


def test_stats_off_keeps_nothing_and_everything_else_works(make_app, tokens, redis):
    app = make_app(stats="off")
    client = app.test_client()
    response = client.post(
        "/v1/checkin", json={"imei": UNKNOWN, **CUBA}, headers=bearer(tokens["device"])
    )
    assert response.status_code == 200 and response.get_json()["verdict"] == "lock"
    unlock = client.post(
        f"/v1/devices/{UNKNOWN}/unlock",
        json={"reason": "investigated", "expires_in_s": 60},
        headers=bearer(tokens["compliance"]),
    )
    assert unlock.status_code == 201, unlock.get_json()
    assert redis.keys("rl:stats*") == [] and redis.keys("rl:locked*") == []
    assert redis.keys("rl:override-exp*") == []
    entries = client.get(f"/v1/audit?imei={UNKNOWN}", headers=bearer(tokens["auditor"]))
    assert [e["action"] for e in entries.get_json()["entries"]] == ["device.unlock"]
