"""The stored device record and override: one typed form, read and written byte for byte as the
service has always stored them (service/store/records.py), against the real Redis."""

from __future__ import annotations

import pytest

from service.engine.model import DeviceState, Override, iso_utc
from service.store import keys
from service.store.devices import DeviceStore
from service.store.records import (
    DeviceRecord,
    HistoryLine,
    LastCheckin,
    RecordError,
    decode_history,
    decode_outcome,
    decode_override,
    encode_history,
    encode_outcome,
    encode_override,
)
from service.store.tokens import Principal
from tests.imeis import HK, HK2, UNKNOWN, US, imei

# Hashes as the check-in wrote them before DeviceRecord existed (captured from that code):
# an hk-global phone that activated at home, checked in twice more from home (one merged history
# entry, count 2) and then from France ...
LEGACY_HK = {
    "first_seen": "1700000000.25",
    "facts": '{"at":1700000300.0,"places":{"network":"FR"}}',
    "device": '{"model":"M2101K6G","firmware":"14.0.3"}',
    "verdict": "allow",
    "state": '{"bindings":{"gray-market":false}}',
    "distributor": "hk-global",
    "policy_version": "1",
    "activation": '{"at":"2023-11-14T22:13:20Z","places":{"ip":"HK","network":"HK","sim":"HK"},'
    '"in_territory":true}',
    "history": (
        '8ff6a1d379eaf7ff|1700000300.0|1|{"at":1700000300,"verdict":"allow","reasons":[],'
        '"places":{"network":"FR"},"policy_version":1}\n'
        '9e794cae74d6a7ea|1700000100.5|2|{"at":1700000200,"verdict":"allow","reasons":[],'
        '"places":{"network":"HK"},"policy_version":1}\n'
        '06192547c62d0d6c|1700000000.25|1|{"at":1700000000,"verdict":"allow","reasons":[],'
        '"places":{"ip":"HK","network":"HK","sim":"HK"},"policy_version":1}'
    ),
}
# ... and a us-carrier phone first seen in France: bound outside its territory, locked.
LEGACY_US = {
    "first_seen": "1700000010.25",
    "facts": '{"at":1700000400.25,"places":{"network":"US"}}',
    "verdict": "lock",
    "reasons": '[{"code":"outside_territory","rule":"gray-market","region":"US","signals":'
    '{"network":"US"},"distributor":"us-carrier","territories":["US","PR","GU","VI"],'
    '"bound":true}]',
    "policy_reasons": '[{"code":"outside_territory","rule":"gray-market",'
    '"kind":"distributor_territory","action":"lock"}]',
    "state": '{"bindings":{"gray-market":true}}',
    "distributor": "us-carrier",
    "policy_version": "1",
    "activation": '{"at":"2023-11-14T22:13:30Z","places":{"network":"FR"},"in_territory":false}',
    "history": (
        '7aa147c24155829f|1700000400.25|1|{"at":1700000400,"verdict":"lock","reasons":'
        '[{"code":"outside_territory","rule":"gray-market","region":"US"}],'
        '"places":{"network":"US"},"policy_version":1}\n'
        '71333243c8800898|1700000010.25|1|{"at":1700000010,"verdict":"lock","reasons":'
        '[{"code":"outside_territory","rule":"gray-market","region":"FR"}],'
        '"places":{"network":"FR"},"policy_version":1}'
    ),
}
# An override as OverrideService stored it before the codec existed.
LEGACY_UNLOCK = (
    '{"kind":"unlock","lifts":["distributor_territory"],"reason":"ok","ticket":"T-1",'
    '"actor":"agent-1","role":"agent","created_at":1700000800.25,"expires_at":1700004400.25}'
)


def _stored(record: DeviceRecord) -> dict:
    """The fields RECORD stores, as a decode_responses client reads them back."""
    out = {}
    for name, value in record.encode().items():
        if value is not None:
            out[name] = value.decode() if isinstance(value, bytes) else str(value)
    return out


@pytest.mark.parametrize("imei_, legacy", [(HK, LEGACY_HK), (US, LEGACY_US)])
def test_a_legacy_record_reads_typed_and_writes_back_the_same_bytes(redis, imei_, legacy):
    redis.hset(keys.device(imei_), mapping=legacy)
    record = DeviceStore(redis).snapshot(imei_).record
    assert record is not None
    # Written again through the codec, into another key: the very same hash, field order too.
    redis.hset(keys.device(UNKNOWN), mapping=_stored(record))
    assert list(redis.hgetall(keys.device(UNKNOWN)).items()) == list(legacy.items())


def test_a_legacy_record_decodes_to_typed_fields(redis):
    redis.hset(keys.device(HK), mapping=LEGACY_HK)
    redis.hset(keys.device(US), mapping=LEGACY_US)
    store = DeviceStore(redis)
    hk = store.snapshot(HK).record
    assert hk.first_seen == 1700000000.25
    assert hk.facts == LastCheckin(at=1700000300.0, places={"network": "FR"})
    assert hk.device == {"model": "M2101K6G", "firmware": "14.0.3"}
    assert (hk.verdict, hk.distributor, hk.policy_version) == ("allow", "hk-global", 1)
    assert hk.state == DeviceState(bindings={"gray-market": False})
    assert hk.activation["in_territory"] is True
    # Fields the hash does not hold (empty when written) read as their empty value.
    assert (hk.reasons, hk.observed, hk.policy_reasons, hk.lock_at) == ([], [], [], None)
    assert [line.count for line in hk.history] == [1, 2, 1]
    us = store.snapshot(US).record
    assert us.state.bindings == {"gray-market": True}
    assert us.policy_reasons == [
        {
            "code": "outside_territory",
            "rule": "gray-market",
            "kind": "distributor_territory",
            "action": "lock",
        }
    ]
    assert store.policy_reasons(US) == us.policy_reasons
    assert us.reasons[0]["territories"] == ["US", "PR", "GU", "VI"]


def test_merged_history_counts_read_from_a_legacy_record(redis):
    redis.hset(keys.device(HK), mapping=LEGACY_HK)
    decisions = DeviceStore(redis).decisions(HK)
    assert [(d["places"], d["count"]) for d in decisions] == [
        ({"network": "FR"}, 1),
        ({"network": "HK"}, 2),
        ({"ip": "HK", "network": "HK", "sim": "HK"}, 1),
    ]
    # The merged entry: since the first of its two check-ins, at the latest.
    assert decisions[1]["since"] == iso_utc(1700000100.5)
    assert decisions[1]["at"] == iso_utc(1700000200)
    assert DeviceStore(redis).decisions(HK, limit=1) == decisions[:1]


def test_a_checkin_stores_exactly_what_its_record_encodes(app, redis):
    """The hash a check-in leaves decodes to a record that encodes back to the same fields, and
    repeats of one outcome merge into one history line counting them."""
    checkin = app.extensions["regionlock"].checkin
    home = {"imei": HK, "sim": {"network": "45400"}, "model": "M2101K6G", "firmware": "14.0.3"}
    times = (1700000000.25, 1700000100.5, 1700000200.75)
    for now in times:
        checkin.decide(home, None, now)
    checkin.decide({**home, "sim": {"network": "20801"}}, None, 1700000300.0)  # France
    stored = redis.hgetall(keys.device(HK))
    record = app.extensions["regionlock"].devices.snapshot(HK).record
    assert _stored(record) == stored
    assert record.device == {"model": "M2101K6G", "firmware": "14.0.3"}
    assert record.facts == LastCheckin(at=1700000300.0, places={"network": "FR"})
    assert record.first_seen == times[0]
    newest, merged = record.history
    # Compact lines (issue 17.4): whole seconds.
    assert (newest.count, newest.since) == (1, "1700000300")
    assert (merged.count, merged.since, merged.at) == (3, "1700000000", int(times[-1]))
    assert stored["history"] == "1700000300|1|0|1|a;,,FR;\n1700000000|3|200|1|a;,,HK;"
    assert record.decisions()[1]["count"] == 3
    assert encode_history(record.history) == stored["history"]


def test_history_lines_round_trip():
    line = '9e794cae74d6a7ea|1700000100.5|2|{"at":1700000200,"verdict":"lock","note":"a|b"}'
    parsed = HistoryLine.parse(line)
    assert parsed == HistoryLine(
        "9e794cae74d6a7ea", "1700000100.5", 2, '{"at":1700000200,"verdict":"lock","note":"a|b"}'
    )
    assert parsed.encode() == line
    assert parsed.at == 1700000200
    assert parsed.decision() == {
        "at": iso_utc(1700000200),
        "verdict": "lock",
        "note": "a|b",
        "since": iso_utc(1700000100.5),
        "count": 2,
    }
    # An integer `since` (epoch seconds written without a fraction) keeps its text.
    assert HistoryLine.parse("s|1700000000|1|{}").encode() == "s|1700000000|1|{}"
    assert decode_history(None) == () and encode_history(()) == ""
    assert encode_history(decode_history(LEGACY_HK["history"])) == LEGACY_HK["history"]


def test_compact_history_lines_read_as_the_json_ones_did():
    line = "1700000100|2|100|7|l;HK,HK+MO,,US;T:gray-market:HK,S:sanctions"
    parsed = HistoryLine.parse(line)
    assert parsed.encode() == line
    assert parsed.at == 1700000200
    assert parsed.decision() == {
        "at": iso_utc(1700000200),
        "since": iso_utc(1700000100),
        "count": 2,
        "verdict": "lock",
        "policy_version": 7,
        "places": {"ip": "HK", "gps": ["HK", "MO"], "sim": "US"},
        "reasons": [
            {"code": "outside_territory", "rule": "gray-market", "region": "HK"},
            {"code": "sanctioned_region", "rule": "sanctions"},
        ],
    }
    # A line of each form in one history (a record written before issue 17 keeps its lines).
    mixed = line + "\n" + LEGACY_HK["history"]
    assert encode_history(decode_history(mixed)) == mixed


@pytest.mark.parametrize(
    ("verdict", "reasons", "places"),
    [
        ("allow", [], {}),
        ("allow", [], {"network": "FR"}),
        ("warn", [{"code": "grace_period", "rule": "r.1", "region": "UA-43"}], {"ip": "UA-43"}),
        ("lock", [{"code": "manual_lock"}], {"ip": "HK", "gps": ["HK", "MO"]}),
        ("allow", [{"code": "override_unlock", "rule": "x"}], {"sim": "US"}),
        ("lock", [{"code": "new_code_from_a_later_engine", "region": "CU"}], {"gps": "CU"}),
        # Not the engine's characters, or a list of one place: kept as JSON, still exact.
        ("lock", [{"code": "odd", "rule": "a;b"}], {"ip": "HK"}),
        ("lock", [], {"gps": ["HK"]}),
        ("lock", [], {"satellite": "HK"}),
    ],
)
def test_outcomes_encode_and_decode_exactly(verdict, reasons, places):
    text = encode_outcome(verdict, reasons, places)
    assert "|" not in text.split("=", 1)[0] and "\n" not in text
    assert decode_outcome(text) == (verdict, reasons, places)
    line = HistoryLine.parse(f"1700000000|1|0|3|{text}")
    assert line.decision()["reasons"] == reasons and line.decision()["places"] == places


def test_empty_fields_are_not_stored():
    assert set(DeviceRecord().encode().values()) == {None}
    assert DeviceRecord.decode({}) == DeviceRecord()
    record = DeviceRecord(device={}, reasons=[], lock_at="", distributor="", state=DeviceState())
    assert all(value is None for value in record.encode().values())
    # Version 0 is a version, not an empty value.
    assert DeviceRecord(policy_version=0).encode()["policy_version"] == 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("state", "not json"),
        ("facts", '{"places":{"network":"FR"}}'),
        ("facts", '{"at":1,"places":["FR"]}'),
        ("reasons", "[{"),
        ("first_seen", "yesterday"),
        ("history", "no pipes here"),
    ],
)
def test_a_damaged_field_is_a_record_error_naming_it(redis, field, value):
    redis.hset(keys.device(HK), mapping={**LEGACY_HK, field: value})
    with pytest.raises(RecordError, match=field):
        DeviceRecord.decode(redis.hgetall(keys.device(HK))).decisions()


def test_a_legacy_override_reads_typed_and_writes_back_the_same_bytes(redis):
    redis.set(keys.device_override(US), LEGACY_UNLOCK)
    override = DeviceStore(redis).override(US)
    assert override == Override(
        kind="unlock",
        lifts=frozenset({"distributor_territory"}),
        reason="ok",
        ticket="T-1",
        actor="agent-1",
        role="agent",
        created_at=1700000800.25,
        expires_at=1700004400.25,
    )
    assert encode_override(override).decode() == LEGACY_UNLOCK
    # Only the kind is required (older benchmarks wrote kind, lifts and reason).
    assert decode_override('{"kind":"lock"}') == Override(kind="lock")
    assert decode_override(None) is None
    with pytest.raises(RecordError, match="override"):
        decode_override('{"lifts":[]}')


def test_override_service_stores_the_legacy_bytes(app, redis):
    from service.devices.overrides import OverrideService

    rl = app.extensions["regionlock"]
    OverrideService(rl.devices, rl.audit).unlock(
        US, Principal("agent-1", "agent"), "ok", "T-1", 3600, now=1700000800.25
    )
    assert redis.get(keys.device_override(US)) == LEGACY_UNLOCK


def test_field_batches_visit_every_device_once_in_bounded_batches(redis):
    store = DeviceStore(redis)
    phones = [imei(f"4901542011{i:04d}") for i in range(23)]
    for i, phone in enumerate(phones):
        redis.hset(keys.device(phone), mapping={"verdict": "lock" if i % 2 else "allow"})
    redis.set(keys.device_override(phones[0]), LEGACY_UNLOCK)  # not a device record
    redis.set(keys.device_override(HK2), '{"kind":"lock"}')  # an override without a record
    batches = list(store.field_batches(("verdict", "facts"), batch=5, scan_count=3))
    assert all(1 <= len(rows) <= 5 for rows in batches)
    seen = [(imei_, values) for rows in batches for imei_, values in rows]
    assert sorted(seen) == sorted(
        (phone, ["lock" if i % 2 else "allow", None]) for i, phone in enumerate(phones)
    )
    overrides = store.overrides_by_imei(batch=1, scan_count=1)
    assert overrides == {phones[0]: LEGACY_UNLOCK, HK2: '{"kind":"lock"}'}
