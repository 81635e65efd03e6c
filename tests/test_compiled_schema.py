"""The check-in body's compiled validator accepts and refuses exactly what its marshmallow schema
does (issue 17.2): same normalised output, same messages at the same paths, so the same 422.

Hypothesis draws valid check-in bodies and mutations of them (a value swapped for anything
JSON can hold, a field dropped or added, out-of-range coordinates, bad Luhn digits, digits of
other scripts, oversize lists, duplicate slots…) and runs each through ``CheckinSchema().load``
and through the compiled function.
"""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load
from stdnum import luhn

from service.api.checkin import routes
from service.api.checkin.schemas import MAX_ALIASES, MAX_SIMS, CheckinSchema, luhn_ok
from service.api.compiled_schema import UnsupportedSchema, compile_schema
from service.engine.validation import flatten_messages
from tests.conftest import bearer
from tests.imeis import HK, US

EQUIVALENCE = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
SCHEMA = CheckinSchema()
FOUR_ALIASES = [US, "490154203237518", "356938035643809", "353879234252641"]
COMPILED = compile_schema(SCHEMA)


def outcome(load, body):
    """('ok', output) or ('refused', messages)."""
    try:
        return "ok", load(body)
    except ValidationError as error:
        return "refused", error.messages


def same(a, b) -> bool:
    """Equal, NaN equal to NaN (never accepted, but drawn)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def assert_same_answer(body):
    expected = outcome(SCHEMA.load, body)
    got = outcome(COMPILED, body)
    assert got[0] == expected[0], (body, expected, got)
    assert same(got[1], expected[1]), (body, expected, got)
    if expected[0] == "refused":
        # What the 422 names: the same fields, the same messages.
        assert flatten_messages(got[1], root="_schema") == flatten_messages(
            expected[1], root="_schema"
        )
    return expected[0]


# --- valid bodies --------------------------------------------------------------------------

digit_strings = lambda lo, hi: st.text(alphabet="0123456789", min_size=lo, max_size=hi)  # noqa: E731
luhn_numbers = lambda lo, hi: digit_strings(lo - 1, hi - 1).map(  # noqa: E731
    lambda body: body + luhn.calc_check_digit(body)
)


@st.composite
def pasted(draw, numbers):
    """A number with spaces and dashes where people paste them."""
    number = draw(numbers)
    return "".join(draw(st.sampled_from(["", "", " ", "-"])) + ch for ch in number)


imeis = pasted(luhn_numbers(15, 15))
coordinates = lambda bound: st.one_of(  # noqa: E731
    st.floats(-bound, bound),
    st.integers(-bound, bound),
    st.floats(-bound, bound).map(repr),
)
sim_objects = st.fixed_dictionaries(
    {},
    optional={
        "imsi": st.one_of(st.none(), pasted(digit_strings(6, 15))),
        "iccid": st.one_of(st.none(), pasted(luhn_numbers(18, 22))),
        "network": st.one_of(st.none(), digit_strings(5, 6)),
    },
)


@st.composite
def slot_sims(draw):
    sims = draw(st.lists(sim_objects, max_size=MAX_SIMS))
    slots = draw(st.permutations([1, 2, 3, 4]))
    for sim, slot in zip(sims, slots, strict=False):
        if draw(st.booleans()):
            sim["slot"] = draw(st.sampled_from([slot, None]))
    return sims


valid_bodies = st.fixed_dictionaries(
    {"imei": imeis},
    optional={
        "sim": st.one_of(st.none(), sim_objects),
        "gps": st.one_of(
            st.none(), st.fixed_dictionaries({"lat": coordinates(90), "lon": coordinates(180)})
        ),
        "model": st.one_of(st.none(), st.text(max_size=64)),
        "firmware": st.one_of(st.none(), st.text(max_size=64)),
        "nonce": st.one_of(st.none(), st.text(min_size=1, max_size=128)),
        "imeis": st.one_of(st.none(), st.lists(imeis, max_size=MAX_ALIASES)),
        "sims": st.one_of(st.none(), slot_sims()),
        "locale": st.one_of(st.none(), st.sampled_from(["es-CU", "en", "zh-Hant-HK", "x", ""])),
        "future_field": st.integers(),
    },
)

# --- mutations -----------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**30), 10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
        st.sampled_from(["353879234252633", "3538 7923-4252 633", "٣٥٣٨٧٩٢٣٤٢٥٢٦٣٣", "²" * 15]),
    ),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.sampled_from(["slot", "imsi", "lat", "x"]), children, max_size=4)
    ),
    max_leaves=12,
)
#: Values aimed at the checks: bounds, Luhn digits, other scripts, oversize lists.
pointed_values = st.one_of(
    st.sampled_from(
        [
            "353879234252634",  # bad Luhn
            "35387923425263",
            "3538792342526333",
            "89860012345678901235",  # ICCID with a wrong digit
            "12345",
            "1234567890123456",
            "x" * 65,
            "x" * 129,
            "",
            90.0000001,
            -180.5,
            "91",
            "nan",
            "-inf",
            1e308,
            10**400,
            True,
            0,
            5,
            1.0,
            "1",
            [HK] * (MAX_ALIASES + 2),
            [US, US, US, US],
            FOUR_ALIASES,
            [{"slot": 1}, {"slot": 1}],
            [{"slot": 1}] * (MAX_SIMS + 1),
            [None, {"slot": 2}, {"slot": 2}],
            [5, {"slot": 3}, {"slot": 3}],
            [{"slot": True}, {"slot": 2}, {"slot": 2}],
            {"lat": 0},
            {"lat": None, "lon": None},
            "ｅｓ-CU",
            "es-CU-x-" + "a" * 80,
        ]
    ),
    json_values,
)
PATHS = [
    ("imei",),
    ("sim",),
    ("sim", "imsi"),
    ("sim", "iccid"),
    ("sim", "network"),
    ("gps",),
    ("gps", "lat"),
    ("gps", "lon"),
    ("model",),
    ("firmware",),
    ("nonce",),
    ("imeis",),
    ("imeis", 0),
    ("imeis", 2),
    ("sims",),
    ("sims", 0),
    ("sims", 1, "slot"),
    ("sims", 0, "iccid"),
    ("locale",),
]


def mutate(body, path, action, value):
    """BODY with the value at PATH set to VALUE or deleted (what exists of the path)."""
    node = body
    for step in path[:-1]:
        if isinstance(node, dict) and step in node and isinstance(node[step], (dict, list)):
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
        else:
            return body
    last = path[-1]
    value = copy.deepcopy(value)  # the drawn values are shared: never mutate them
    if isinstance(node, dict):
        if action == "delete":
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        if action == "delete":
            del node[last]
        else:
            node[last] = value
    return body


mutated_bodies = st.builds(
    lambda body, changes: [mutate(body, *change) for change in changes][-1] if changes else body,
    valid_bodies,
    st.lists(
        st.tuples(
            st.sampled_from(PATHS), st.sampled_from(["set", "set", "delete"]), pointed_values
        ),
        min_size=1,
        max_size=4,
    ),
)


@EQUIVALENCE
@given(valid_bodies)
def test_valid_bodies_load_the_same(body):
    assert assert_same_answer(body) == "ok"


@EQUIVALENCE
@given(mutated_bodies)
def test_mutated_bodies_are_accepted_or_refused_the_same(body):
    assert_same_answer(body)


@EQUIVALENCE
@given(json_values)
def test_any_json_value_as_the_body_is_answered_the_same(body):
    assert_same_answer(body)


def test_the_examples_the_tests_rely_on():
    """Each kind of answer occurs (the generated tests above could not pass vacuously)."""
    assert assert_same_answer({"imei": HK, "gps": {"lat": 23.1, "lon": -82.4}}) == "ok"
    for body in (
        {},
        {"imei": "353879234252634"},
        {"imei": HK, "gps": {"lat": 91, "lon": 0}},
        {"imei": HK, "imeis": [US, US, "x"]},
        {"imei": HK, "imeis": [HK, "490154203237518", "356938035643809", "353879234252641", US]},
        {"imei": HK, "sims": [None, {"slot": 1}, {"slot": 1}]},
        # marshmallow checks the slots of what loaded of a list with bad items: index 2 here
        {"imei": HK, "sims": [5, {"slot": 3}, {"slot": 3}]},
        # the alias count is checked only when every field loaded
        {"imei": HK, "imeis": FOUR_ALIASES, "gps": {"lat": 91, "lon": 0}},
        {"imei": HK, "imeis": FOUR_ALIASES},
        {"imei": HK, "sims": [{"slot": 1}] * 5},
        {"imei": HK, "sim": {"iccid": "89860012345678901235"}},
        [],
        "text",
    ):
        assert assert_same_answer(body) == "refused", body


def test_the_checkin_route_uses_the_compiled_validator(client, tokens, monkeypatch):
    """The schema instance the route declares is never loaded per request; a bad body still
    gets the one 422 payload naming the fields as marshmallow names them."""
    parser = routes.blp.ARGUMENTS_PARSER
    (schema,) = [s for s, _ in parser._compiled.values() if isinstance(s, CheckinSchema)]

    def refuse(*args, **kwargs):
        raise AssertionError("the check-in body was loaded by marshmallow")

    monkeypatch.setattr(schema, "load", refuse)
    ok = client.post("/v1/checkin", json={"imei": HK}, headers=bearer(tokens["device"]))
    assert ok.status_code == 200, ok.get_json()
    body = {"imei": HK, "gps": {"lat": 91}, "sims": [{"slot": 9}], "imeis": ["1"]}
    bad = client.post("/v1/checkin", json=body, headers=bearer(tokens["device"]))
    assert bad.status_code == 422
    with pytest.raises(ValidationError) as expected:
        CheckinSchema().load(body)
    assert bad.get_json()["error"]["fields"] == flatten_messages(
        expected.value.messages, root="_schema"
    )
    assert set(bad.get_json()["error"]["fields"]) == {
        "gps.lat",
        "gps.lon",
        "sims.0.slot",
        "imeis.0",
    }
    not_json = client.post(
        "/v1/checkin", data=b"{", content_type="application/json", headers=bearer(tokens["device"])
    )
    assert not_json.status_code == 400


def test_what_the_compiler_cannot_reproduce_is_refused_at_start_up():
    class Lenient(Schema):
        class Meta:
            unknown = EXCLUDE

    class Hooked(Lenient):
        name = fields.String()

        @pre_load
        def _strip(self, data, **_):
            return data

    class Defaulted(Lenient):
        name = fields.String(load_default="x")

    for schema in (Hooked(), Defaulted(), Schema()):
        with pytest.raises(UnsupportedSchema):
            compile_schema(schema)


@EQUIVALENCE
@given(
    st.one_of(
        st.text(alphabet="0123456789", max_size=25),
        luhn_numbers(1, 25),
        st.text(max_size=20),
        st.text(alphabet="0123456789٣²１ -x", max_size=20),
    )
)
def test_the_fast_luhn_check_answers_like_stdnum(number):
    assert luhn_ok(number) is luhn.is_valid(number)
