"""Property-based tests (hypothesis): identifier parsing at the edge and the engine's
monotonicity — more sanctioned regions or more sanctioned evidence never loosens a verdict, and
overrides do what their kind and scope say whatever the policy decided."""

from __future__ import annotations

import copy
import functools

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError
from stdnum import luhn

from service.api.checkin.schemas import CheckinSchema
from service.engine.compiler import compile_bundle
from service.engine.loading import load_bundle_dir
from service.engine.model import (
    ACTION_RANK,
    DISTRIBUTOR_TERRITORY,
    SANCTIONED_REGION,
    SIGNALS,
    DeviceState,
    Facts,
    Override,
    Place,
    apply_override,
)
from tests.conftest import ROOT
from tests.imeis import EU, HK, HK2, UNKNOWN, US

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# Fewer for the engine: each example compiles a bundle (hypothesis' drawing dominates).
ENGINE_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# --- identifiers -------------------------------------------------------------------------

digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


def with_luhn(body: str) -> str:
    """BODY and its Luhn check digit."""
    return body + luhn.calc_check_digit(body)


def wrong_check_digit(number: str) -> str:
    """NUMBER with its last digit replaced by any other."""
    good = number[-1]
    return number[:-1] + str((int(good) + 1) % 10)


@st.composite
def formatted(draw, number_strategy):
    """A number with spaces and dashes sprinkled anywhere, as people paste them."""
    number = draw(number_strategy)
    out = []
    for ch in number:
        out.append(draw(st.sampled_from(["", "", "", " ", "-", " - ", "--"])))
        out.append(ch)
    out.append(draw(st.sampled_from(["", " ", "-"])))
    return number, "".join(out)


def bodies(size_min: int, size_max: int):
    """Digit strings of the given lengths."""
    return st.text(alphabet="0123456789", min_size=size_min, max_size=size_max)


imeis = bodies(14, 14).map(with_luhn)
iccids = bodies(17, 21).map(with_luhn)


def load(body: dict) -> dict:
    """CheckinSchema's verdict on BODY (raises ValidationError)."""
    return CheckinSchema().load(body)


@PROPERTY_SETTINGS
@given(formatted(imeis))
def test_any_valid_imei_is_accepted_and_normalised(pair):
    number, pasted = pair
    assert load({"imei": pasted})["imei"] == number


@PROPERTY_SETTINGS
@given(imeis.map(wrong_check_digit))
def test_fifteen_digits_with_a_wrong_check_digit_are_refused(number):
    with pytest.raises(ValidationError) as error:
        load({"imei": number})
    assert set(error.value.messages) == {"imei"}


@PROPERTY_SETTINGS
@given(bodies(1, 30).filter(lambda d: len(d) != 15))
def test_imeis_of_other_lengths_are_refused(number):
    with pytest.raises(ValidationError):
        load({"imei": number})


@PROPERTY_SETTINGS
@given(formatted(iccids))
def test_any_valid_iccid_is_accepted_and_normalised(pair):
    number, pasted = pair
    loaded = load({"imei": HK, "sim": {"iccid": pasted}})
    assert loaded["sim"]["iccid"] == number


@PROPERTY_SETTINGS
@given(iccids.map(wrong_check_digit))
def test_iccid_with_a_wrong_check_digit_is_refused(number):
    with pytest.raises(ValidationError) as error:
        load({"imei": HK, "sim": {"iccid": number}})
    assert error.value.messages == {"sim": {"iccid": ["has an invalid Luhn check digit"]}}


@PROPERTY_SETTINGS
@given(bodies(1, 30).filter(lambda d: not 18 <= len(d) <= 22))
def test_iccids_of_other_lengths_are_refused(number):
    with pytest.raises(ValidationError):
        load({"imei": HK, "sim": {"iccid": number}})


@PROPERTY_SETTINGS
@given(formatted(bodies(6, 15)))
def test_imsi_of_6_to_15_digits_is_accepted(pair):
    number, pasted = pair
    assert load({"imei": HK, "sim": {"imsi": pasted}})["sim"]["imsi"] == number


@PROPERTY_SETTINGS
@given(
    st.text(min_size=1, max_size=20).filter(
        lambda t: not t.replace(" ", "").replace("-", "").isdigit() or not t.isascii()
    )
)
def test_anything_but_digits_is_refused(text):
    with pytest.raises(ValidationError):
        load({"imei": text})


# --- the engine --------------------------------------------------------------------------

PLACES = [
    Place("CU"),
    Place("IR"),
    Place("SY"),
    Place("KP"),
    Place("SD"),
    Place("FR"),
    Place("DE"),
    Place("US"),
    Place("HK"),
    Place("MO"),
    Place("JP"),
    Place("BR"),
    Place("RU"),
    Place("UA", "UA-43"),
    Place("UA", "UA-40"),
    Place("UA", "UA-30"),
    Place("US", "US-CA"),
]
REGIONS = ["CU", "IR", "SY", "KP", "SD", "UA-43", "UA-40", "RU", "BR", "FR", "JP", "UA"]
DEVICES = [HK, HK2, US, EU, UNKNOWN]


@functools.cache
def seed_bundle() -> dict:
    """The shipped bundle (sanctions + gray-market rules, three distributors)."""
    return load_bundle_dir(ROOT / "policies")


@st.composite
def sanction_rules(draw):
    """A sanctioned_region rule with random regions, signals, threshold, action and grace."""
    signals = draw(st.lists(st.sampled_from(SIGNALS), min_size=1, max_size=4, unique=True))
    rule = {
        "id": "sanctions",
        "type": "sanctioned_region",
        "regions": draw(st.lists(st.sampled_from(REGIONS), min_size=1, max_size=5, unique=True)),
        "signals": signals,
        "min_signals": draw(st.integers(1, len(signals))),
        "action": draw(st.sampled_from(["lock", "warn"])),
    }
    if draw(st.booleans()):
        rule["grace_days"] = draw(st.integers(0, 30))
    return rule


def bundle_with(rule: dict) -> dict:
    """The seed bundle with its sanctions rule replaced by RULE."""
    bundle = copy.deepcopy(seed_bundle())
    bundle["rules"] = [rule if r["id"] == "sanctions" else r for r in bundle["rules"]]
    return bundle


places_st = st.dictionaries(st.sampled_from(SIGNALS), st.sampled_from(PLACES))
states = st.builds(
    DeviceState,
    bindings=st.dictionaries(st.just("gray-market"), st.booleans()),
    first_hits=st.dictionaries(st.just("sanctions"), st.floats(0, 1_800_000_000)),
)
NOW = 1_800_000_000.0


def rank(verdict: str) -> int:
    return ACTION_RANK[verdict]


@ENGINE_SETTINGS
@given(sanction_rules(), st.sampled_from(REGIONS), st.sampled_from(DEVICES), places_st, states)
def test_adding_a_sanctioned_region_never_loosens_a_verdict(rule, extra, imei, places, state):
    assume(extra not in rule["regions"])
    wider = {**rule, "regions": [*rule["regions"], extra]}
    facts = Facts(imei=imei, places=places, now=NOW, state=state)
    before = compile_bundle(bundle_with(rule)).decide(facts)
    after = compile_bundle(bundle_with(wider)).decide(facts)
    assert rank(after.verdict) >= rank(before.verdict)
    if before.verdict == "lock":
        assert after.verdict == "lock"


@ENGINE_SETTINGS
@given(sanction_rules(), st.sampled_from(DEVICES), places_st, states, st.data())
def test_more_evidence_in_a_sanctioned_region_never_unlocks(rule, imei, places, state, data):
    missing = [s for s in SIGNALS if s not in places]
    assume(missing)
    signal = data.draw(st.sampled_from(missing))
    region = data.draw(st.sampled_from(rule["regions"]))
    place = Place.parse(region) if "-" in region else Place(region)
    policy = compile_bundle(bundle_with(rule))
    before = policy.decide(Facts(imei=imei, places=places, now=NOW, state=state))
    after = policy.decide(Facts(imei=imei, places={**places, signal: place}, now=NOW, state=state))
    assert rank(after.verdict) >= rank(before.verdict)
    if before.verdict == "lock":
        assert after.verdict == "lock"


@st.composite
def decisions(draw):
    """Whatever the (randomised) policy decides for random facts."""
    policy = compile_bundle(bundle_with(draw(sanction_rules())))
    facts = Facts(
        imei=draw(st.sampled_from(DEVICES)), places=draw(places_st), now=NOW, state=draw(states)
    )
    return policy.decide(facts)


def override(kind: str, lifts: frozenset[str] = frozenset(), expires_at=None) -> Override:
    return Override(
        kind=kind,
        lifts=lifts,
        reason="r",
        actor="a",
        role="agent",
        created_at=NOW - 10,
        expires_at=expires_at,
    )


@ENGINE_SETTINGS
@given(decisions())
def test_a_manual_lock_always_locks(decision):
    locked = apply_override(decision, override("lock"), NOW)
    assert locked.verdict == "lock"
    assert locked.reasons[-1].code == "manual_lock"
    assert locked.state == decision.state and locked.observed == decision.observed


@ENGINE_SETTINGS
@given(decisions())
def test_an_agent_unlock_never_lifts_sanctions(decision):
    unlocked = apply_override(decision, override("unlock", frozenset({DISTRIBUTOR_TERRITORY})), NOW)
    assert rank(unlocked.verdict) <= rank(decision.verdict)
    sanctions = [r for r in decision.reasons if r.kind == SANCTIONED_REGION]
    if any(r.action == "lock" for r in sanctions):
        assert unlocked.verdict == "lock"
    assert [r for r in unlocked.reasons if r.kind == SANCTIONED_REGION] == sanctions


@ENGINE_SETTINGS
@given(decisions())
def test_a_compliance_unlock_lifts_every_policy_lock(decision):
    lifts = frozenset({DISTRIBUTOR_TERRITORY, SANCTIONED_REGION})
    unlocked = apply_override(decision, override("unlock", lifts), NOW)
    assert unlocked.verdict == "allow"
    assert [r.code for r in unlocked.reasons] == ["override_unlock"]


@ENGINE_SETTINGS
@given(decisions(), st.sampled_from(["lock", "unlock"]))
def test_an_expired_override_changes_nothing(decision, kind):
    lifts = frozenset({DISTRIBUTOR_TERRITORY, SANCTIONED_REGION})
    assert apply_override(decision, override(kind, lifts, expires_at=NOW), NOW) == decision
