"""Staged rollout, exceptions and carrier channels (SPEC §12.1-§12.3): the engine, the bundle's
checks, the check-in, unlocks, the impact simulation and the safety brake."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.compiler import compile_bundle
from service.engine.loading import load_bundle_dir
from service.engine.model import Facts, Override, Place, apply_override
from service.engine.rollout import ExceptionIndex, in_rollout, rollout_bucket
from service.engine.validation import BundleError, validate_bundle
from tests.conftest import bearer
from tests.imeis import HK, imei

ROOT = Path(__file__).resolve().parent.parent
SEED = load_bundle_dir(ROOT / "policies")

ORANGE = imei("86769105" + "000001")  # orange-fr in the seed: networks 20801
MI = imei("86472305" + "000004")  # mi-mobile-cn in the seed


def bucket_by_hand(rule_id: str, primary_imei: str) -> int:
    """SPEC §12.1's bucket, computed another way than the engine (hex digits, not bytes)."""
    return int(hashlib.sha256(f"{rule_id}:{primary_imei}".encode()).hexdigest()[:8], 16) % 100


def unknown_imei(n: int) -> str:
    return imei(f"49015420{n:06d}")


# --- staged rollout: the hash ------------------------------------------------------------------

#: (rule id, IMEI) pairs whose bucket the engine must compute as SPEC §12.1 says.
VECTOR_INPUTS = [
    ("gray-market", HK),
    ("sanctions", HK),
    ("mi-mobile-sims", imei("86472305" + "000004")),
    ("mi-mobile-sims", imei("86472305" + "000000")),
    ("r", "490154203237518"),
]


@pytest.mark.parametrize(("rule_id", "device"), VECTOR_INPUTS)
def test_bucket_is_the_spec_formula(rule_id, device):
    assert rollout_bucket(rule_id, device) == bucket_by_hand(rule_id, device)
    for percent in (1, 9, 10, 50, 99, 100):
        assert in_rollout(rule_id, device, percent) == (bucket_by_hand(rule_id, device) < percent)


def test_known_vectors():
    # Published for firmware teams: 864723050000043 is in mi-mobile-sims' 10 % (bucket 9),
    # 864723050000001 is not (bucket 29); see policies/cases/fleet-operations.yaml.
    assert bucket_by_hand("mi-mobile-sims", "864723050000043") == 9
    assert bucket_by_hand("mi-mobile-sims", "864723050000001") == 29
    assert rollout_bucket("mi-mobile-sims", "864723050000043") == 9
    assert rollout_bucket("mi-mobile-sims", "864723050000001") == 29


@settings(max_examples=200, deadline=None)
@given(
    rule_id=st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True),
    body=st.text("0123456789", min_size=14, max_size=14),
    p=st.integers(1, 100),
    q=st.integers(1, 100),
)
def test_a_device_in_at_p_stays_in_at_any_larger_q(rule_id, body, p, q):
    device = imei(body)
    low, high = sorted((p, q))
    if in_rollout(rule_id, device, low):
        assert in_rollout(rule_id, device, high)
    assert in_rollout(rule_id, device, 100)


def test_rollout_shares_are_close_to_the_percentage():
    devices = [unknown_imei(i) for i in range(5000)]
    for percent in (1, 10, 50):
        share = sum(in_rollout("new-rule", d, percent) for d in devices) / len(devices)
        assert abs(share - percent / 100) < 0.02


# --- staged rollout: decisions -----------------------------------------------------------------


def lock_in_russia(**extra) -> dict:
    """The seed bundle with a sanctions-type lock rule on Russia (a new rule, staged)."""
    bundle = copy.deepcopy(SEED)
    rule = {
        "id": "ru-lock",
        "type": "sanctioned_region",
        "regions": ["RU"],
        "signals": ["network"],
        **extra,
    }
    bundle["rules"].append(rule)
    return bundle


def test_outside_the_rollout_a_hit_is_observed_and_held_back():
    policy = compile_bundle(lock_in_russia(rollout_percent=10))
    devices = [unknown_imei(i) for i in range(300)]
    inside = [d for d in devices if bucket_by_hand("ru-lock", d) < 10]
    assert 10 < len(inside) < 60
    for device in devices:
        decision = policy.decide(Facts(device, {"network": Place("RU")}, 0.0))
        if device in inside:
            assert decision.verdict == "lock"
            assert [r.code for r in decision.reasons] == ["sanctioned_region"]
            assert decision.observed == ()
            assert "held_back" not in decision.reasons[0].to_dict()
        else:
            assert decision.verdict == "allow" and decision.reasons == ()
            [seen] = decision.observed
            assert seen.to_dict() == {
                "code": "sanctioned_region",
                "rule": "ru-lock",
                "region": "RU",
                "signals": {"network": "RU"},
                "held_back": True,
            }


def test_full_rollout_decides_as_without_the_field():
    with_field = compile_bundle(lock_in_russia(rollout_percent=100))
    without = compile_bundle(lock_in_russia())
    assert "rollout_percent" not in without.bundle["rules"][-1]  # absent stays absent
    for i in range(50):
        facts = Facts(unknown_imei(i), {"network": Place("RU")}, 0.0)
        assert with_field.decide(facts) == without.decide(facts)


def test_an_observe_rule_is_not_marked_held_back():
    policy = compile_bundle(lock_in_russia(rollout_percent=1, mode="observe"))
    for i in range(30):
        [seen] = policy.decide(Facts(unknown_imei(i), {"network": Place("RU")}, 0.0)).observed
        assert not seen.held_back


def test_rollout_uses_the_primary_imei_not_the_aliases():
    policy = compile_bundle(lock_in_russia(rollout_percent=50))
    for i in range(40):
        primary, alias = unknown_imei(i), unknown_imei(1000 + i)
        decision = policy.decide(Facts(primary, {"network": Place("RU")}, 0.0, aliases=(alias,)))
        assert (decision.verdict == "lock") == (bucket_by_hand("ru-lock", primary) < 50)


def test_held_back_grace_keeps_its_first_hit():
    # Held back is evaluated like observe mode: the grace period still starts.
    bundle = copy.deepcopy(SEED)
    bundle["rules"][1]["grace_days"] = 7
    bundle["rules"][1]["rollout_percent"] = 1
    policy = compile_bundle(bundle)
    out = next(
        d
        for d in (imei(f"35387923{n:06d}") for n in range(100))
        if not in_rollout("gray-market", d, 1)
    )
    decision = policy.decide(Facts(out, {"ip": Place("DE")}, 1000.0))
    assert decision.verdict == "allow"
    [seen] = decision.observed
    assert seen.code == "grace_period" and seen.held_back
    assert decision.state.first_hits == {"gray-market": 1000.0}


# --- exceptions --------------------------------------------------------------------------------


def with_exceptions(*entries) -> dict:
    bundle = copy.deepcopy(SEED)
    bundle["exceptions"] = list(entries)
    return bundle


def test_an_exception_lifts_a_territory_lock_and_reports_it():
    policy = compile_bundle(with_exceptions({"imei": HK, "note": "test phone"}))
    decision = policy.decide(Facts(HK, {"ip": Place("DE")}, 0.0))
    assert decision.verdict == "allow" and decision.reasons == ()
    [seen] = decision.observed
    assert seen.to_dict()["lifted"] == ["exception"]
    assert seen.code == "outside_territory" and seen.rule == "gray-market"
    # Another device of the same distributor is still locked.
    other = imei("35387923" + "000001")
    assert policy.decide(Facts(other, {"ip": Place("DE")}, 0.0)).verdict == "lock"


def test_an_exception_never_lifts_sanctions():
    policy = compile_bundle(with_exceptions({"tac": HK[:8], "note": "all of them"}))
    decision = policy.decide(Facts(HK, {"ip": Place("CU")}, 0.0))
    assert decision.verdict == "lock"
    assert [r.code for r in decision.reasons] == ["sanctioned_region"]
    assert [r.to_dict().get("lifted") for r in decision.observed] == [["exception"]]


def test_an_exception_by_alias_and_by_range():
    policy = compile_bundle(
        with_exceptions(
            {"from": "35387923000000", "to": "35387923000099", "note": "demo units"},
        )
    )
    inside = imei("35387923" + "000050")
    assert policy.decide(Facts(inside, {"ip": Place("DE")}, 0.0)).verdict == "allow"
    assert policy.decide(Facts(HK, {"ip": Place("DE")}, 0.0)).verdict == "lock"
    # The device names an excepted IMEI as its other one: excepted too.
    both = policy.decide(Facts(HK, {"ip": Place("DE")}, 0.0, aliases=(inside,)))
    assert both.verdict == "allow"


def test_exceptions_lift_only_the_kinds_they_list():
    carrier_only = compile_bundle(
        with_exceptions({"imei": ORANGE, "lifts": ["carrier_network"], "note": "SIM tests"})
    )
    abroad_foreign = Facts(ORANGE, {"ip": Place("US")}, 0.0, sim_operators=("310260",))
    decision = carrier_only.decide(abroad_foreign)
    assert [r.code for r in decision.reasons] == ["outside_territory"]
    assert [(r.code, r.lifted) for r in decision.observed] == [("foreign_sim", ("exception",))]


@settings(max_examples=150, deadline=None)
@given(
    entries=st.lists(
        st.tuples(
            st.integers(0, 40),
            st.integers(0, 40),
            st.sets(st.sampled_from(["distributor_territory", "carrier_network"]), min_size=1),
        ),
        max_size=8,
    ),
    probes=st.lists(st.integers(0, 45), max_size=20),
)
def test_exception_ranges_give_the_union_of_the_overlapping_entries(entries, probes):
    base = 35387923_000000
    bundle_entries = [
        {"from": f"{base + min(a, b):014d}", "to": f"{base + max(a, b):014d}", "lifts": sorted(k)}
        for a, b, k in entries
    ]
    index = ExceptionIndex(bundle_entries)
    for n in probes:
        expected: set[str] = set()
        for a, b, kinds in entries:
            if min(a, b) <= n <= max(a, b):
                expected |= kinds
        assert index.lifts_of(imei(f"{base + n:014d}")) == expected


# --- carrier channels --------------------------------------------------------------------------


SEED_POLICY = compile_bundle(SEED)


@pytest.mark.parametrize(
    ("device", "operators", "verdict", "codes"),
    [
        (ORANGE, ("20815",), "warn", ["foreign_sim"]),  # a Free SIM
        (ORANGE, ("20801",), "allow", []),  # an Orange SIM
        (ORANGE, (), "allow", []),  # no SIM
        (ORANGE, ("20801", "20815"), "warn", ["foreign_sim"]),  # two SIMs, one foreign
        (HK, ("20815",), "allow", []),  # hk-global lists no networks
        (unknown_imei(1), ("20815",), "allow", []),  # no distributor at all
        (MI, ("46003",), "allow", []),  # China Telecom
        (MI, ("46009",), "allow", []),  # China Unicom
    ],
)
def test_carrier_network_hits_only_foreign_sims(device, operators, verdict, codes):
    places = {"ip": Place("FR")} if device == ORANGE else {}
    decision = SEED_POLICY.decide(Facts(device, places, 0.0, sim_operators=operators))
    assert decision.verdict == verdict
    assert [r.code for r in decision.reasons] == codes
    assert [r.code for r in decision.observed if r.code == "foreign_sim"] == []


def test_foreign_sim_reason_names_the_operator():
    decision = SEED_POLICY.decide(
        Facts(ORANGE, {"sim": Place("FR")}, 0.0, sim_operators=("20801", "20815"))
    )
    [reason] = decision.reasons
    assert reason.to_dict() == {
        "code": "foreign_sim",
        "rule": "orange-sims",
        "region": None,
        "signals": {"sim": "FR"},
        "distributor": "orange-fr",
        "sim_operator": "20815",
    }


def test_three_digit_mncs_match_either_way():
    bundle = copy.deepcopy(SEED)
    bundle["distributors"][-2]["networks"] = ["310260", "31041"]  # orange-fr, for the test
    policy = compile_bundle(bundle)
    for operator, verdict in (("31026", "allow"), ("310260", "allow"), ("310410", "allow")):
        facts = Facts(ORANGE, {}, 0.0, sim_operators=(operator,))
        assert policy.decide(facts).verdict == verdict, operator
    assert policy.decide(Facts(ORANGE, {}, 0.0, sim_operators=("310150",))).verdict == "warn"


def test_carrier_grace_and_unlock_lift_like_territory():
    bundle = copy.deepcopy(SEED)
    rule = next(r for r in bundle["rules"] if r["id"] == "orange-sims")
    rule.update(action="lock", grace_days=3)
    policy = compile_bundle(bundle)
    first = policy.decide(Facts(ORANGE, {}, 0.0, sim_operators=("20815",)))
    assert [r.code for r in first.reasons] == ["grace_period"]
    later = policy.decide(Facts(ORANGE, {}, 4 * 86400.0, first.state, (), ("20815",)))
    assert later.verdict == "lock" and [r.code for r in later.reasons] == ["foreign_sim"]
    # An unlock that lifts distributor_territory (an agent's, a "gray" unlock code's) lifts
    # foreign_sim locks too (SPEC §11), even when stored before carrier rules existed.
    agent = Override("unlock", frozenset({"distributor_territory"}))
    assert apply_override(later, agent, 4 * 86400.0).verdict == "allow"


# --- the bundle's checks -----------------------------------------------------------------------


def errors_of(bundle) -> dict[str, list[str]]:
    with pytest.raises(BundleError) as caught:
        validate_bundle(bundle)
    return caught.value.errors


@pytest.mark.parametrize("value", [0, 101, -5, "10", 10.5, True, None])
def test_rollout_percent_is_1_to_100(value):
    bundle = copy.deepcopy(SEED)
    bundle["rules"][1]["rollout_percent"] = value
    assert "rules.1.rollout_percent" in errors_of(bundle)


def test_carrier_rule_and_network_checks():
    bundle = copy.deepcopy(SEED)
    bundle["rules"].append(
        {"id": "c", "type": "carrier_network", "action": "allow", "signals": ["sim"]}
    )
    bundle["distributors"][0]["networks"] = ["2080", 20801, "99999x", "11101", "20801"]
    errors = errors_of(bundle)
    assert errors["rules.4.action"] == ["must be lock or warn for carrier_network rules"]
    assert "rules.4.signals" in errors
    assert set(errors) >= {
        "distributors.0.networks.0",
        "distributors.0.networks.1",
        "distributors.0.networks.2",
        "distributors.0.networks.3",  # MCC 111 is not assigned
    }
    assert "distributors.0.networks.4" not in errors


def test_carrier_rule_names_known_distributors():
    bundle = copy.deepcopy(SEED)
    bundle["rules"][2]["distributors"] = ["orange-fr", "nobody"]
    assert errors_of(bundle) == {"rules.2.distributors.1": ["unknown distributor 'nobody'"]}


def test_exception_checks_name_each_field():
    errors = errors_of(
        with_exceptions(
            {"imei": "353879234252634", "note": "bad check digit"},
            {"tac": "3538792", "note": "short"},
            {"from": "35387923000099", "to": "35387923000000", "note": "reversed"},
            {"imei": HK, "tac": HK[:8], "note": "two forms"},
            {"imei": HK, "lifts": ["distributor_territory", "sanctioned_region"], "note": "x"},
            {"imei": HK, "lifts": ["gray"], "note": "x"},
            {"imei": HK},
            {"imei": HK, "note": "x", "ticket": "T-1"},
        )
    )
    assert set(errors) == {
        "exceptions.0.imei",
        "exceptions.1.tac",
        "exceptions.2.from",
        "exceptions.3",
        "exceptions.4.lifts.1",
        "exceptions.5.lifts.0",
        "exceptions.6.note",
        "exceptions.7.ticket",
    }
    assert (
        "sanctions are lifted per device by a compliance officer"
        in (errors["exceptions.4.lifts.1"][0])
    )


def test_exceptions_are_bounded(monkeypatch):
    from service.engine import schema

    monkeypatch.setattr(schema, "MAX_EXCEPTIONS", 3)
    entries = [{"imei": HK, "note": "x"}] * 4
    assert errors_of(with_exceptions(*entries)) == {"exceptions": ["at most 3 exceptions"]}


def test_new_fields_stay_absent_when_not_given():
    bundle = validate_bundle(
        {
            "rules": [{"id": "g", "type": "distributor_territory", "signals": ["ip"]}],
            "distributors": [{"id": "d", "territories": ["FR"]}],
        }
    )
    assert "exceptions" not in bundle
    assert "rollout_percent" not in bundle["rules"][0]
    assert "networks" not in bundle["distributors"][0]


def test_seed_carrier_channels_use_the_operators_real_networks():
    from service.evidence.mcc import operator_name

    networks = {d["id"]: d.get("networks") for d in SEED["distributors"]}
    assert [operator_name(n) for n in networks["orange-fr"]] == ["Orange S.A."]
    assert {operator_name(n) for n in networks["mi-mobile-cn"]} == {"China Telecom", "China Unicom"}


# --- over HTTP: check-in, unlock, validate, simulate, publish ----------------------------------


@pytest.fixture
def as_role(client, tokens):
    def call(role, method, path, body=None):
        return client.open(path, method=method, json=body, headers=bearer(tokens[role]))

    return call


def test_checkin_with_a_foreign_sim_is_warned_and_recorded(checkin, as_role):
    free_sim = {"imsi": "208150123456789", "network": "20815"}
    body = checkin(ORANGE, sim=free_sim, locale="fr-FR")
    assert body["verdict"] == "warn"
    [reason] = body["reasons"]
    assert reason["code"] == "foreign_sim" and reason["sim_operator"] == "20815"
    assert reason["distributor"] == "orange-fr"
    assert body["message"]["reason"] == "foreign_sim" and body["message"]["lang"] == "fr"
    # The device record keeps the MCC+MNC, never the IMSI.
    device = as_role("agent", "GET", f"/v1/devices/{ORANGE}").get_json()
    assert device["reasons"][0]["sim_operator"] == "20815"
    assert "208150123456789" not in str(device)

    orange_sim = {"imsi": "208010123456789", "network": "20801"}
    assert checkin(ORANGE, sim=orange_sim)["verdict"] == "allow"
    # Several SIMs: any foreign one hits.
    sims = [{"slot": 1, "imsi": "208010123456789"}, {"slot": 2, "imsi": "208150123456789"}]
    assert checkin(ORANGE, sims=sims)["verdict"] == "warn"
    assert checkin(ORANGE)["verdict"] == "allow"  # no SIM


def test_an_agent_unlock_lifts_a_foreign_sim_lock(checkin, as_role):
    sim = {"imsi": "460000123456789"}  # China Mobile in a Mi Mobile phone
    inside = next(
        imei(f"86472305{n:06d}")
        for n in range(1000)
        if bucket_by_hand("mi-mobile-sims", imei(f"86472305{n:06d}")) < 10
    )
    locked = checkin(inside, sim=sim)
    assert locked["verdict"] == "lock" and locked["reasons"][0]["code"] == "foreign_sim"
    response = as_role(
        "agent", "POST", f"/v1/devices/{inside}/unlock", {"reason": "customer's own SIM"}
    )
    assert response.status_code == 201, response.get_json()
    after = checkin(inside, sim=sim)
    assert after["verdict"] == "allow"
    assert [r["code"] for r in after["reasons"]] == ["override_unlock"]
    assert after["reasons"][0]["lifted"] == ["mi-mobile-sims"]


def test_validate_names_sanctions_in_lifts(as_role):
    bundle = with_exceptions(
        {"imei": HK, "lifts": ["sanctioned_region"], "note": "VIP"},
    )
    response = as_role("editor", "POST", "/v1/policy/validate", {"bundle": bundle})
    assert response.status_code == 422
    fields = response.get_json()["error"]["fields"]
    assert list(fields) == ["exceptions.0.lifts.0"]


def test_exception_published_lifts_a_lock_at_the_next_checkin(app, as_role, checkin):
    sim_de = {"network": "26201"}
    assert checkin(HK, sim=sim_de)["verdict"] == "lock"
    bundle = with_exceptions({"imei": HK, "note": "returned for refurbishment"})
    response = as_role(
        "editor",
        "POST",
        "/v1/policy",
        {"bundle": bundle, "note": "refurbished", "expected_version": 1},
    )
    assert response.status_code == 201, response.get_json()
    _served(app, 2)
    body = checkin(HK, sim=sim_de)
    assert body["verdict"] == "allow"
    assert body["observed"][0]["lifted"] == ["exception"]
    active = as_role("editor", "GET", "/v1/policy").get_json()
    assert active["exceptions"] == [
        {"imei": HK, "lifts": ["distributor_territory"], "note": "returned for refurbishment"}
    ]
    assert active["distributors"][3]["networks"] == ["20801"]
    assert active["rules"][3]["rollout_percent"] == 10


def _served(app, version):
    import time

    policies = app.extensions["regionlock"].policies
    deadline = time.monotonic() + 1.0
    while policies.loaded_version() != version and time.monotonic() < deadline:
        time.sleep(0.02)
    assert policies.loaded_version() == version


RUSSIA = {"sim": {"network": "25001"}}


def test_a_10_percent_rollout_gives_10_percent_new_locks_in_simulation_and_brake(
    app, as_role, checkin
):
    devices = [unknown_imei(i) for i in range(300)]
    for device in devices:
        checkin(device, **RUSSIA)
    inside = [d for d in devices if bucket_by_hand("ru-lock", d) < 10]
    assert 0.05 < len(inside) / len(devices) < 0.15  # ~10 %

    candidate = lock_in_russia(rollout_percent=10)
    report = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": candidate}).get_json()
    assert report["evaluated"] == 300
    assert report["changes"] == {"allow->lock": len(inside)}
    assert set(report["samples"]["allow->lock"]) <= set(inside)

    # The brake sees the same ~10 %: over 5 % refused, under a 15 % ratio published.
    braked = as_role(
        "editor", "POST", "/v1/policy", {"bundle": candidate, "note": "n", "expected_version": 1}
    )
    assert braked.status_code == 409
    assert braked.get_json()["error"]["report"]["changes"] == {"allow->lock": len(inside)}
    candidate["max_new_lock_ratio"] = 0.15
    published = as_role(
        "editor", "POST", "/v1/policy", {"bundle": candidate, "note": "n", "expected_version": 1}
    )
    assert published.status_code == 201, published.get_json()
    _served(app, 2)
    out = next(d for d in devices if d not in inside)
    assert checkin(inside[0], **RUSSIA)["verdict"] == "lock"
    held = checkin(out, **RUSSIA)
    assert held["verdict"] == "allow"
    assert held["observed"] == [
        {
            "code": "sanctioned_region",
            "rule": "ru-lock",
            "region": "RU",
            "signals": {"network": "RU"},
            "held_back": True,
        }
    ]


def test_simulation_judges_the_recorded_sims(as_role, checkin):
    orange = [imei(f"86769105{n:06d}") for n in range(20)]
    for n, device in enumerate(orange):
        network = "20815" if n % 4 == 0 else "20801"  # 5 of 20 carry a Free SIM
        checkin(device, sim={"imsi": network + "0123456789", "network": network})
    candidate = copy.deepcopy(SEED)
    rule = next(r for r in candidate["rules"] if r["id"] == "orange-sims")
    rule["action"] = "lock"
    report = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": candidate}).get_json()
    assert report["changes"] == {"warn->lock": 5}
    candidate["exceptions"] = [
        {"imei": orange[0], "lifts": ["carrier_network"], "note": "QA"},
    ]
    report = as_role("editor", "POST", "/v1/policy/simulate", {"bundle": candidate}).get_json()
    assert report["changes"] == {"warn->allow": 1, "warn->lock": 4}


def test_openapi_documents_the_new_fields(client):
    spec = client.get("/v1/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    reason = schemas["Reason"]["properties"]
    assert {"held_back", "sim_operator", "lifted"} <= set(reason)
    policy = schemas["Policy"]["properties"]
    assert "exceptions" in policy
    described = policy["rules"]["description"] + policy["distributors"]["description"]
    for word in ("rollout_percent", "carrier_network", "networks"):
        assert word in described


def test_console_explains_foreign_sim_held_back_and_lifted_hits():
    from service.console.present import explain_reason

    document = {"distributor": {"id": "orange-fr", "name": "Orange France"}}
    foreign = {
        "code": "foreign_sim",
        "rule": "orange-sims",
        "distributor": "orange-fr",
        "sim_operator": "20815",
    }
    text = explain_reason(foreign, document)
    assert "Orange France (orange-fr)" in text and "20815" in text
    assert "rollout" not in text and "exceptions" not in text
    assert "staged rollout" in explain_reason({**foreign, "held_back": True}, document)
    assert "exceptions list it" in explain_reason({**foreign, "lifted": ["exception"]}, document)
    unlock = {"code": "override_unlock", "rule": None, "lifted": ["gray-market"]}
    assert "exceptions" not in explain_reason(unlock, {})


def test_an_agents_gray_unlock_code_lifts_a_foreign_sim_lock(checkin, as_role):
    # SPEC §11: the gray scope lifts distributor_territory and foreign_sim locks.
    sim = {"imsi": "460000123456789"}
    inside = next(
        imei(f"86472305{n:06d}")
        for n in range(1000)
        if bucket_by_hand("mi-mobile-sims", imei(f"86472305{n:06d}")) < 10
    )
    assert checkin(inside, sim=sim)["verdict"] == "lock"
    response = as_role(
        "agent",
        "POST",
        f"/v1/devices/{inside}/unlock-code",
        {"challenge": "0012345678", "reason": "customer abroad", "valid_days": 3},
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["scope"] == "gray"
    assert checkin(inside, sim=sim)["verdict"] == "allow"


def test_policy_diff_counts_exception_changes():
    from service.policy.diff import diff_summary, format_summary, summary_is_empty

    before = validate_bundle(SEED)
    assert "exceptions" not in diff_summary(before, before)
    after = validate_bundle(
        with_exceptions(
            SEED["exceptions"][0],
            {**SEED["exceptions"][1], "note": "QA-8"},
            {"imei": HK, "note": "new test phone"},
        )
    )
    summary = diff_summary(before, after)
    assert summary["exceptions"] == {"added": 2, "removed": 1}
    assert summary["settings"] == {}
    assert not summary_is_empty(summary)
    assert format_summary(summary) == ["~ exceptions +2 -1"]


def test_console_shows_carrier_rules_rollouts_exceptions_and_foreign_sims(app, tokens, checkin):
    from tests.test_console import Console

    session = Console(app.test_client())
    assert session.sign_in(tokens["agent"]).status_code == 302
    page = session.get("/console/policy").get_data(as_text=True)
    assert "rollout 10%" in page  # mi-mobile-sims
    assert "A SIM outside the distributor's networks" in page
    assert "SIM networks 20801" in page
    assert "2 exceptions" in page
    assert "Bind None" not in page

    checkin(ORANGE, sim={"imsi": "208150123456789"})
    device = session.get(f"/console/devices/{ORANGE}").get_data(as_text=True)
    assert "carries a SIM of network 20815" in device


def test_case_files_check_the_new_fields_and_report_mismatches():
    from service.engine.cases import CaseError, parse_cases, run_cases

    with pytest.raises(CaseError) as caught:
        parse_cases(
            {
                "cases": [
                    {
                        "name": "bad",
                        "imei": ORANGE,
                        "checkins": [
                            {
                                "sim_operators": [20815],
                                "expect": {"verdict": "warn", "held_back": "mi-mobile-sims"},
                            }
                        ],
                    }
                ]
            },
            "x.yaml",
        )
    assert set(caught.value.errors) == {
        "x.yaml:cases.0.checkins.0.sim_operators",
        "x.yaml:cases.0.checkins.0.expect.held_back",
    }
    [case] = parse_cases(
        {
            "cases": [
                {
                    "name": "wrong expectations",
                    "imei": imei("86472305" + "000000"),
                    "checkins": [
                        {
                            "sim_operators": ["46000"],
                            "expect": {"verdict": "allow", "held_back": [], "lifted": ["x"]},
                        }
                    ],
                }
            ]
        },
        "y.yaml",
    )
    [result] = run_cases(SEED_POLICY, [case])
    assert not result.passed
    held = [m for m in result.messages if "held_back" in m or "lifted" in m]
    assert len(held) == 2, result.messages


def test_rollout_and_exceptions_apply_to_unknown_devices_too():
    bundle = copy.deepcopy(SEED)
    bundle["rules"][1].update(unknown_device="lock", rollout_percent=50)
    bundle["exceptions"] = [{"imei": unknown_imei(0), "note": "lab phone"}]
    policy = compile_bundle(bundle)
    for i in range(40):
        device = unknown_imei(i)
        decision = policy.decide(Facts(device, {"ip": Place("FR")}, 0.0))
        inside = bucket_by_hand("gray-market", device) < 50
        assert (decision.verdict == "lock") == (inside and i != 0), i
        if decision.verdict == "allow":
            [seen] = decision.observed
            assert seen.held_back == (not inside)
            assert seen.lifted == (("exception",) if i == 0 else ())


def test_networks_are_bounded():
    from service.engine.schema import MAX_NETWORKS

    bundle = copy.deepcopy(SEED)
    networks = [f"460{n:03d}" for n in range(1000)] + ["20801"]
    assert len(networks) == MAX_NETWORKS + 1
    bundle["distributors"][-1]["networks"] = networks
    assert errors_of(bundle) == {"distributors.4.networks": ["at most 1,000 networks"]}
    bundle["distributors"][-1]["networks"] = networks[:MAX_NETWORKS]
    validate_bundle(bundle)


def test_a_published_snapshot_keeps_the_exceptions_and_rollouts():
    from service.engine.compiler import CompiledPolicy

    bundle = with_exceptions(
        *SEED["exceptions"],
        {"tac": "35387923", "lifts": ["carrier_network"], "note": "carrier tests"},
        {"from": "35387923000000", "to": "35387923500000", "note": "first half"},
    )
    bundle["rules"][1]["rollout_percent"] = 30
    policy = compile_bundle(bundle)
    loaded = CompiledPolicy.from_snapshot(policy.to_snapshot())
    assert "exceptions" not in orjson_loads(policy.to_snapshot())["bundle"]  # the index instead
    devices = [imei(f"35387923{n:06d}") for n in range(0, 1_000_000, 9973)]
    devices += [imei("86012345" + "090500"), ORANGE, imei("86769105" + "000003"), unknown_imei(3)]
    for device in devices:
        for places in ({"ip": Place("DE")}, {"ip": Place("HK")}, {"ip": Place("CU")}):
            facts = Facts(device, places, 0.0, sim_operators=("20815",))
            assert loaded.decide(facts) == policy.decide(facts)
        assert loaded.device_key(device) == policy.device_key(device)


def orjson_loads(raw):
    import orjson

    return orjson.loads(raw)
