"""The fleet overview's figures (SPEC §14, service/console/overview.py): the period, the chart
series, the world map's counts and shades, the distributors table; and who may see the page."""

from __future__ import annotations

import json
import re
from datetime import date

import pycountry
import pytest

from service.console import overview
from tests.conftest import audit_entries
from tests.imeis import HK, UNKNOWN
from tests.test_console import as_role, text  # noqa: F401  (fixtures)

TODAY = date(2026, 11, 27)


def _breakdown(**fields) -> dict:
    empty = {"total": 0, "by_reason": {}, "by_country": {}, "by_region": {}, "by_distributor": {}}
    return {**empty, **fields}


def _day(day: str, checkins: int = 0, lock: dict | None = None, **extra) -> dict:
    return {
        "date": day,
        "checkins": checkins,
        "verdicts": {"lock": lock or _breakdown(), "warn": _breakdown(), "allow": _breakdown()},
        "overrides": extra.get("overrides", {"unlock": {}, "lock": {}}),
        "unlock_codes": extra.get("unlock_codes", 0),
    }


REPORT = {
    "from": "2026-11-26",
    "to": "2026-11-27",
    "days": [
        _day(
            "2026-11-26",
            10,
            _breakdown(
                total=4,
                by_reason={"sanctioned_region": 3, "outside_territory": 1},
                by_country={"UA": 2, "CU": 1, "FR": 1},
                by_region={"UA-43": 2, "CU": 1, "FR": 1},
                by_distributor={"hk-global": 1},
            ),
            overrides={"unlock": {"agent": 2}, "lock": {}},
            unlock_codes=1,
        ),
        _day(
            "2026-11-27",
            7,
            _breakdown(
                total=3,
                by_reason={"outside_territory": 3},
                by_country={"HK": 2, "FR": 1},
                by_region={"HK": 2, "FR": 1},
                by_distributor={"hk-global": 2, "eu-retail": 1},
            ),
            overrides={"unlock": {"compliance": 1}, "lock": {"agent": 1}},
        ),
    ],
    "locked_now": _breakdown(
        total=5,
        by_reason={"sanctioned_region": 3, "outside_territory": 2},
        by_region={"UA-43": 2, "CU": 1, "FR": 2},
        by_distributor={"hk-global": 2, "cn-east": 1},
    ),
}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, (date(2026, 10, 29), TODAY, None)),
        ({"from": "2026-11-01", "to": "2026-11-10"}, (date(2026, 11, 1), date(2026, 11, 10), None)),
        ({"from": "2026-11-20"}, (date(2026, 11, 20), TODAY, None)),
        ({"to": "2026-06-30"}, (date(2026, 6, 1), date(2026, 6, 30), None)),
        ({"from": "2025-10-24", "to": TODAY.isoformat()}, (date(2025, 10, 24), TODAY, None)),
    ],
)
def test_the_period_defaults_to_the_last_30_days(args, expected):
    assert overview.read_period(args, TODAY) == expected


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"from": "27/11/2026"}, "YYYY-MM-DD"),
        ({"from": "2026-11-10", "to": "2026-11-01"}, "after"),
        ({"from": "2025-10-23", "to": TODAY.isoformat()}, "At most 400 days"),
    ],
)
def test_a_bad_period_shows_the_default_and_says_why(args, problem):
    day_from, day_to, said = overview.read_period(args, TODAY)
    assert (day_from, day_to) == (date(2026, 10, 29), TODAY)
    assert problem in said


def test_chart_series_follow_the_days_and_reasons_most_first():
    charts = overview.chart_data(REPORT)
    assert charts["dates"] == ["2026-11-26", "2026-11-27"]
    assert charts["checkins"] == [10, 7]
    assert charts["locks"] == [4, 3]
    assert charts["locks_by_reason"] == [
        {"code": "outside_territory", "label": "Outside territory", "counts": [1, 3]},
        {"code": "sanctioned_region", "label": "Sanctioned region", "counts": [3, 0]},
    ]


def test_the_map_sums_countries_over_the_days_by_iso_numeric_id():
    world = overview.map_data(REPORT)
    by_id = {shape["id"]: shape for shape in world["shapes"]}
    assert by_id["250"]["count"] == 2  # France, both days
    assert by_id["804"]["count"] == 2  # Ukraine (Crimea's UA-43 locks count under UA)
    assert by_id["192"]["count"] == 1  # Cuba
    assert by_id["250"]["title"] == "France: 2 new locks"
    assert by_id["192"]["title"] == "Cuba: 1 new lock"
    assert by_id["643"]["count"] == 0 and by_id["643"]["shade"] == 0  # Russia
    assert by_id["250"]["shade"] == overview.SHADES
    assert 0 < by_id["192"]["shade"] < overview.SHADES
    # Hong Kong is too small for the 1:110m atlas: listed, not lost.
    assert [c["code"] for c in world["not_drawn"]] == ["HK"]
    assert world["top"][0] == {"code": "FR", "name": "France", "count": 2}
    assert world["total"] == 7


def test_every_shape_of_the_atlas_is_an_iso_country():
    atlas = overview.world_map()
    ids = [c["id"] for c in atlas["countries"] if c["id"]]
    assert len(ids) == len(set(ids)) > 170
    for number in ids:
        assert pycountry.countries.get(numeric=number) is not None, number
    # Natural Earth's Crimea is drawn with Ukraine (tools/vendor/vendor.mjs).
    assert atlas["crimea_drawn_in"] == ["Ukraine"]


@pytest.mark.parametrize("most", [1, 2, 3, 7, 10, 100, 12_345])
def test_shades_grow_with_the_count_and_the_legend_covers_every_count(most):
    shades = [overview.shade(n, most) for n in range(0, most + 1)]
    assert shades[0] == 0 and shades[-1] == overview.SHADES
    assert shades == sorted(shades)
    legend = overview.shade_legend(most)
    covered = [n for entry in legend for n in range(entry["low"], entry["high"] + 1)]
    assert covered == list(range(1, most + 1))
    for entry in legend:
        assert overview.shade(entry["low"], most) == overview.shade(entry["high"], most)


def test_distributors_most_outside_their_territory_first():
    rows = overview.distributor_rows(REPORT, {"hk-global": "Global Mobile HK Ltd"})
    assert rows == [
        {"id": "hk-global", "name": "Global Mobile HK Ltd", "period": 3, "now": 2},
        {"id": "eu-retail", "name": "", "period": 1, "now": 0},
        {"id": "cn-east", "name": "", "period": 0, "now": 1},
    ]


def test_headline_figures():
    totals = overview.totals(REPORT)
    assert totals["checkins"] == 17
    assert totals["new_locks"] == 7
    assert totals["unlocks"] == 3
    assert totals["unlocks_by_role"] == [("agent", 2), ("compliance", 1)]
    assert totals["manual_locks"] == 1
    assert totals["unlock_codes"] == 1
    assert totals["locked_now"] == 5
    assert [r["code"] for r in totals["locked_by_reason"]] == [
        "sanctioned_region",
        "outside_territory",
    ]
    assert totals["locked_by_region"][0] == {"code": "FR", "name": "France", "count": 2}


# --- the page and the exports, through the app ------------------------------------------------


def test_who_sees_the_overview_and_its_exports(as_role, checkin):  # noqa: F811
    checkin(UNKNOWN, sim={"network": "36801"})
    for role, status, exports in (
        ("compliance", 200, True),
        ("auditor", 200, True),
        ("admin", 200, True),
        ("editor", 200, False),
        ("agent", 403, False),
    ):
        console = as_role(role)
        page = console.get("/console/overview")
        assert page.status_code == status, role
        body = text(page)
        nav = re.search(r'<nav class="sections".*?</nav>', body, re.S).group(0)
        assert (">Overview</a>" in nav) == (status == 200), role
        assert ('id="exports"' in body) == exports, role
        csv = console.get("/console/reports/locked-devices.csv")
        assert csv.status_code == (200 if exports else 403), role
        csv.get_data()  # the stream read to its end, as a browser would
    assert "Not for your role" in text(as_role("agent").get("/console/overview"))


def test_console_exports_stream_csv_and_are_audited(as_role, checkin, redis):  # noqa: F811
    checkin(UNKNOWN, sim={"network": "36801"})
    checkin(HK, sim={"network": "310260"})
    compliance = as_role("compliance")
    locked = compliance.get("/console/reports/locked-devices.csv")
    assert locked.status_code == 200
    assert locked.mimetype == "text/csv"
    assert "attachment" in locked.headers["Content-Disposition"]
    lines = text(locked).splitlines()
    assert lines[0] == "imei,reason,region,distributor,locked_since,override"
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted([UNKNOWN, HK])
    only_cuba = text(compliance.get("/console/reports/locked-devices.csv?region=CU")).splitlines()
    assert [line.split(",")[0] for line in only_cuba[1:]] == [UNKNOWN]
    trail = compliance.get("/console/reports/audit.csv?action=report.locked_devices")
    assert trail.status_code == 200
    rows = text(trail).splitlines()
    assert rows[0].startswith("id,at,actor,role,action,imei,detail")
    entries = [e for e in audit_entries(redis) if e["action"].startswith("report.")]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("report.locked_devices", "test-compliance"),
        ("report.locked_devices", "test-compliance"),
        ("report.audit", "test-compliance"),
    ]
    # The audit export lists the two locked-devices exports (and then itself, newest first).
    assert sum("report.locked_devices" in row for row in rows[1:]) == 2


def test_vendored_files_are_listed_with_a_permissive_licence_and_served(client):
    vendor = overview.WORLD_MAP.parent.parent
    manifest = json.loads((vendor / "MANIFEST.json").read_text())
    names = {p["name"]: p for p in manifest["packages"]}
    assert {"chart.js", "world-atlas", "d3-geo", "topojson-client"} <= set(names)
    for package in manifest["packages"]:
        assert package["license"] in ("MIT", "ISC"), package["name"]
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", package["integrity"]), package["name"]
        for name in package["files"]:
            assert (vendor / name).is_file(), name
    # The page's script is the pinned file, served by the service itself.
    assert overview.CHART_JS == f"vendor/chart.js-{names['chart.js']['version']}/chart.umd.min.js"
    served = client.get(f"/console/static/{overview.CHART_JS}")
    assert served.status_code == 200
    assert b"Chart.js v4.6.1" in served.get_data()[:200]
    served.close()
