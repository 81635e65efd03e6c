"""Bundle validation (SPEC §6), the seed folder loader and the allocation index."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from service.engine.compiler import compile_bundle
from service.engine.loading import load_bundle_dir
from service.engine.validation import BundleError, validate_bundle

ROOT = Path(__file__).resolve().parent.parent


def base() -> dict[str, Any]:
    return {
        "name": "t",
        "rules": [
            {
                "id": "sanctions",
                "type": "sanctioned_region",
                "regions": ["CU", "IR", "UA-43"],
                "signals": ["ip", "gps", "network"],
            },
            {"id": "gray", "type": "distributor_territory", "signals": ["ip", "gps"]},
        ],
        "distributors": [
            {
                "id": "hk",
                "name": "HK Ltd",
                "territories": ["HK", "MO"],
                "allocations": [
                    {"tac": "35387923"},
                    {"from": "86012345000000", "to": "86012345099999"},
                ],
            },
            {"id": "us", "territories": ["US"], "allocations": [{"tac": "35332211"}]},
        ],
    }


def errors_of(data: Any) -> dict[str, list[str]]:
    with pytest.raises(BundleError) as caught:
        validate_bundle(data)
    return caught.value.errors


def test_seed_bundle_is_valid_and_normalised() -> None:
    bundle = load_bundle_dir(ROOT / "policies")
    assert validate_bundle(bundle) == bundle  # normalising is idempotent
    assert json.loads(json.dumps(bundle)) == bundle
    assert list(bundle) == [
        "name",
        "next_checkin_s",
        "max_new_lock_ratio",
        "rules",
        "distributors",
        "messages",  # SPEC §10
        "offline",  # SPEC §11
        "exceptions",  # SPEC §12.2
    ]
    assert [r["id"] for r in bundle["rules"]] == [
        "sanctions",
        "gray-market",
        "orange-sims",  # SPEC §12.3
        "mi-mobile-sims",
    ]
    assert bundle["rules"][0]["regions"] == ["CU", "IR", "SY", "KP", "SD", "UA-43", "UA-40"]
    assert {d["id"] for d in bundle["distributors"]} == {
        "hk-global",
        "us-carrier",
        "eu-distri",
        "orange-fr",
        "mi-mobile-cn",
    }


def test_defaults_are_filled_in() -> None:
    bundle = validate_bundle(
        {
            "rules": [
                {"id": "s", "type": "sanctioned_region", "regions": ["cu"], "signals": ["ip"]},
                {"id": "g", "type": "distributor_territory", "signals": ["gps"]},
            ],
            "distributors": [{"id": "d", "territories": ["fr", "FR"]}],
        }
    )
    assert bundle == {
        "name": "default",
        "next_checkin_s": 86400,
        "max_new_lock_ratio": 0.05,
        "rules": [
            {
                "id": "s",
                "type": "sanctioned_region",
                "mode": "enforce",
                "regions": ["CU"],
                "signals": ["ip"],
                "min_signals": 1,
                "action": "lock",
                "grace_days": 0,
            },
            {
                "id": "g",
                "type": "distributor_territory",
                "mode": "enforce",
                "signals": ["gps"],
                "min_signals": 1,
                "action": "lock",
                "grace_days": 0,
                "bind": "activation",
                "unknown_device": "allow",
                "distributors": None,
            },
        ],
        "distributors": [{"id": "d", "name": "d", "territories": ["FR"], "allocations": []}],
    }


def test_unknown_top_level_keys_are_ignored() -> None:
    data = base() | {"version": 3, "published_at": "2026-01-01T00:00:00Z"}
    assert "version" not in validate_bundle(data)


def _set(path: str, value: Any) -> Any:
    """A mutation of base() setting the dotted ``path`` (``-`` deletes)."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        key: Any = int(last) if last.isdigit() else last
        if value == "-":
            del target[key]
        else:
            target[key] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "paths"),
    [
        (_set("rules.0.type", "geofence"), {"rules.0.type"}),
        (_set("rules.0.signals.1", "wifi"), {"rules.0.signals.1"}),
        (_set("rules.0.signals", ["ip", "ip"]), {"rules.0.signals"}),
        (_set("rules.0.signals", []), {"rules.0.signals"}),
        (_set("rules.0.action", "block"), {"rules.0.action"}),
        (_set("rules.0.regions.2", "XX"), {"rules.0.regions.2"}),
        (_set("rules.0.regions.2", "UA-99"), {"rules.0.regions.2"}),
        (_set("rules.0.regions.0", 7), {"rules.0.regions.0"}),
        (_set("rules.0.regions", []), {"rules.0.regions"}),
        (_set("rules.0.regions", "-"), {"rules.0.regions"}),
        (_set("rules.1.id", "sanctions"), {"rules.1.id"}),
        (_set("rules.1.id", "bad id!"), {"rules.1.id"}),
        (_set("rules.0.min_signals", 0), {"rules.0.min_signals"}),
        (_set("rules.0.min_signals", 4), {"rules.0.min_signals"}),
        (_set("rules.0.min_signals", "2"), {"rules.0.min_signals"}),
        (_set("rules.0.min_signal", 2), {"rules.0.min_signal"}),  # typo: unknown rule field
        (_set("rules.0.grace_days", -1), {"rules.0.grace_days"}),
        (_set("rules.0.mode", "shadow"), {"rules.0.mode"}),
        (_set("rules.0.bind", "activation"), {"rules.0.bind"}),  # territory-only field
        (_set("rules.1.regions", ["CU"]), {"rules.1.regions"}),  # sanctions-only field
        (_set("rules.1.bind", "first"), {"rules.1.bind"}),
        (_set("rules.1.unknown_device", "deny"), {"rules.1.unknown_device"}),
        (_set("rules.1.distributors", ["us", "eu"]), {"rules.1.distributors.1"}),
        (_set("rules.1.signals", ["ip"]), set()),
        (_set("distributors.1.id", "hk"), {"distributors.1.id"}),
        (_set("distributors.0.territories.1", "ZZ"), {"distributors.0.territories.1"}),
        (_set("distributors.0.territories", []), {"distributors.0.territories"}),
        (_set("distributors.0.allocations.0.tac", "3538792"), {"distributors.0.allocations.0.tac"}),
        # YAML would read an unquoted TAC as a number (and 0-led ones as octal)
        (_set("distributors.0.allocations.0.tac", 35387923), {"distributors.0.allocations.0.tac"}),
        (
            _set("distributors.0.allocations.0.tac", "3538792a"),
            {"distributors.0.allocations.0.tac"},
        ),
        (
            _set("distributors.0.allocations.1.from", "8601234500000"),
            {"distributors.0.allocations.1.from"},
        ),
        (
            _set("distributors.0.allocations.1.to", "860123450999990"),
            {"distributors.0.allocations.1.to"},
        ),
        (
            _set("distributors.0.allocations.1.from", "86012345100000"),
            {"distributors.0.allocations.1.from"},
        ),
        (_set("distributors.0.allocations.1.to", "-"), {"distributors.0.allocations.1.to"}),
        (_set("distributors.0.allocations.1.tac", "12345678"), {"distributors.0.allocations.1"}),
        (_set("distributors.0.allocations.0", {}), {"distributors.0.allocations.0"}),
        (_set("distributors.0.allocations.0", "35387923"), {"distributors.0.allocations.0"}),
        (_set("distributors.0.allocations.0.form", "1"), {"distributors.0.allocations.0.form"}),
        (_set("next_checkin_s", 0), {"next_checkin_s"}),
        (_set("max_new_lock_ratio", 1.5), {"max_new_lock_ratio"}),
        (_set("rules", {"id": "x"}), {"rules"}),
    ],
)
def test_error_paths(mutate: Any, paths: set[str]) -> None:
    data = base()
    mutate(data)
    if not paths:
        validate_bundle(data)
        return
    assert set(errors_of(data)) == paths


def test_error_messages_name_the_problem() -> None:
    data = base()
    data["rules"][0]["regions"][2] = "UA-99"
    data["rules"][0]["signals"][0] = "wifi"
    data["rules"][0]["type"] = "geo"
    errors = errors_of(data)
    assert errors["rules.0.regions.2"] == ["unknown subdivision code 'UA-99'"]
    assert errors["rules.0.signals.0"][0].startswith("unknown signal 'wifi'")
    assert errors["rules.0.type"][0].startswith("unknown rule type 'geo'")


def test_all_errors_are_reported_at_once() -> None:
    data = base()
    data["rules"][0]["regions"].append("XX")
    data["rules"][1]["id"] = "sanctions"
    data["distributors"][1]["allocations"].append({"from": "2", "to": "1"})
    data["distributors"][1]["allocations"].append({"tac": "86012345"})  # overlaps hk's range
    assert set(errors_of(data)) == {
        "rules.0.regions.3",
        "rules.1.id",
        "distributors.1.allocations.1.from",
        "distributors.1.allocations.1.to",
        "distributors.1.allocations.2",
    }


def test_not_a_mapping() -> None:
    assert set(errors_of(["rules"])) == {"bundle"}


# --- overlaps ------------------------------------------------------------------------------


def _two(first: list[dict[str, str]], second: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "distributors": [
            {"id": "a", "territories": ["FR"], "allocations": first},
            {"id": "b", "territories": ["DE"], "allocations": second},
        ]
    }


def _range(low: str, high: str) -> dict[str, str]:
    return {"from": low, "to": high}


@pytest.mark.parametrize(
    ("first", "second", "clash"),
    [
        pytest.param([{"tac": "35387923"}], [{"tac": "35387923"}], "b.0", id="tac-tac"),
        pytest.param([{"tac": "35387923"}], [{"tac": "35387924"}], None, id="tac-tac-distinct"),
        pytest.param(
            [{"tac": "35387923"}],
            [_range("35387923500000", "35387923500000")],
            "b.0",
            id="tac-contains-range",
        ),
        pytest.param(
            [_range("35387922000000", "35387923000000")],
            [{"tac": "35387923"}],
            "b.0",
            id="range-touches-tac-start",
        ),
        pytest.param(
            [{"tac": "35387923"}],
            [_range("35387923999999", "35387924000005")],
            "b.0",
            id="range-touches-tac-end",
        ),
        pytest.param(
            [{"tac": "35387923"}],
            [_range("35387924000000", "35387924000005")],
            None,
            id="range-adjacent-to-tac",
        ),
        pytest.param(
            [_range("10000000000000", "10000000000100")],
            [_range("10000000000100", "10000000000200")],
            "b.0",
            id="range-range-share-one",
        ),
        pytest.param(
            [_range("10000000000000", "10000000000100")],
            [_range("10000000000101", "10000000000200")],
            None,
            id="range-range-adjacent",
        ),
        pytest.param(
            [_range("10000000000000", "10000000009999")],
            [_range("10000000000500", "10000000000600")],
            "b.0",
            id="range-inside-range",
        ),
        pytest.param(
            # a's long range reaches past a's later short one: the sweep must still see it
            [
                _range("10000000000000", "10000000009999"),
                _range("10000000000010", "10000000000020"),
            ],
            [_range("10000000005000", "10000000005001")],
            "b.0",
            id="reach-of-earlier-range",
        ),
        pytest.param(
            # b's clash with a's first range is hidden behind a's longer-reaching one
            [
                _range("10000000000000", "10000000009999"),
                _range("10000000000150", "10000000000160"),
            ],
            [_range("10000000000100", "10000000000200")],
            "b.0",
            id="clash-behind-longer-reach",
        ),
        pytest.param(
            [_range("10000000000000", "10000000000100")],
            [
                _range("10000000000050", "10000000009999"),
                _range("10000000000120", "10000000000130"),
            ],
            "b.0",
            id="only-the-overlapping-one",
        ),
    ],
)
def test_overlaps_between_distributors(
    first: list[dict[str, str]], second: list[dict[str, str]], clash: str | None
) -> None:
    data = _two(first, second)
    if clash is None:
        validate_bundle(data)
        return
    owner, index = clash.split(".")
    errors = errors_of(data)
    assert set(errors) == {f"distributors.{'ab'.index(owner)}.allocations.{index}"}
    assert "of distributor 'a'" in next(iter(errors.values()))[0]


def test_same_distributor_may_overlap_itself() -> None:
    data = _two(
        [{"tac": "35387923"}, _range("35387923000000", "35387923000010"), {"tac": "35387923"}], []
    )
    validate_bundle(data)


def test_overlap_sweep_matches_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(200):
        owners = [[] for _ in range(3)]
        spans = []
        for _ in range(rng.randint(2, 8)):
            owner = rng.randrange(3)
            if rng.random() < 0.3:
                tac = rng.randint(10000000, 10000003)
                owners[owner].append({"tac": str(tac)})
                spans.append((owner, tac * 1_000_000, tac * 1_000_000 + 999_999))
            else:
                low = rng.randint(10000000000000, 10000004000000)
                high = low + rng.randint(0, 1_500_000)
                owners[owner].append(_range(str(low), str(high)))
                spans.append((owner, low, high))
        expected = any(
            a[0] != b[0] and a[1] <= b[2] and b[1] <= a[2]
            for i, a in enumerate(spans)
            for b in spans[i + 1 :]
        )
        data = {
            "distributors": [
                {"id": f"d{i}", "territories": ["FR"], "allocations": allocations}
                for i, allocations in enumerate(owners)
            ]
        }
        try:
            validate_bundle(data)
            found = False
        except BundleError:
            found = True
        assert found == expected, data


# --- the seed folder loader ----------------------------------------------------------------


def _write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_folder_merge(tmp_path: Path) -> None:
    folder = _write(
        tmp_path,
        {
            "00-settings.yaml": "name: first\nnext_checkin_s: 600\n",
            "10-a.yaml": (
                "rules:\n  - {id: s, type: sanctioned_region, regions: [CU], signals: [ip]}\n"
            ),
            "20-b.yaml": (
                "name: second\n"
                "rules:\n  - {id: g, type: distributor_territory, signals: [gps]}\n"
                "distributors:\n  - {id: d1, territories: [FR]}\n"
            ),
            "30-c.yaml": "distributors:\n  - {id: d2, territories: [DE]}\n",
            "40-empty.yaml": "# nothing yet\n",
            "notes.txt": "not a policy file",
        },
    )
    (folder / "cases").mkdir()
    (folder / "cases" / "x.yaml").write_text("cases: []\n")  # sub-folders are not read
    bundle = load_bundle_dir(folder)
    assert [r["id"] for r in bundle["rules"]] == ["s", "g"]
    assert [d["id"] for d in bundle["distributors"]] == ["d1", "d2"]
    assert bundle["name"] == "second"  # later files override scalar settings
    assert bundle["next_checkin_s"] == 600


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    folder = _write(
        tmp_path,
        {
            "00-settings.yaml": "next_checkin_s: -5\n",
            "10-a.yaml": (
                "rules:\n  - {id: s, type: sanctioned_region, regions: [CU], signals: [ip]}\n"
            ),
            "20-b.yaml": (
                "rules:\n  - {id: t, type: sanctioned_region, regions: [CU, XX], signals: [ip]}\n"
            ),
        },
    )
    with pytest.raises(BundleError) as caught:
        load_bundle_dir(folder)
    assert set(caught.value.errors) == {
        "00-settings.yaml:next_checkin_s",
        "20-b.yaml:rules.0.regions.1",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_folder_unreadable_file(tmp_path: Path, text: str, message: str) -> None:
    folder = _write(tmp_path, {"00-ok.yaml": "name: x\n", "10-bad.yaml": text})
    with pytest.raises(BundleError) as caught:
        load_bundle_dir(folder)
    assert list(caught.value.errors) == ["10-bad.yaml"]
    assert message in caught.value.errors["10-bad.yaml"][0]


def test_folder_without_policies(tmp_path: Path) -> None:
    with pytest.raises(BundleError):
        load_bundle_dir(tmp_path)


# --- compiled allocation lookup --------------------------------------------------------------


def test_allocation_lookup_at_scale() -> None:
    """100k allocations over three distributors: every lookup agrees with a plain model."""
    rng = random.Random(11)
    names = ["a", "b", "c"]
    allocations: list[list[dict[str, str]]] = [[], [], []]
    tac_owner: dict[int, str] = {}
    ranges: list[tuple[int, int, str]] = []
    # Disjoint blocks of 10 TACs each; a block holds either one whole TAC or a few ranges.
    for block in range(50_000):
        owner = rng.randrange(3)
        tac = 20_000_000 + block * 10
        if block % 2:
            allocations[owner].append({"tac": f"{tac:08d}"})
            tac_owner[tac] = names[owner]
        else:
            low = tac * 1_000_000 + rng.randrange(0, 500_000)
            high = low + rng.randrange(0, 400_000)
            allocations[owner].append({"from": f"{low:014d}", "to": f"{high:014d}"})
            ranges.append((low, high, names[owner]))
    bundle = {
        "distributors": [
            {"id": name, "territories": ["FR"], "allocations": allocations[i]}
            for i, name in enumerate(names)
        ]
    }
    compiled = compile_bundle(bundle)

    def expected(body: int) -> str | None:
        owner = tac_owner.get(body // 1_000_000)
        if owner:
            return owner
        for low, high, name in ranges_near.get(body // 1_000_000, ()):
            if low <= body <= high:
                return name
        return None

    ranges_near: dict[int, list[tuple[int, int, str]]] = {}
    for low, high, name in ranges:
        ranges_near.setdefault(low // 1_000_000, []).append((low, high, name))

    probes = [
        *(low for low, _, _ in ranges[:2000]),
        *(high for _, high, _ in ranges[:2000]),
        *(low - 1 for low, _, _ in ranges[:2000]),
        *(high + 1 for _, high, _ in ranges[:2000]),
        *(tac * 1_000_000 + rng.randrange(1_000_000) for tac in list(tac_owner)[:2000]),
        *(rng.randrange(20_000_000_000_000, 20_000_500_000_000) for _ in range(5000)),
        10_000_000_000_000,
        99_999_999_999_999,
    ]
    for body in probes:
        assert compiled.distributor_of(f"{body:014d}7") == expected(body), body
    hits = sum(expected(b) is not None for b in probes)
    assert hits > 6_000  # the probes really exercise both paths


def test_distributor_info() -> None:
    compiled = compile_bundle(copy.deepcopy(base()))
    info = compiled.distributor("hk")
    assert info is not None
    assert (info.name, info.territories) == ("HK Ltd", ("HK", "MO"))
    assert compiled.distributor("nope") is None
    assert compiled.distributor_of("353879234252633") == "hk"
    assert compiled.distributor_of("860123450999999") == "hk"
    assert compiled.distributor_of("860123451000000") is None
    assert compiled.distributor_of("not-an-imei") is None
    assert compiled.next_checkin_s == 86400
    assert compiled.max_new_lock_ratio == 0.05


def test_compile_rejects_invalid() -> None:
    data = base()
    data["rules"][0]["regions"] = ["XX"]
    with pytest.raises(BundleError):
        compile_bundle(data)
