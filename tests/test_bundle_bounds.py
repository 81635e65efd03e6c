"""Bundle bounds (issue 12 item 1): a bundle that validates can never make a check-in fail.

Every numeric and text field of the bundle is bounded (docs/decisions.md, "Bundle bounds"); out
of bounds is a 422 naming the path. Property tests decide random *valid* bundles (values at the
bounds included) against random facts and serialise what comes out, and show that any value put
anywhere in a bundle is either refused with a :class:`BundleError` or decided without failing.
"""

from __future__ import annotations

import copy
import math
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pycountry
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum import luhn

from service.engine import schema
from service.engine.compiler import CompiledPolicy, compile_bundle
from service.engine.loading import load_bundle_dir
from service.engine.model import (
    DAY_S,
    MAX_DECISION_TIME,
    RULE_KINDS,
    SIGNALS,
    Decision,
    DeviceState,
    Facts,
    Override,
    Place,
    apply_override,
    iso_utc,
)
from service.engine.schema import (
    MAX_DISTRIBUTORS,
    MAX_GRACE_DAYS,
    MAX_NAME_CHARS,
    MAX_NEXT_CHECKIN_S,
    MAX_REGIONS,
    MAX_RULES,
    MIN_NEXT_CHECKIN_S,
    QUOTE_CHARS,
)
from service.engine.validation import BundleError, validate_bundle
from tests.conftest import bearer
from tests.imeis import UNKNOWN

ROOT = Path(__file__).resolve().parent.parent
SEED = load_bundle_dir(ROOT / "policies")
CUBA = {"sim": {"network": "36801"}}


def _publish(client, tokens, bundle):
    body = {"bundle": bundle, "note": "bounds", "expected_version": 1}
    return client.post("/v1/policy", json=body, headers=bearer(tokens["editor"]))


# --- the reported defect, through HTTP -------------------------------------------------------


def test_a_grace_of_millions_of_days_is_refused_and_checkins_keep_answering(client, tokens):
    """Reported: grace_days 3000000 validated and published, then every check-in hitting the
    rule answered 500 (lock_at in the year 10240 cannot be formatted)."""
    bundle = copy.deepcopy(SEED)
    bundle["rules"][0]["grace_days"] = 3_000_000  # the sanctions rule, action lock

    validated = client.post(
        "/v1/policy/validate", json={"bundle": bundle}, headers=bearer(tokens["editor"])
    )
    assert validated.status_code == 422
    assert "rules.0.grace_days" in validated.get_json()["error"]["fields"]

    published = _publish(client, tokens, bundle)
    assert published.status_code == 422, published.get_json()
    assert published.get_json()["error"]["fields"] == {
        "rules.0.grace_days": [f"must be 0-{MAX_GRACE_DAYS} (days)"]
    }

    answer = client.post(
        "/v1/checkin", json={"imei": UNKNOWN, **CUBA}, headers=bearer(tokens["device"])
    )
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["verdict"] == "lock"


def test_the_longest_grace_is_published_and_checkins_answer_with_lock_at(client, tokens):
    bundle = copy.deepcopy(SEED)
    bundle["rules"][0]["grace_days"] = MAX_GRACE_DAYS
    # A longer grace on a sanctions rule weakens it: a compliance officer approves (§12.4).
    requested = _publish(client, tokens, bundle)
    assert requested.status_code == 202, requested.get_json()
    approval = requested.get_json()["approval"]
    assert [c["kind"] for c in approval["changes"]] == ["grace_days_raised"]
    published = client.post(
        f"/v1/policy/approvals/{approval['id']}",
        json={"decision": "approve"},
        headers=bearer(tokens["compliance"]),
    )
    assert published.status_code == 201, published.get_json()
    policies = client.application.extensions["regionlock"].policies
    deadline = time.monotonic() + 2.0
    while policies.loaded_version() != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    answer = client.post(
        "/v1/checkin", json={"imei": UNKNOWN, **CUBA}, headers=bearer(tokens["device"])
    )
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["policy_version"] == 2
    assert body["verdict"] == "warn" and [r["code"] for r in body["reasons"]] == ["grace_period"]
    decided = datetime.fromisoformat(body["decided_at"])
    assert datetime.fromisoformat(body["lock_at"]) - decided == timedelta(days=MAX_GRACE_DAYS)


# --- each bound, at the path -----------------------------------------------------------------


def _at(path: str, value: Any):
    def mutate(bundle: dict) -> None:
        *parents, last = path.split(".")
        target: Any = bundle
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return mutate


def _territory_rule(rule_id: str) -> dict:
    return {"id": rule_id, "type": "distributor_territory", "signals": ["ip"]}


COUNTRIES = sorted(c.alpha_2 for c in pycountry.countries)
SUBDIVISIONS = sorted(s.code for s in pycountry.subdivisions)
#: MAX_REGIONS codes (repeats allowed: they are dropped after the count is checked).
MANY_CODES = (COUNTRIES * (MAX_REGIONS // len(COUNTRIES) + 1))[:MAX_REGIONS]
DAY_AND_A_YEAR = MAX_NEXT_CHECKIN_S

IN_BOUNDS = [
    ("rules.0.grace_days", 0),
    ("rules.0.grace_days", MAX_GRACE_DAYS),
    ("rules.1.grace_days", MAX_GRACE_DAYS),
    ("next_checkin_s", MIN_NEXT_CHECKIN_S),
    ("next_checkin_s", MAX_NEXT_CHECKIN_S),
    ("max_new_lock_ratio", 0),
    ("max_new_lock_ratio", 1),
    ("max_new_lock_ratio", 0.0),
    ("max_new_lock_ratio", 1.0),
    ("name", "x"),
    ("name", "x" * MAX_NAME_CHARS),
    ("name", "Flotte Europe – été 🇫🇷"),
    ("distributors.0.name", "x" * MAX_NAME_CHARS),
    ("distributors.0.name", None),  # the id stands in
    ("rules.0.regions", MANY_CODES),
    ("distributors.0.territories", MANY_CODES),
    ("rules.0.signals", list(SIGNALS)),
    ("rules.0.id", "r" * 64),
    ("distributors.2.id", "d" * 64),
]

OUT_OF_BOUNDS = [
    ("rules.0.grace_days", MAX_GRACE_DAYS + 1, "rules.0.grace_days"),
    ("rules.0.grace_days", 3_000_000, "rules.0.grace_days"),
    ("rules.1.grace_days", 10**100, "rules.1.grace_days"),
    ("next_checkin_s", MIN_NEXT_CHECKIN_S - 1, "next_checkin_s"),
    ("next_checkin_s", MAX_NEXT_CHECKIN_S + 1, "next_checkin_s"),
    ("next_checkin_s", 10**30, "next_checkin_s"),
    ("max_new_lock_ratio", -0.01, "max_new_lock_ratio"),
    ("max_new_lock_ratio", 1.01, "max_new_lock_ratio"),
    ("max_new_lock_ratio", math.nan, "max_new_lock_ratio"),
    ("max_new_lock_ratio", math.inf, "max_new_lock_ratio"),
    ("max_new_lock_ratio", 10**400, "max_new_lock_ratio"),
    ("name", "", "name"),
    ("name", "x" * (MAX_NAME_CHARS + 1), "name"),
    ("name", "two\nlines", "name"),
    ("name", "nul\x00", "name"),
    ("name", "bell\x07", "name"),
    ("name", "c1\x85", "name"),
    ("name", "lone \ud800 surrogate", "name"),
    ("distributors.0.name", "", "distributors.0.name"),
    ("distributors.0.name", "x" * (MAX_NAME_CHARS + 1), "distributors.0.name"),
    ("distributors.0.name", "tab\there", "distributors.0.name"),
    ("distributors.0.name", "\udfff", "distributors.0.name"),
    ("rules.0.regions", [*MANY_CODES, "CU"], "rules.0.regions"),
    ("distributors.0.territories", [*MANY_CODES, "HK"], "distributors.0.territories"),
    ("rules.0.signals", [*SIGNALS, "ip"], "rules.0.signals"),
    ("rules.0.min_signals", 10**100, "rules.0.min_signals"),
    ("rules.0.id", "r" * 65, "rules.0.id"),
    ("distributors.1.id", "d" * 65, "distributors.1.id"),
    ("rules.1.distributors", ["x" * 65], "rules.1.distributors.0"),
    ("rules.1.distributors", ["no such"], "rules.1.distributors.0"),
    ("rules", [_territory_rule(f"r{i}") for i in range(MAX_RULES + 1)], "rules"),
]


def base() -> dict:
    return {
        "name": "t",
        "rules": [
            {
                "id": "sanctions",
                "type": "sanctioned_region",
                "regions": ["CU", "IR", "UA-43"],
                "signals": ["ip", "gps", "network"],
                "action": "lock",
            },
            {
                "id": "gray",
                "type": "distributor_territory",
                "signals": ["ip", "gps"],
                "distributors": ["hk"],
            },
        ],
        "distributors": [
            {"id": "hk", "name": "HK Ltd", "territories": ["HK"], "allocations": []},
            {"id": "us", "territories": ["US"], "allocations": [{"tac": "35332211"}]},
            {"id": "eu", "territories": ["FR"]},
        ],
    }


@pytest.mark.parametrize(("path", "value"), IN_BOUNDS, ids=[p for p, _ in IN_BOUNDS])
def test_values_at_the_bounds_are_valid(path, value):
    bundle = base()
    _at(path, value)(bundle)
    compile_bundle(bundle)  # no BundleError


@pytest.mark.parametrize(
    ("path", "value", "error_path"), OUT_OF_BOUNDS, ids=[f"{p}" for p, _, _ in OUT_OF_BOUNDS]
)
def test_values_out_of_bounds_are_refused_at_their_path(path, value, error_path):
    bundle = base()
    _at(path, value)(bundle)
    with pytest.raises(BundleError) as caught:
        validate_bundle(bundle)
    assert set(caught.value.errors) == {error_path}
    # Every message fits in a line, whatever was given.
    assert all(len(m) < 200 for m in caught.value.errors[error_path])


def test_too_many_distributors_are_refused():
    bundle = base()
    bundle["distributors"] = [
        {"id": f"d{i}", "territories": ["US"]} for i in range(MAX_DISTRIBUTORS + 1)
    ]
    bundle["rules"][1]["distributors"] = None
    with pytest.raises(BundleError) as caught:
        validate_bundle(bundle)
    assert set(caught.value.errors) == {"distributors"}


def test_allocations_are_counted_across_the_bundle(monkeypatch):
    monkeypatch.setattr(schema, "MAX_ALLOCATIONS", 3)
    bundle = base()
    bundle["distributors"][0]["allocations"] = [{"tac": "35387923"}, {"tac": "35387924"}]
    validate_bundle(bundle)  # 3 in all (one for "us")
    bundle["distributors"][2]["allocations"] = [{"tac": "35875421"}]
    with pytest.raises(BundleError) as caught:
        validate_bundle(bundle)
    assert caught.value.errors == {"distributors": ["at most 3 allocations in a bundle (4 given)"]}
    # One list beyond the bound is refused before any of its items is looked at.
    bundle["distributors"][2]["allocations"] = ["not even an allocation"] * 4
    with pytest.raises(BundleError) as caught:
        validate_bundle(bundle)
    assert caught.value.errors == {
        "distributors.2.allocations": ["at most 3 allocations in a bundle"]
    }


@pytest.mark.parametrize(
    "path", ["rules.0.action", "rules.0.mode", "rules.1.bind", "rules.0.regions.0", "rules.0.type"]
)
def test_error_messages_quote_a_bounded_part_of_what_was_given(path):
    bundle = base()
    _at(path, "y" * 100_000)(bundle)
    with pytest.raises(BundleError) as caught:
        validate_bundle(bundle)
    [message] = caught.value.errors[path]
    assert "y" * (QUOTE_CHARS - 2) in message and "y" * QUOTE_CHARS not in message


def test_short_values_are_quoted_whole():
    bundle = base()
    _at("rules.0.action", "block")(bundle)
    with pytest.raises(BundleError) as caught:
        validate_bundle(bundle)
    assert caught.value.errors["rules.0.action"] == [
        "unknown action 'block'; expected one of allow, warn, lock"
    ]


def test_an_imei_of_other_digits_belongs_to_no_distributor():
    """ "²" is a digit to str.isdigit() but not to int(): the range lookup raised."""
    bundle = base()
    bundle["distributors"][0]["allocations"] = [{"from": "00000000000000", "to": "99999999999999"}]
    bundle["distributors"][1]["allocations"] = []
    policy = compile_bundle(bundle)
    assert policy.distributor_of("00000000000000" + "0") == "hk"
    assert policy.distributor_of("²" * 15) is None
    assert policy.distributor_of("٣" * 15) is None  # Arabic-Indic digits: int() reads them


# --- property: no valid bundle makes the engine raise ----------------------------------------

# Drawing the bundles dominates the time (a compile takes a few milliseconds).
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{63}", fullmatch=True),
)
names = st.one_of(
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=MAX_NAME_CHARS),
    st.text(
        st.characters(exclude_categories=("Cc", "Cs")),
        min_size=MAX_NAME_CHARS,
        max_size=MAX_NAME_CHARS,
    ),
)
codes = st.one_of(st.sampled_from(COUNTRIES), st.sampled_from(SUBDIVISIONS)).flatmap(
    lambda code: st.sampled_from([code, code.lower()])
)


@st.composite
def region_lists(draw) -> list[str]:
    """A few codes in any case, a code repeated in another case, or (rarely: it is slow to
    validate) as many codes as allowed."""
    pick = draw(st.integers(0, 19))
    if pick == 0:
        return list(MANY_CODES)
    if pick == 1:
        return ["CU", "cu"]
    return draw(st.lists(codes, min_size=1, max_size=6))


grace_days = st.one_of(st.integers(0, MAX_GRACE_DAYS), st.sampled_from([0, 1, MAX_GRACE_DAYS]))
times = st.one_of(
    st.floats(0, MAX_DECISION_TIME, allow_nan=False),
    st.sampled_from([0.0, 1_800_000_000.0, MAX_DECISION_TIME]),
)


def _digits(size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=size, max_size=size)


@st.composite
def allocations(draw, prefix: str) -> list[dict]:
    """Allocations within the 14-digit bodies starting with PREFIX (two digits): distributors
    with different prefixes never overlap; one distributor's own allocations may."""
    out: list[dict] = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            out.append({"tac": prefix + draw(_digits(6))})
        else:
            low, high = sorted([prefix + draw(_digits(12)), prefix + draw(_digits(12))])
            out.append({"from": low, "to": high})
    return out


#: Home networks (MCC+MNC) with assigned MCCs: France, China, the US (6 digits).
networks = st.sampled_from(["20801", "20815", "46001", "46003", "46011", "310260", "31026"])


@st.composite
def exception_lists(draw, dists: list[dict]) -> list[dict]:
    """Exceptions (SPEC §12.2) by IMEI, TAC and range, overlapping each other and allocations."""
    out: list[dict] = []
    for _ in range(draw(st.integers(0, 4))):
        entry: dict[str, Any]
        form = draw(st.sampled_from(["imei", "tac", "range"]))
        prefix = f"{draw(st.integers(10, 10 + max(len(dists), 1))):02d}"
        if form == "imei":
            body = prefix + draw(_digits(12))
            entry = {"imei": body + luhn.calc_check_digit(body)}
        elif form == "tac":
            entry = {"tac": prefix + draw(_digits(6))}
        else:
            low, high = sorted([prefix + draw(_digits(12)), prefix + draw(_digits(12))])
            entry = {"from": low, "to": high}
        if draw(st.booleans()):
            entry["lifts"] = draw(
                st.lists(
                    st.sampled_from(["distributor_territory", "carrier_network"]),
                    min_size=1,
                    unique=True,
                )
            )
        entry["note"] = draw(st.text(min_size=1, max_size=20).filter(_no_surrogate))
        out.append(entry)
    return out


def _no_surrogate(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@st.composite
def distributors(draw) -> list[dict]:
    out = []
    for i, ident in enumerate(draw(st.lists(ids, max_size=4, unique=True))):
        dist: dict[str, Any] = {
            "id": ident,
            "territories": draw(region_lists()),
            "allocations": draw(allocations(f"{10 + i:02d}")),
        }
        if draw(st.booleans()):  # a carrier channel (SPEC §12.3)
            dist["networks"] = draw(st.lists(networks, min_size=1, max_size=3))
        if draw(st.booleans()):
            dist["name"] = draw(st.one_of(names, st.none()))
        out.append(dist)
    return out


@st.composite
def rules(draw, distributor_ids: list[str]) -> list[dict]:
    out = []
    for ident in draw(st.lists(ids, max_size=5, unique=True)):
        kind = draw(st.sampled_from(RULE_KINDS))
        if kind == "carrier_network":
            carrier: dict[str, Any] = {
                "id": ident,
                "type": kind,
                "action": draw(st.sampled_from(["warn", "lock"])),
                "grace_days": draw(grace_days),
                "mode": draw(st.sampled_from(["enforce", "observe"])),
            }
            if distributor_ids and draw(st.booleans()):
                carrier["distributors"] = draw(st.lists(st.sampled_from(distributor_ids)))
            if draw(st.booleans()):
                carrier["rollout_percent"] = draw(st.integers(1, 100))
            out.append(carrier)
            continue
        signals = draw(st.lists(st.sampled_from(SIGNALS), min_size=1, max_size=4, unique=True))
        rule: dict[str, Any] = {
            "id": ident,
            "type": kind,
            "signals": signals,
            "min_signals": draw(st.integers(1, len(signals))),
            "action": draw(st.sampled_from(["allow", "warn", "lock"])),
            "grace_days": draw(grace_days),
            "mode": draw(st.sampled_from(["enforce", "observe"])),
        }
        if draw(st.booleans()):  # a staged rollout (SPEC §12.1)
            rule["rollout_percent"] = draw(st.integers(1, 100))
        if kind == "sanctioned_region":
            rule["regions"] = draw(region_lists())
        else:
            rule["bind"] = draw(st.sampled_from(["activation", "every_checkin"]))
            rule["unknown_device"] = draw(st.sampled_from(["allow", "warn", "lock"]))
            if distributor_ids and draw(st.booleans()):
                rule["distributors"] = draw(st.lists(st.sampled_from(distributor_ids)))
            elif draw(st.booleans()):
                rule["distributors"] = None
        out.append(rule)
    if out and draw(st.integers(0, 9)) == 0:  # now and then, as many rules as allowed
        small = [{**r, "regions": r["regions"][:3]} if "regions" in r else r for r in out]
        out = [{**small[i % len(small)], "id": f"r{i}"} for i in range(MAX_RULES)]
    return out


@st.composite
def valid_bundles(draw) -> dict:
    dists = draw(distributors())
    bundle: dict[str, Any] = {
        "rules": draw(rules([d["id"] for d in dists])),
        "distributors": dists,
    }
    if draw(st.booleans()):
        bundle["exceptions"] = draw(exception_lists(dists))
    if draw(st.booleans()):
        bundle["name"] = draw(names)
    if draw(st.booleans()):
        bundle["next_checkin_s"] = draw(
            st.one_of(
                st.integers(MIN_NEXT_CHECKIN_S, MAX_NEXT_CHECKIN_S),
                st.sampled_from([MIN_NEXT_CHECKIN_S, MAX_NEXT_CHECKIN_S]),
            )
        )
    if draw(st.booleans()):
        bundle["max_new_lock_ratio"] = draw(
            st.one_of(st.floats(0, 1), st.sampled_from([0, 1, 0.0, 1.0]))
        )
    return bundle


def _codes_of(bundle: dict) -> list[str]:
    found = [c for r in bundle["rules"] for c in r.get("regions", ())]
    found += [c for d in bundle["distributors"] for c in d["territories"]]
    return found or ["CU"]


def _imeis(bundle: dict) -> st.SearchStrategy[str]:
    """Devices of the bundle's distributors (inside an allocation) and unknown ones."""
    known = []
    for dist in bundle["distributors"]:
        for item in dist["allocations"]:
            known.append(item["tac"] + "0000000" if "tac" in item else item["from"] + "0")
            known.append(item["tac"] + "9999999" if "tac" in item else item["to"] + "9")
    return st.one_of(
        st.sampled_from(known or ["490154203237518"]), _digits(15), st.text(max_size=16)
    )


def _facts(data, policy: CompiledPolicy, bundle: dict) -> Facts:
    codes_here = _codes_of(bundle)
    places = data.draw(
        st.dictionaries(
            st.sampled_from(SIGNALS),
            st.one_of(st.sampled_from(codes_here), codes).map(Place.parse),
        )
    )
    rule_ids = [r["id"] for r in bundle["rules"]] + ["retired-rule"]
    state = DeviceState(
        bindings=data.draw(st.dictionaries(st.sampled_from(rule_ids), st.booleans())),
        first_hits=data.draw(st.dictionaries(st.sampled_from(rule_ids), times)),
    )
    sims = tuple(data.draw(st.lists(networks, max_size=2, unique=True)))
    return Facts(data.draw(_imeis(bundle)), places, data.draw(times), state, (), sims)


def _overrides(now: float) -> st.SearchStrategy[Override | None]:
    return st.one_of(
        st.none(),
        st.builds(
            Override,
            kind=st.sampled_from(["lock", "unlock"]),
            lifts=st.frozensets(st.sampled_from(RULE_KINDS)),
            reason=st.text(max_size=20),
            created_at=st.just(now),
            expires_at=st.one_of(st.none(), times),
        ),
    )


def _decide_and_serialise(policy: CompiledPolicy, facts: Facts, override: Override | None):
    decision = policy.decide(facts)
    assert isinstance(decision, Decision)
    assert decision.verdict in ("allow", "warn", "lock")
    decision = apply_override(decision, override, facts.now)
    orjson.dumps(decision.to_dict())
    orjson.dumps(decision.state.to_dict())
    for reason in (*decision.reasons, *decision.observed):
        orjson.dumps(reason.to_dict())
        if reason.lock_at is not None:
            latest_start = max([facts.now, *facts.state.first_hits.values()])
            assert reason.lock_at <= latest_start + MAX_GRACE_DAYS * DAY_S
            iso_utc(reason.lock_at)
    return decision


@PROPERTY
@given(valid_bundles(), st.data())
def test_any_valid_bundle_decides_any_checkin_without_raising(bundle, data):
    policy = compile_bundle(bundle)
    facts = _facts(data, policy, bundle)
    decision = _decide_and_serialise(policy, facts, data.draw(_overrides(facts.now)))

    # The published form (a snapshot every worker loads) decides the same.
    loaded = CompiledPolicy.from_snapshot(policy.to_snapshot())
    assert loaded.decide(facts) == policy.decide(facts)
    orjson.dumps(loaded.bundle)

    # The device's next check-in, later, with the state this one left.
    later = min(facts.now + data.draw(st.floats(0, 2 * MAX_GRACE_DAYS * DAY_S)), MAX_DECISION_TIME)
    follow_up = Facts(facts.imei, facts.places, later, decision.state)
    _decide_and_serialise(policy, follow_up, None)


#: Values just past a bound, absurd ones, and values of the wrong type.
EXTREMES = [
    MAX_GRACE_DAYS + 1,
    3_000_000,
    10**9,
    2**63,
    10**30,
    -1,
    0,
    1,
    0.5,
    1e308,
    -1e308,
    "",
    "x" * (MAX_NAME_CHARS + 1),
    "\x00",
    True,
    None,
    [],
    {},
]
json_values = st.one_of(
    st.sampled_from(EXTREMES),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=80)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=10,
    ),
)


def _paths(value: Any, prefix: str = "") -> list[str]:
    """Every path into VALUE (dict keys and list positions), VALUE's own path included."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, f"{prefix}.{i}" if prefix else str(i))
    return out


@settings(PROPERTY, max_examples=60)
@given(valid_bundles(), st.data())
def test_any_value_anywhere_is_refused_or_decided(bundle, data):
    """Put a random JSON value at a random place of a valid bundle: validation either refuses it
    with a BundleError or accepts it, and then every check-in is decided without raising."""
    bundle = copy.deepcopy(bundle)  # some of its lists are shared between examples
    fields = [p for p in _paths(bundle) if p.count(".") in (0, 2)]  # top level, rule and
    # distributor fields: the scalars, mostly
    path = data.draw(
        st.one_of(
            st.sampled_from([*fields, "name", "next_checkin_s", "max_new_lock_ratio"]),
            st.sampled_from(_paths(bundle) or ["rules"]),
        )
    )
    _at(path, data.draw(json_values))(bundle)
    try:
        policy = compile_bundle(bundle)
    except BundleError as exc:
        assert exc.errors and all(isinstance(m, str) for ms in exc.errors.values() for m in ms)
        return
    facts = _facts(data, policy, policy.bundle)
    _decide_and_serialise(policy, facts, None)


#: Fields a bundle may leave out (set here so that they are tried too).
OPTIONAL_FIELDS = [
    "name",
    "next_checkin_s",
    "max_new_lock_ratio",
    "rules.0.mode",
    "rules.0.min_signals",
    "rules.0.grace_days",
    "rules.1.grace_days",
    "rules.1.bind",
    "rules.1.unknown_device",
    "rules.1.action",
    "distributors.1.name",
    "distributors.2.allocations",
]
HK_DEVICE = "353879230000000"  # hk's allocation below


def _hitting_bundle() -> dict:
    """base() with both rules locking: a device in Cuba hits the sanctions rule, hk's device
    outside Hong Kong the territory rule, an unknown device the territory rule's
    unknown_device action."""
    bundle = base()
    bundle["rules"][1]["action"] = "lock"
    bundle["rules"][1]["unknown_device"] = "lock"
    bundle["distributors"][0]["allocations"] = [{"tac": "35387923"}]
    return bundle


def _hitting_facts(policy: CompiledPolicy) -> list[Facts]:
    cuba = {signal: Place.parse("CU") for signal in SIGNALS}
    state = DeviceState(first_hits={r.id: 0.0 for r in policy.rules})
    return [
        Facts(imei, cuba, now, each_state)
        for imei in (HK_DEVICE, UNKNOWN)
        for now in (0.0, 1_800_000_000.0, MAX_DECISION_TIME)
        for each_state in (DeviceState(), state)
    ]


def test_every_field_with_every_extreme_value_is_refused_or_decided():
    """Each field of a bundle whose rules all hit, set to each extreme value in turn: either
    the bundle is refused, or every check-in (at the earliest and latest times, with and
    without earlier first hits) is decided and serialised."""
    template = _hitting_bundle()
    paths = sorted({*(p for p in _paths(template) if p.count(".") in (0, 2)), *OPTIONAL_FIELDS})
    accepted = 0
    for path in paths:
        for value in EXTREMES:
            bundle = copy.deepcopy(template)
            _at(path, value)(bundle)
            try:
                policy = compile_bundle(bundle)
            except BundleError:
                continue
            accepted += 1
            for facts in _hitting_facts(policy):
                _decide_and_serialise(policy, facts, None)
    assert accepted >= 10  # it does decide: 0, 1, 0.5, None are valid in several places
