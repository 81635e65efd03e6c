"""The decision engine (SPEC §4): rules, binding, grace, observe mode, combining, overrides."""

from __future__ import annotations

from typing import Any

import pytest
from stdnum import luhn

from service.engine.compiler import CompiledPolicy, combine_actions, compile_bundle
from service.engine.model import (
    Decision,
    DeviceState,
    Facts,
    Override,
    Place,
    Reason,
    apply_override,
)


def imei(body: str) -> str:
    """15-digit IMEI (valid Luhn digit) for a 14-digit body."""
    return body + luhn.calc_check_digit(body)


HK = imei("35387923425263")  # hk: TAC 35387923
HK_RANGE = imei("86012345000042")  # hk: range
US = imei("35332211000017")  # us
CA = imei("44556677000001")  # ca: territory US-CA only
UNKNOWN = imei("99000011000000")

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

DISTRIBUTORS = [
    {
        "id": "hk",
        "territories": ["HK", "MO"],
        "allocations": [{"tac": "35387923"}, {"from": "86012345000000", "to": "86012345099999"}],
    },
    {"id": "us", "territories": ["US", "PR"], "allocations": [{"tac": "35332211"}]},
    {"id": "ca", "territories": ["US-CA"], "allocations": [{"tac": "44556677"}]},
]


def sanctions(**fields: Any) -> dict[str, Any]:
    rule = {
        "id": "sanctions",
        "type": "sanctioned_region",
        "regions": ["CU", "IR", "UA-43", "UA-40"],
        "signals": ["ip", "gps", "network"],
    }
    return {**rule, **fields}


def territory(**fields: Any) -> dict[str, Any]:
    rule = {"id": "gray", "type": "distributor_territory", "signals": ["ip", "gps", "network"]}
    return {**rule, **fields}


def policy(*rules: dict[str, Any]) -> CompiledPolicy:
    return compile_bundle({"name": "test", "rules": list(rules), "distributors": DISTRIBUTORS})


def places(**codes: str) -> dict[str, Place]:
    return {signal: Place.parse(code) for signal, code in codes.items()}


def play(
    compiled: CompiledPolicy, device: str, steps: list[tuple[float, dict[str, str]]]
) -> list[Decision]:
    """Check in at each (day, places) in turn, carrying the state as the store would."""
    state = DeviceState()
    decisions = []
    for day, codes in steps:
        decision = compiled.decide(Facts(device, places(**codes), T0 + day * DAY, state))
        state = decision.state
        decisions.append(decision)
    return decisions


def codes(decision: Decision) -> list[str]:
    return [r.code for r in decision.reasons]


# --- model -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected", "label"),
    [
        ("UA-43", Place("UA", "UA-43"), "UA-43"),
        ("CU", Place("CU"), "CU"),
        (" cu ", Place("CU"), "CU"),
        ("us-ca", Place("US", "US-CA"), "US-CA"),
    ],
)
def test_place_parse_and_label(code: str, expected: Place, label: str) -> None:
    assert Place.parse(code) == expected
    assert Place.parse(code).label == label


@pytest.mark.parametrize("code", ["", "C", "CUB", "1A", "UA-", "-43"])
def test_place_parse_rejects_non_codes(code: str) -> None:
    with pytest.raises(ValueError):
        Place.parse(code)


def test_device_state_round_trips() -> None:
    state = DeviceState(bindings={"gray": True}, first_hits={"gray": T0})
    assert DeviceState.from_dict(state.to_dict()) == state
    assert DeviceState.from_dict(None) == DeviceState()


def test_reason_to_dict_forms() -> None:
    sanction = Reason("sanctioned_region", "s", "sanctioned_region", "lock", "CU", {"ip": "CU"})
    assert sanction.to_dict() == {
        "code": "sanctioned_region",
        "rule": "s",
        "region": "CU",
        "signals": {"ip": "CU"},
    }
    grace = Reason(
        "grace_period",
        "gray",
        "distributor_territory",
        "warn",
        "US",
        {"ip": "US"},
        distributor="hk",
        territories=("HK", "MO"),
        lock_at=T0,
        bound=True,
    )
    assert grace.to_dict() == {
        "code": "grace_period",
        "rule": "gray",
        "region": "US",
        "signals": {"ip": "US"},
        "distributor": "hk",
        "territories": ["HK", "MO"],
        "lock_at": "2026-01-01T00:00:00Z",
        "bound": True,
    }
    unknown = Reason("outside_territory", "gray", "distributor_territory", "lock")
    assert unknown.to_dict()["distributor"] is None  # unknown device: explicit null


# --- sanctioned_region -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "where", "verdict", "region", "signals"),
    [
        (sanctions(), {"ip": "CU"}, "lock", "CU", {"ip": "CU"}),
        (sanctions(), {"gps": "CU-03"}, "lock", "CU", {"gps": "CU-03"}),
        (sanctions(), {"network": "CU"}, "lock", "CU", {"network": "CU"}),
        # sim is not one of the rule's signals
        (sanctions(), {"sim": "IR", "network": "FR", "ip": "FR"}, "allow", None, None),
        (sanctions(), {"gps": "UA-43", "ip": "UA"}, "lock", "UA-43", {"gps": "UA-43"}),
        (sanctions(), {"ip": "UA-40"}, "lock", "UA-40", {"ip": "UA-40"}),
        (sanctions(), {"gps": "UA-30", "ip": "UA-30"}, "allow", None, None),
        # a country-level place is not in a subdivision region
        (sanctions(), {"ip": "UA"}, "allow", None, None),
        # a subdivision-level place is in its country's region
        (sanctions(regions=["UA"]), {"gps": "UA-30"}, "lock", "UA", {"gps": "UA-30"}),
        (sanctions(min_signals=2), {"ip": "CU"}, "allow", None, None),
        (
            sanctions(min_signals=2),
            {"ip": "CU", "gps": "CU"},
            "lock",
            "CU",
            {"ip": "CU", "gps": "CU"},
        ),
        # signals in different listed regions add up; the reported region is the first listed
        (sanctions(min_signals=2), {"ip": "IR", "gps": "CU"}, "lock", "CU", {"gps": "CU"}),
        # the region matched by most signals is reported, with only its signals
        (
            sanctions(),
            {"ip": "IR", "gps": "CU", "network": "CU"},
            "lock",
            "CU",
            {"gps": "CU", "network": "CU"},
        ),
        # a place in two listed regions counts for both; tie -> first listed
        (sanctions(regions=["UA", "UA-43"]), {"gps": "UA-43"}, "lock", "UA", {"gps": "UA-43"}),
        (sanctions(regions=["UA-43", "UA"]), {"gps": "UA-43"}, "lock", "UA-43", {"gps": "UA-43"}),
        (
            sanctions(regions=["UA-43", "UA"]),
            {"gps": "UA-43", "ip": "UA-30"},
            "lock",
            "UA",
            {"gps": "UA-43", "ip": "UA-30"},
        ),
        (sanctions(action="warn"), {"ip": "KP"}, "allow", None, None),
        (sanctions(action="warn"), {"ip": "IR"}, "warn", "IR", {"ip": "IR"}),
    ],
)
def test_sanctioned_region(
    rule: dict[str, Any],
    where: dict[str, str],
    verdict: str,
    region: str | None,
    signals: dict[str, str] | None,
) -> None:
    decision = play(policy(rule), UNKNOWN, [(0, where)])[0]
    assert decision.verdict == verdict
    if region is None:
        assert decision.reasons == ()
    else:
        (reason,) = decision.reasons
        assert (reason.code, reason.rule, reason.region) == (
            "sanctioned_region",
            "sanctions",
            region,
        )
        assert dict(reason.signals) == signals


# --- distributor_territory ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "device", "steps", "bindings"),
    [
        pytest.param(
            territory(),
            HK,
            [({"ip": "US", "gps": "US-NY"}, "lock"), ({"ip": "HK", "gps": "HK"}, "lock")],
            {"gray": True},
            id="gray-import-stays-locked-at-home",
        ),
        pytest.param(
            territory(),
            HK_RANGE,
            [({"ip": "HK"}, "allow"), ({"ip": "FR", "gps": "FR", "network": "FR"}, "allow")],
            {"gray": False},
            id="activated-inside-may-travel",
        ),
        pytest.param(
            territory(),
            HK,
            [({"gps": "MO"}, "allow"), ({"ip": "US"}, "allow")],
            {"gray": False},
            id="second-territory-counts",
        ),
        pytest.param(
            territory(bind="every_checkin"),
            HK,
            [({"ip": "US"}, "lock"), ({"ip": "HK"}, "allow"), ({"ip": "DE"}, "lock")],
            {},
            id="every-checkin-decides-afresh",
        ),
        pytest.param(
            territory(),
            HK,
            [({"sim": "US"}, "allow"), ({}, "allow"), ({"network": "US"}, "lock")],
            {"gray": True},
            id="no-evidence-leaves-it-open",
        ),
        pytest.param(
            territory(min_signals=2),
            HK,
            [({"ip": "US"}, "allow"), ({"ip": "US", "gps": "US"}, "lock")],
            {"gray": True},
            id="min-signals-too-few-is-undecided",
        ),
        pytest.param(
            territory(min_signals=2),
            HK,
            [({"ip": "HK", "gps": "US"}, "allow"), ({"ip": "US", "gps": "US"}, "allow")],
            {"gray": False},
            id="min-signals-present-but-not-outside-binds-inside",
        ),
        pytest.param(
            territory(),
            HK,
            [({"ip": "HK", "gps": "US"}, "lock")],
            {"gray": True},
            id="one-outside-signal-suffices-at-min-1",
        ),
        pytest.param(
            territory(bind="every_checkin"),
            CA,
            [({"gps": "US-CA"}, "allow"), ({"gps": "US-NY"}, "lock"), ({"ip": "US"}, "lock")],
            {},
            id="subdivision-territory",
        ),
        pytest.param(
            territory(distributors=["us"]),
            HK,
            [({"ip": "DE"}, "allow")],
            {},
            id="filter-skips-other-distributors",
        ),
        pytest.param(
            territory(distributors=["us"]),
            US,
            [({"ip": "DE"}, "lock")],
            {"gray": True},
            id="filter-applies-to-listed",
        ),
        pytest.param(
            territory(distributors=["us"], unknown_device="lock"),
            UNKNOWN,
            [({"ip": "DE"}, "allow")],
            {},
            id="filter-skips-unknown-devices",
        ),
        pytest.param(territory(), UNKNOWN, [({"ip": "DE"}, "allow")], {}, id="unknown-allow"),
        pytest.param(
            territory(unknown_device="warn"),
            UNKNOWN,
            [({"ip": "DE"}, "warn")],
            {},
            id="unknown-warn",
        ),
        pytest.param(
            territory(unknown_device="lock"), UNKNOWN, [({}, "lock")], {}, id="unknown-lock"
        ),
        pytest.param(
            territory(action="warn"), US, [({"ip": "MX"}, "warn")], {"gray": True}, id="warn-rule"
        ),
    ],
)
def test_distributor_territory(
    rule: dict[str, Any],
    device: str,
    steps: list[tuple[dict[str, str], str]],
    bindings: dict[str, bool],
) -> None:
    decisions = play(policy(rule), device, [(i, where) for i, (where, _) in enumerate(steps)])
    assert [d.verdict for d in decisions] == [verdict for _, verdict in steps]
    assert dict(decisions[-1].state.bindings) == bindings


def test_territory_reason_details() -> None:
    first, home = play(
        policy(territory()), HK, [(0, {"ip": "US", "gps": "US-NY"}), (1, {"ip": "HK"})]
    )
    (reason,) = first.reasons
    assert reason.to_dict() == {
        "code": "outside_territory",
        "rule": "gray",
        "region": "US",
        "signals": {"ip": "US", "gps": "US-NY"},
        "distributor": "hk",
        "territories": ["HK", "MO"],
    }
    assert first.distributor == "hk"
    (bound,) = home.reasons
    assert bound.bound is True
    assert dict(bound.signals) == {"ip": "HK"}  # the current check-in's places


def test_unknown_device_reason_has_null_distributor() -> None:
    (decision,) = play(policy(territory(unknown_device="lock")), UNKNOWN, [(0, {"ip": "DE"})])
    (reason,) = decision.reasons
    assert (reason.code, reason.distributor, decision.distributor) == (
        "outside_territory",
        None,
        None,
    )


def test_unchanged_state_is_reused() -> None:
    compiled = policy(territory())
    bound = DeviceState(bindings={"gray": False})
    decision = compiled.decide(Facts(HK, places(ip="HK"), T0, bound))
    assert decision.state is bound


# --- grace_days ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "steps"),
    [
        pytest.param(
            territory(grace_days=7),
            [
                (0, {"ip": "US"}, "warn", ["grace_period"], 7),
                (3, {"ip": "US"}, "warn", ["grace_period"], 7),
                (6.99, {"ip": "HK"}, "warn", ["grace_period"], 7),  # bound: home does not help
                (7, {"ip": "HK"}, "lock", ["outside_territory"], None),
                (30, {"ip": "US"}, "lock", ["outside_territory"], None),
            ],
            id="activation-grace-then-lock",
        ),
        pytest.param(
            territory(grace_days=7, bind="every_checkin"),
            [
                (0, {"ip": "US"}, "warn", ["grace_period"], 7),
                (1, {"ip": "HK"}, "allow", [], None),  # no hit clears the first hit
                (2, {"ip": "US"}, "warn", ["grace_period"], 9),
                (9, {"ip": "US"}, "lock", ["outside_territory"], None),
            ],
            id="every-checkin-grace-restarts",
        ),
        pytest.param(
            sanctions(grace_days=2),
            [
                (0, {"ip": "CU"}, "warn", ["grace_period"], 2),
                (1.5, {"gps": "CU"}, "warn", ["grace_period"], 2),
                (2, {"ip": "CU"}, "lock", ["sanctioned_region"], None),
            ],
            id="sanctions-grace",
        ),
        pytest.param(
            territory(grace_days=7, action="warn"),
            [(0, {"ip": "US"}, "warn", ["outside_territory"], None)],
            id="grace-ignored-when-nothing-to-lock",
        ),
    ],
)
def test_grace_days(
    rule: dict[str, Any], steps: list[tuple[float, dict[str, str], str, list[str], float | None]]
) -> None:
    decisions = play(policy(rule), HK, [(day, where) for day, where, *_ in steps])
    for decision, (_, _, verdict, reason_codes, lock_day) in zip(decisions, steps, strict=True):
        assert decision.verdict == verdict
        assert codes(decision) == reason_codes
        # lock_at counts from the first hit, which stays put across check-ins
        expected = None if lock_day is None else T0 + lock_day * DAY
        assert decision.lock_at == expected
        if expected is not None:
            assert decision.reasons[0].lock_at == expected


def test_first_hit_is_persisted_and_cleared() -> None:
    compiled = policy(territory(grace_days=7, bind="every_checkin"))
    hit, clear = play(compiled, HK, [(0, {"ip": "US"}), (1, {"ip": "HK"})])
    assert dict(hit.state.first_hits) == {"gray": T0}
    assert dict(clear.state.first_hits) == {}


def test_decision_lock_at_is_the_earliest_warning() -> None:
    compiled = policy(
        sanctions(grace_days=7),
        territory(id="gray", grace_days=3, bind="every_checkin"),
    )
    (decision,) = play(compiled, HK, [(0, {"ip": "CU"})])
    assert codes(decision) == ["grace_period", "grace_period"]
    assert decision.lock_at == T0 + 3 * DAY


# --- observe mode and combining ----------------------------------------------------------


def test_observe_rule_is_reported_but_does_not_decide() -> None:
    compiled = policy(sanctions(mode="observe"), territory(mode="observe", grace_days=2))
    first, home = play(compiled, HK, [(0, {"ip": "CU"}), (1, {"ip": "HK"})])
    assert first.verdict == "allow"
    assert first.reasons == ()
    assert [r.code for r in first.observed] == ["sanctioned_region", "grace_period"]
    assert first.lock_at is None  # observed warnings do not schedule a lock
    # observe rules keep their own binding, so "observed" shows what enforcing would do
    assert dict(first.state.bindings) == {"gray": True}
    assert home.verdict == "allow"
    assert [r.code for r in home.observed] == ["grace_period"]


def test_observe_and_enforce_side_by_side() -> None:
    compiled = policy(sanctions(), territory(mode="observe"))
    (decision,) = play(compiled, US, [(0, {"ip": "IR"})])
    assert decision.verdict == "lock"
    assert codes(decision) == ["sanctioned_region"]
    assert [r.rule for r in decision.observed] == ["gray"]


@pytest.mark.parametrize(
    ("actions", "verdict"),
    [
        ([], "allow"),
        (["allow"], "allow"),
        (["allow", "warn"], "warn"),
        (["warn", "lock", "allow"], "lock"),
        (["lock", "warn"], "lock"),
    ],
)
def test_combine_actions(actions: list[str], verdict: str) -> None:
    assert combine_actions(actions) == verdict


def test_verdict_combines_rules() -> None:
    compiled = policy(sanctions(action="warn"), territory())
    (decision,) = play(compiled, HK, [(0, {"ip": "IR"})])
    assert (decision.verdict, codes(decision)) == (
        "lock",
        ["sanctioned_region", "outside_territory"],
    )
    assert [r.action for r in decision.reasons] == ["warn", "lock"]


# --- overrides ---------------------------------------------------------------------------

AGENT = frozenset({"distributor_territory"})
COMPLIANCE = frozenset({"distributor_territory", "sanctioned_region"})


def _decision(where: dict[str, str], *rules: dict[str, Any]) -> Decision:
    return play(policy(*rules or (sanctions(), territory())), HK, [(0, where)])[0]


@pytest.mark.parametrize(
    ("where", "rules", "override", "verdict", "reason_codes", "lifted"),
    [
        pytest.param(
            {"ip": "HK"}, (), Override("lock"), "lock", ["manual_lock"], (), id="manual-lock"
        ),
        pytest.param(
            {"ip": "US"},
            (),
            Override("unlock", AGENT),
            "allow",
            ["override_unlock"],
            ("gray",),
            id="agent-lifts-gray-market",
        ),
        pytest.param(
            {"ip": "IR"},
            (),
            Override("unlock", AGENT),
            "lock",
            ["sanctioned_region", "override_unlock"],
            ("gray",),
            id="agent-does-not-lift-sanctions",
        ),
        pytest.param(
            {"ip": "IR"},
            (),
            Override("unlock", COMPLIANCE),
            "allow",
            ["override_unlock"],
            ("sanctions", "gray"),
            id="compliance-lifts-both",
        ),
        pytest.param(
            {"ip": "US"},
            (territory(grace_days=3),),
            Override("unlock", AGENT),
            "allow",
            ["override_unlock"],
            ("gray",),
            id="unlock-clears-a-warning",
        ),
        pytest.param(
            {"ip": "IR"},
            (sanctions(action="warn"), territory()),
            Override("unlock", AGENT),
            "warn",
            ["sanctioned_region", "override_unlock"],
            ("gray",),
            id="remaining-reasons-recombine",
        ),
    ],
)
def test_apply_override(
    where: dict[str, str],
    rules: tuple[dict[str, Any], ...],
    override: Override,
    verdict: str,
    reason_codes: list[str],
    lifted: tuple[str, ...],
) -> None:
    policy_decision = _decision(where, *rules)
    decision = apply_override(policy_decision, override, T0)
    assert decision.verdict == verdict
    assert codes(decision) == reason_codes
    assert decision.reasons[-1].lifted == lifted
    assert decision.override is override
    assert decision.state is policy_decision.state  # the policy keeps running underneath
    if verdict != "warn":
        assert decision.lock_at is None


def test_manual_lock_keeps_policy_reasons() -> None:
    decision = apply_override(_decision({"ip": "US"}), Override("lock"), T0)
    assert codes(decision) == ["outside_territory", "manual_lock"]


@pytest.mark.parametrize(
    ("override", "now", "changed"),
    [
        (None, T0, False),
        (Override("unlock", COMPLIANCE, expires_at=T0), T0, False),  # expiry is exclusive
        (Override("unlock", COMPLIANCE, expires_at=T0 - 1), T0, False),
        (Override("unlock", COMPLIANCE, expires_at=T0 + 1), T0, True),
        (Override("lock", expires_at=T0 - 1), T0, False),
    ],
)
def test_expired_or_missing_override_changes_nothing(
    override: Override | None, now: float, changed: bool
) -> None:
    policy_decision = _decision({"ip": "IR"})
    decision = apply_override(policy_decision, override, now)
    assert (decision is not policy_decision) == changed
    assert decision.verdict == ("allow" if changed else "lock")


def test_decision_to_dict() -> None:
    override = Override("unlock", AGENT, reason="sold in HK", ticket="SUP-1", created_at=T0)
    decision = apply_override(_decision({"ip": "US"}), override, T0)
    out = decision.to_dict()
    assert out["verdict"] == "allow"
    assert out["reasons"] == [
        {"code": "override_unlock", "rule": None, "region": None, "signals": {}, "lifted": ["gray"]}
    ]
    assert out["override"]["lifts"] == ["distributor_territory"]
    assert out["override"] == {
        "kind": "unlock",
        "lifts": ["distributor_territory"],
        "expires_at": None,
    }
    assert override.to_dict()["created_at"] == "2026-01-01T00:00:00Z"  # support's form
    assert out["lock_at"] is None and out["observed"] == []
