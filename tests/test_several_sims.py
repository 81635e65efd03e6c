"""SPEC §9: devices with several IMEIs and SIMs, end to end (real Redis) and in the engine."""

from __future__ import annotations

import orjson
import pytest

from service.engine.cases import parse_cases, run_case
from service.engine.compiler import compile_bundle
from service.engine.loading import load_bundle_dir
from service.engine.model import Facts, Place
from service.store import keys
from service.store.records import LastCheckin
from tests.conftest import audit_entries, bearer
from tests.imeis import EU, HK, UNKNOWN, UNKNOWN2, imei

ALIAS = imei("35693803" + "564380")  # no distributor
ALIAS2 = imei("35693803" + "564381")
BAD_LUHN = ALIAS[:-1] + str((int(ALIAS[-1]) + 1) % 10)


@pytest.fixture
def post(client, tokens):
    def run(body, expect=200, ip="127.0.0.1"):
        response = client.post(
            "/v1/checkin",
            json=body,
            headers=bearer(tokens["device"]),
            environ_base={"REMOTE_ADDR": ip},
        )
        assert response.status_code == expect, response.get_json()
        return response.get_json()

    return run


@pytest.fixture
def agent(client, tokens):
    def run(method, path, expect, token="agent", **kwargs):
        response = client.open(path, method=method, headers=bearer(tokens[token]), **kwargs)
        if expect == 204:
            assert response.status_code == 204
            return None
        assert response.status_code == expect, response.get_json()
        return response.get_json()

    return run


# --- validation paths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"imeis": ["123"]}, "imeis.0"),
        ({"imeis": [ALIAS, BAD_LUHN]}, "imeis.1"),
        ({"imeis": [ALIAS, "abc"]}, "imeis.1"),
        ({"imeis": [ALIAS, ALIAS2, UNKNOWN2, EU]}, "imeis"),
        ({"imeis": [ALIAS, ALIAS2, UNKNOWN2, EU, UNKNOWN]}, "imeis"),
        ({"imeis": "x"}, "imeis"),
        ({"sims": [{"network": "1"}]}, "sims.0.network"),
        ({"sims": [{"slot": 1}, {"imsi": "12"}]}, "sims.1.imsi"),
        ({"sims": [{"iccid": "8953010000000000001"}]}, "sims.0.iccid"),
        ({"sims": [{"slot": 5}]}, "sims.0.slot"),
        ({"sims": [{"slot": 0}]}, "sims.0.slot"),
        ({"sims": [{"slot": "1"}]}, "sims.0.slot"),
        ({"sims": [{"slot": 1}, {"slot": 1}]}, "sims.1.slot"),
        ({"sims": [{}, {}, {}, {}, {}]}, "sims"),
        ({"sims": {"slot": 1}}, "sims"),
    ],
)
def test_bad_entries_are_named_by_path(post, redis, extra, path):
    answer = post({"imei": UNKNOWN, **extra}, expect=422)
    assert path in answer["error"]["fields"], answer
    assert not redis.exists(keys.device(UNKNOWN))  # nothing recorded


def test_primary_and_duplicates_are_ignored_and_separators_stripped(post, agent):
    spaced = f"{ALIAS[:8]}-{ALIAS[8:]}"
    post({"imei": UNKNOWN, "imeis": [UNKNOWN, spaced, ALIAS, ALIAS2]})
    assert agent("GET", f"/v1/devices/{UNKNOWN}", 200)["imeis"] == [UNKNOWN, ALIAS, ALIAS2]


def test_old_single_sim_body_is_answered_and_stored_as_before(post, redis):
    answer = post({"imei": UNKNOWN, "sim": {"imsi": "368010123456789", "network": "36801"}})
    assert answer["reasons"][0]["signals"] == {"network": "CU"}
    facts = LastCheckin.decode(redis.hget(keys.device(UNKNOWN), "facts"))
    assert facts.places == {"network": "CU", "sim": "CU"}
    assert redis.hget(keys.device(UNKNOWN), "imeis") is None
    assert not redis.keys("rl:alias:*")
    assert orjson.loads(redis.hget(keys.device(UNKNOWN), "device")) == {"sim_operator": "36801"}


# --- evidence from several SIMs -------------------------------------------------------------


def test_any_sim_in_a_sanctioned_region_locks_and_every_place_is_shown(post, redis):
    answer = post(
        {
            "imei": UNKNOWN,
            "sim": {"network": "36801"},  # Cuba
            "sims": [{"slot": 2, "network": "20801", "imsi": "208011234567890"}],  # France
        }
    )
    assert answer["verdict"] == "lock"
    [reason] = answer["reasons"]
    assert reason["region"] == "CU" and reason["signals"] == {"network": ["CU", "FR"]}
    stored = LastCheckin.decode(redis.hget(keys.device(UNKNOWN), "facts")).places
    assert stored == {"network": ["CU", "FR"], "sim": "FR"}


def test_two_sims_on_the_same_network_give_one_place(post):
    answer = post({"imei": UNKNOWN, "sims": [{"network": "36801"}, {"network": "36801"}]})
    assert answer["reasons"][0]["signals"] == {"network": "CU"}


def test_outside_territory_only_when_no_sim_is_inside(post):
    # HK phone with one SIM on a Hong Kong network: in territory, allowed to travel later.
    home = post({"imei": HK, "sims": [{"network": "45400"}, {"network": "20801"}]})
    assert home["verdict"] == "allow"


def test_outside_territory_when_every_sim_is_outside(post):
    away = post({"imei": HK, "sims": [{"network": "310260"}, {"network": "20801"}]})
    assert away["verdict"] == "lock"
    [reason] = away["reasons"]
    assert reason["code"] == "outside_territory"
    assert reason["signals"] == {"network": ["US", "FR"]}


def _engine_policy(signals):
    return compile_bundle(
        {
            "name": "t",
            "rules": [
                {
                    "id": "sanctions",
                    "type": "sanctioned_region",
                    "regions": ["CU"],
                    "signals": signals,
                    "min_signals": 1,
                    "action": "lock",
                },
                {
                    "id": "gray",
                    "type": "distributor_territory",
                    "signals": signals,
                    "min_signals": 1,
                    "action": "lock",
                    "bind": "every_checkin",
                },
            ],
            "distributors": [
                {
                    "id": "hk",
                    "name": "HK",
                    "territories": ["HK"],
                    "allocations": [{"tac": HK[:8]}],
                }
            ],
        }
    )


def test_engine_sim_signal_with_several_places():
    policy = _engine_policy(["sim"])
    several = (Place("FR"), Place("CU"))
    decision = policy.decide(Facts(HK, {"sim": several}, 0.0))
    assert [r.code for r in decision.reasons] == ["sanctioned_region", "outside_territory"]
    assert decision.reasons[0].to_dict()["signals"] == {"sim": ["FR", "CU"]}
    inside = policy.decide(Facts(HK, {"sim": (Place("FR"), Place("HK"))}, 0.0))
    assert inside.verdict == "allow"


def test_distributor_by_primary_then_first_allocated_alias():
    policy = _engine_policy(["ip"])
    assert policy.distributor_of(UNKNOWN, (ALIAS, HK)) == "hk"
    assert policy.distributor_of(HK, (UNKNOWN,)) == "hk"
    assert policy.distributor_of(UNKNOWN, (ALIAS,)) is None
    decision = policy.decide(Facts(UNKNOWN, {"ip": Place("FR")}, 0.0, aliases=(ALIAS, HK)))
    assert decision.distributor == "hk" and decision.verdict == "lock"


def test_distributor_by_alias_end_to_end(post, agent):
    answer = post({"imei": UNKNOWN, "imeis": [ALIAS, HK], "sims": [{"network": "20801"}]})
    assert answer["verdict"] == "lock"
    assert answer["reasons"][0]["distributor"] == "hk-global"
    document = agent("GET", f"/v1/devices/{UNKNOWN}", 200)
    assert document["distributor"]["id"] == "hk-global"


def test_case_file_with_several_sims_and_aliases():
    policy = compile_bundle(load_bundle_dir("policies"))
    [case] = parse_cases(
        {
            "cases": [
                {
                    "name": "two SIMs, one in Cuba",
                    "imei": UNKNOWN,
                    "imeis": [HK],
                    "checkins": [
                        {
                            "places": {"network": ["FR", "CU"], "sim": ["HK", "HK"]},
                            "expect": {
                                "verdict": "lock",
                                "reasons": ["sanctioned_region", "outside_territory"],
                                "distributor": "hk-global",
                            },
                        }
                    ],
                }
            ]
        },
        "t.yaml",
    )
    result = run_case(policy, case)
    assert result.passed, result.messages


# --- identity: aliases end to end -----------------------------------------------------------


def test_alias_reaches_the_device_everywhere(post, agent, redis):
    post({"imei": UNKNOWN, "imeis": [ALIAS], "sim": {"network": "36801"}})
    by_alias = agent("GET", f"/v1/devices/{ALIAS}", 200)
    assert by_alias["imei"] == UNKNOWN and by_alias["imeis"] == [UNKNOWN, ALIAS]
    assert by_alias["verdict"] == "lock"

    agent("POST", f"/v1/devices/{ALIAS}/lock", 201, json={"reason": "stolen"})
    assert redis.exists(keys.device_override(UNKNOWN))
    assert not redis.exists(keys.device_override(ALIAS))
    agent("DELETE", f"/v1/devices/{ALIAS}/override", 204)
    # A compliance officer's unlock by alias lifts the sanctions lock of the primary.
    result = agent(
        "POST", f"/v1/devices/{ALIAS}/unlock", 201, token="compliance", json={"reason": "ok"}
    )
    assert result["imei"] == UNKNOWN
    assert post({"imei": UNKNOWN, "sim": {"network": "36801"}})["verdict"] == "allow"
    entries = audit_entries(redis)
    assert [e["imei"] for e in entries] == [UNKNOWN, UNKNOWN, UNKNOWN]
    assert ALIAS not in {e["imei"] for e in entries}


def test_console_search_by_alias_opens_the_device(post, app, tokens):
    from tests.test_console import Console

    post({"imei": UNKNOWN, "imeis": [ALIAS]})
    post({"imei": UNKNOWN2, "imeis": [ALIAS2]})
    post({"imei": EU, "imeis": [ALIAS2]})
    console = Console(app.test_client())
    assert console.sign_in(tokens["agent"]).status_code == 302
    response = console.get(f"/console/devices?imei={ALIAS}")
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/console/devices/{UNKNOWN}")
    page = console.get(f"/console/devices/{UNKNOWN}").get_data(as_text=True)
    assert ALIAS in page and "(primary)" in page
    ambiguous = console.get(f"/console/devices?imei={ALIAS2}")
    assert ambiguous.status_code == 422
    text = ambiguous.get_data(as_text=True)
    assert EU in text and UNKNOWN2 in text
    shared = console.get(f"/console/devices/{EU}").get_data(as_text=True)
    assert "Cloned or reused IMEI" in shared


def test_dropped_alias_no_longer_reaches_the_device(post, agent):
    post({"imei": UNKNOWN, "imeis": [ALIAS]})
    post({"imei": UNKNOWN, "imeis": []})
    agent("GET", f"/v1/devices/{ALIAS}", 404)
    # Old firmware (no imeis at all) leaves the stored aliases as they are.
    post({"imei": UNKNOWN, "imeis": [ALIAS]})
    post({"imei": UNKNOWN})
    assert agent("GET", f"/v1/devices/{ALIAS}", 200)["imei"] == UNKNOWN


def test_alias_of_several_devices_is_ambiguous(post, agent):
    post({"imei": UNKNOWN, "imeis": [ALIAS]})
    answer = post({"imei": UNKNOWN2, "imeis": [ALIAS]})
    assert answer["imei"] == UNKNOWN2  # the check-in still answers
    error = agent("GET", f"/v1/devices/{ALIAS}", 409)["error"]
    assert error["code"] == "ambiguous_imei"
    assert error["primaries"] == sorted([UNKNOWN, UNKNOWN2])
    agent("POST", f"/v1/devices/{ALIAS}/lock", 409, json={"reason": "x"})
    for primary, other in ((UNKNOWN, UNKNOWN2), (UNKNOWN2, UNKNOWN)):
        document = agent("GET", f"/v1/devices/{primary}", 200)
        assert document["shared_imeis"] == [ALIAS]
        assert document["shared_with"] == {ALIAS: [other]}


def test_primary_claimed_as_alias_is_shared_not_taken_over(post, agent):
    post({"imei": UNKNOWN, "sim": {"network": "20801"}})
    post({"imei": UNKNOWN2, "imeis": [UNKNOWN], "sim": {"network": "36801"}})
    # The primary still reaches its own device.
    assert agent("GET", f"/v1/devices/{UNKNOWN}", 200)["verdict"] == "allow"
    assert agent("GET", f"/v1/devices/{UNKNOWN}", 200)["shared_imeis"] == [UNKNOWN]
    assert agent("GET", f"/v1/devices/{UNKNOWN2}", 200)["shared_imeis"] == [UNKNOWN]


def test_new_device_whose_primary_is_someone_elses_alias(post, agent):
    post({"imei": UNKNOWN2, "imeis": [UNKNOWN]})
    post({"imei": UNKNOWN})  # old firmware, first check-in
    assert agent("GET", f"/v1/devices/{UNKNOWN}", 200)["shared_imeis"] == [UNKNOWN]
    assert agent("GET", f"/v1/devices/{UNKNOWN2}", 200)["shared_with"] == {UNKNOWN: [UNKNOWN]}


def test_openapi_documents_the_new_fields(client):
    spec = client.get("/v1/openapi.json").get_json()
    checkin = spec["components"]["schemas"]["Checkin"]["properties"]
    assert {"imeis", "sims"} <= set(checkin)
    device = spec["components"]["schemas"]["Device"]["properties"]
    assert {"imeis", "shared_imeis"} <= set(device)
    signals = spec["components"]["schemas"]["Reason"]["properties"]["signals"]
    assert "oneOf" in signals["additionalProperties"]


def test_simulation_replays_several_places_aliases_and_old_records(post, client, tokens, redis):
    import copy

    seed = load_bundle_dir("policies")
    # Two SIMs (France, Cuba) on a device whose only allocated IMEI is its alias HK.
    post({"imei": UNKNOWN, "imeis": [HK], "sims": [{"network": "20801"}, {"network": "36801"}]})
    # A record written before SPEC §9 (places as plain strings) still replays.
    redis.hset(
        keys.device(UNKNOWN2), "facts", orjson.dumps({"at": 1.0, "places": {"network": "CU"}})
    )
    candidate = copy.deepcopy(seed)
    candidate["rules"] = [r for r in candidate["rules"] if r["type"] != "sanctioned_region"]
    response = client.post(
        "/v1/policy/simulate", json={"bundle": candidate}, headers=bearer(tokens["editor"])
    )
    report = response.get_json()
    assert response.status_code == 200, report
    assert report["evaluated"] == 2 and report["skipped"] == 0
    # UNKNOWN stays locked by the gray-market rule (distributor found by its alias, neither SIM
    # in Hong Kong); UNKNOWN2, an unknown device, is only locked by sanctions.
    assert report["changes"] == {"lock->allow": 1}
    assert report["samples"]["lock->allow"] == [UNKNOWN2]


def test_signature_verifies_with_several_places(post, client, tokens):
    from tests.test_signing import firmware_verifies

    answer = post(
        {"imei": UNKNOWN, "imeis": [ALIAS], "sims": [{"network": "36801"}, {"network": "20801"}]}
    )
    assert answer["reasons"][0]["signals"] == {"network": ["CU", "FR"]}
    keys_doc = client.get("/v1/keys", headers=bearer(tokens["device"])).get_json()
    jwks = {jwk["kid"]: jwk for jwk in keys_doc["keys"]}
    assert firmware_verifies(answer, jwks)
    assert not firmware_verifies(
        {**answer, "reasons": [{**answer["reasons"][0], "signals": {}}]}, jwks
    )


def test_bulk_unlock_by_alias_acts_on_the_device(post, agent, redis):
    """A shipment list or ticket may carry a phone's second IMEI: the bulk unlock reaches the
    device (its primary), as the single-device calls do."""
    post({"imei": UNKNOWN, "imeis": [ALIAS], "sim": {"network": "20801"}})
    post({"imei": UNKNOWN2, "imeis": [EU]})
    post({"imei": HK, "imeis": [EU]})  # EU is now another IMEI of two devices
    body = {"imeis": [ALIAS, UNKNOWN, EU], "reason": "refurbished stock"}
    answer = agent("POST", "/v1/devices/unlock", 200, token="compliance", json=body)
    rows = {row["imei"]: row for row in answer["results"]}
    assert rows[ALIAS]["status"] == "applied" and rows[ALIAS]["device"] == UNKNOWN
    assert rows[UNKNOWN]["status"] == "unchanged" and rows[UNKNOWN]["error"] == "duplicate"
    assert rows[EU]["status"] == "refused" and "ambiguous_imei" in rows[EU]["error"]
    assert redis.get(keys.device_override(UNKNOWN)) is not None
    assert redis.get(keys.device_override(ALIAS)) is None
    [entry] = audit_entries(redis)
    assert (entry["action"], entry["imei"]) == ("device.bulk_unlock", UNKNOWN)
