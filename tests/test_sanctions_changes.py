"""The four-eyes change detector (SPEC §12.4): one table row per kind of weakening, one per kind
of change that needs no approval."""

from __future__ import annotations

import copy

import pytest

from service.engine.sanctions_changes import WEAKENING_KINDS, describe, sanctions_weakenings
from service.engine.validation import validate_bundle

ACTIVE = {
    "name": "default",
    "rules": [
        {
            "id": "sanctions",
            "type": "sanctioned_region",
            "mode": "enforce",
            "regions": ["CU", "IR", "KP"],
            "signals": ["ip", "gps", "network"],
            "min_signals": 1,
            "action": "lock",
            "grace_days": 0,
        },
        {
            "id": "watch",
            "type": "sanctioned_region",
            "mode": "observe",
            "regions": ["SY"],
            "signals": ["ip", "gps"],
            "min_signals": 2,
            "action": "warn",
            "grace_days": 0,
            "rollout_percent": 10,
        },
        {
            "id": "gray-market",
            "type": "distributor_territory",
            "mode": "enforce",
            "signals": ["ip", "gps", "network"],
            "min_signals": 1,
            "action": "lock",
            "grace_days": 0,
            "bind": "activation",
            "unknown_device": "allow",
            "distributors": None,
        },
    ],
    "distributors": [],
}


def _rule(bundle, rule_id):
    return next(r for r in bundle["rules"] if r["id"] == rule_id)


def _edit(change):
    def apply():
        bundle = copy.deepcopy(ACTIVE)
        change(bundle)
        return bundle

    return apply


def _set(rule_id, **values):
    return _edit(lambda b: _rule(b, rule_id).update(values))


def _drop_rule(rule_id):
    return _edit(lambda b: b.__setitem__("rules", [r for r in b["rules"] if r["id"] != rule_id]))


def _rename(b):
    _rule(b, "sanctions")["id"] = "sanctions-2026"


def _retype(b):
    rule = _rule(b, "sanctions")
    rule.update(type="distributor_territory", bind="activation", unknown_device="allow")
    del rule["regions"]


def _add_rule(b):
    b["rules"].append({**copy.deepcopy(_rule(b, "sanctions")), "id": "more", "mode": "observe"})


WEAKENINGS = [
    (
        "rule removed",
        _drop_rule("sanctions"),
        [("sanctions", "rule_removed", None, "sanctioned_region", None)],
    ),
    (
        "rule renamed",
        _edit(_rename),
        [("sanctions", "rule_removed", None, "sanctioned_region", None)],
    ),
    (
        "type changed away",
        _edit(_retype),
        [("sanctions", "rule_removed", None, "sanctioned_region", "distributor_territory")],
    ),
    (
        "region removed",
        _set("sanctions", regions=["CU", "KP"]),
        [("sanctions", "region_removed", "IR", None, None)],
    ),
    (
        "signal removed",
        _set("sanctions", signals=["ip", "network"]),
        [("sanctions", "signal_removed", "gps", None, None)],
    ),
    (
        "min_signals raised",
        _set("sanctions", min_signals=2),
        [("sanctions", "min_signals_raised", None, 1, 2)],
    ),
    (
        "lock -> warn",
        _set("sanctions", action="warn"),
        [("sanctions", "action_weakened", None, "lock", "warn")],
    ),
    (
        "mode observe",
        _set("sanctions", mode="observe"),
        [("sanctions", "mode_observe", None, "enforce", "observe")],
    ),
    (
        "rollout lowered from missing (100)",
        _set("sanctions", rollout_percent=1),
        [("sanctions", "rollout_lowered", None, 100, 1)],
    ),
    (
        "rollout lowered",
        _set("watch", rollout_percent=5),
        [("watch", "rollout_lowered", None, 10, 5)],
    ),
    (
        "grace days raised",
        _set("sanctions", grace_days=30),
        [("sanctions", "grace_days_raised", None, 0, 30)],
    ),
    (
        "several at once, in order",
        _set("sanctions", regions=["CU"], signals=["ip"], action="warn"),
        [
            ("sanctions", "region_removed", "IR", None, None),
            ("sanctions", "region_removed", "KP", None, None),
            ("sanctions", "signal_removed", "gps", None, None),
            ("sanctions", "signal_removed", "network", None, None),
            ("sanctions", "action_weakened", None, "lock", "warn"),
        ],
    ),
]


@pytest.mark.parametrize("label, candidate, expected", WEAKENINGS, ids=[w[0] for w in WEAKENINGS])
def test_each_weakening_is_listed(label, candidate, expected):
    changes = sanctions_weakenings(ACTIVE, candidate())
    assert [
        (c["rule"], c["kind"], c["value"], c["before"], c["after"]) for c in changes
    ] == expected
    assert all(describe(c) for c in changes)


def test_every_kind_has_a_table_row():
    seen = {row[2][0][1] for row in WEAKENINGS}
    assert seen == set(WEAKENING_KINDS)


STRENGTHENINGS = [
    ("region added", _set("sanctions", regions=["CU", "IR", "KP", "SY", "UA-43"])),
    ("signal added", _set("sanctions", signals=["ip", "gps", "network", "sim"])),
    ("min_signals lowered", _set("watch", min_signals=1)),
    ("warn -> lock", _set("watch", action="lock")),
    ("observe -> enforce", _set("watch", mode="enforce")),
    ("rollout raised", _set("watch", rollout_percent=50)),
    ("rollout missing = 100", _set("watch", rollout_percent=None)),
    ("new sanctions rule, even in observe mode", _edit(_add_rule)),
    ("reordered rules", _edit(lambda b: b["rules"].reverse())),
    ("territory rule weakened", _set("gray-market", action="warn", mode="observe", signals=["ip"])),
    ("territory rule removed", _drop_rule("gray-market")),
    ("settings changed", _edit(lambda b: b.update(next_checkin_s=3600, name="x"))),
    ("unchanged", _edit(lambda b: None)),
]


@pytest.mark.parametrize("label, candidate", STRENGTHENINGS, ids=[s[0] for s in STRENGTHENINGS])
def test_no_approval_needed(label, candidate):
    assert sanctions_weakenings(ACTIVE, candidate()) == []


def test_nothing_active_needs_no_approval():
    assert sanctions_weakenings(None, {"rules": []}) == []


def test_type_changed_to_sanctions_is_an_addition():
    active = copy.deepcopy(ACTIVE)
    _retype(active)
    assert sanctions_weakenings(active, ACTIVE) == []


def test_on_normalised_seed_bundles():
    from service.engine.loading import load_bundle_dir
    from tests.conftest import ROOT

    seed = load_bundle_dir(ROOT / "policies")
    candidate = copy.deepcopy(seed)
    rule = next(r for r in candidate["rules"] if r["type"] == "sanctioned_region")
    rule["regions"] = [r for r in rule["regions"] if r != "CU"]
    changes = sanctions_weakenings(seed, validate_bundle(candidate))
    assert [(c["kind"], c["value"]) for c in changes] == [("region_removed", "CU")]
    assert describe(changes[0]) == f"{rule['id']}: region CU removed"
