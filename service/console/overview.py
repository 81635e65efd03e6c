"""The fleet overview (SPEC §14): check-ins and new locks per day by reason, a world map of
locks by country, the distributors with most phones outside their territory, the locked devices
now, and links to the exports.

The figures are the ``GET /v1/stats`` document (``StatsService.report``), shaped here for the
page: the charts' series go into the page as JSON (``<script type="application/json">``, read
by ``static/overview.js``: no inline script under the console's CSP), the map is drawn here as
inline SVG from the vendored, pre-projected world atlas (static/vendor/README.md), so it needs
no script at all.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pycountry
from flask import Response, current_app, render_template, request, stream_with_context
from flask.typing import ResponseReturnValue

from service.console import present, security
from service.console.blueprint import bp
from service.devices.stats import MAX_DAYS

WORLD_MAP = (
    Path(__file__).resolve().parent
    / "static"
    / "vendor"
    / "world-atlas-2.0.2"
    / "countries-110m.svg-paths.json"
)
CHART_JS = "vendor/chart.js-4.6.1/chart.umd.min.js"
DEFAULT_DAYS = 30
# Shades of the map (1 = fewest locks, SHADES = most); 0 = none.
SHADES = 5
TOP_DISTRIBUTORS = 10
TOP_COUNTRIES = 12

REASON_LABELS = {
    "sanctioned_region": "Sanctioned region",
    "outside_territory": "Outside territory",
    "foreign_sim": "Foreign SIM",
    "grace_period": "Grace period",
    "unknown_device": "Unknown device",
    "manual_lock": "Locked by hand",
    "override_unlock": "Unlocked by hand",
}


def reason_label(code: str) -> str:
    """'outside_territory' -> 'Outside territory' (any unknown code in the same style)."""
    return REASON_LABELS.get(code) or code.replace("_", " ").capitalize()


# --- the period ------------------------------------------------------------------------------


def default_period(today: date) -> tuple[date, date]:
    """The last DEFAULT_DAYS days ending TODAY (UTC), as GET /v1/stats answers by default."""
    return today - timedelta(days=DEFAULT_DAYS - 1), today


def read_period(args: dict[str, str], today: date) -> tuple[date, date, str | None]:
    """(from, to, problem) from the query's ``from`` and ``to`` (YYYY-MM-DD, inclusive).

    A date that does not parse, a range that ends before it starts or is longer than MAX_DAYS
    days: the default period and a sentence saying what was wrong (the page still shows)."""
    start, end = default_period(today)
    raw_from, raw_to = args.get("from", "").strip(), args.get("to", "").strip()
    try:
        day_from = date.fromisoformat(raw_from) if raw_from else None
        day_to = date.fromisoformat(raw_to) if raw_to else None
    except ValueError:
        return start, end, "Dates are written YYYY-MM-DD; showing the last 30 days."
    day_to = day_to or today
    day_from = day_from or day_to - timedelta(days=DEFAULT_DAYS - 1)
    if day_to < day_from:
        return start, end, "“From” is after “to”; showing the last 30 days."
    if (day_to - day_from).days + 1 > MAX_DAYS:
        return start, end, f"At most {MAX_DAYS} days at a time; showing the last 30 days."
    return day_from, day_to, None


# --- shaping the report ----------------------------------------------------------------------


def _summed(days: list[dict], *path: str) -> Counter:
    """The mappings at PATH of every day, summed."""
    total: Counter = Counter()
    for day in days:
        node: Any = day
        for key in path:
            node = node.get(key) or {}
        total.update({k: int(v) for k, v in node.items()})
    return total


def chart_data(report: dict) -> dict:
    """The charts' series: dates, check-ins, and new locks per reason (reasons by total, most
    first, each with its label)."""
    days = report["days"]
    by_reason = _summed(days, "verdicts", "lock", "by_reason")
    reasons = [code for code, _ in by_reason.most_common()]
    return {
        "dates": [day["date"] for day in days],
        "checkins": [int(day["checkins"]) for day in days],
        "locks": [int(day["verdicts"]["lock"]["total"]) for day in days],
        "locks_by_reason": [
            {
                "code": code,
                "label": reason_label(code),
                "counts": [int(day["verdicts"]["lock"]["by_reason"].get(code, 0)) for day in days],
            }
            for code in reasons
        ],
    }


@cache
def world_map() -> dict:
    """The vendored, pre-projected atlas: viewBox and (ISO numeric id or None, name, path)."""
    return json.loads(WORLD_MAP.read_text())


@cache
def numeric_id(alpha_2: str) -> str | None:
    """'UA' -> '804' (the atlas's ids are ISO 3166-1 numeric); None for codes ISO lacks."""
    country = pycountry.countries.get(alpha_2=alpha_2.upper())
    return country.numeric if country is not None else None


def shade(count: int, most: int) -> int:
    """The map shade of COUNT locks when the most in one country is MOST: 0 for none, else
    1..SHADES on a log scale (a country with 1 lock stays visible next to one with 10,000)."""
    if count <= 0 or most <= 0:
        return 0
    if most == 1:
        return SHADES
    return max(1, math.ceil(SHADES * math.log1p(count) / math.log1p(most)))


def shade_legend(most: int) -> list[dict]:
    """(shade, lowest, highest count) of each shade some count from 1 to MOST takes."""
    legend = []
    span = math.log1p(max(most, 1))
    for level in range(1, SHADES + 1):
        # Start near the shade's edges on the log scale, then step to the exact ones.
        high = min(most, math.floor(math.expm1(span * level / SHADES)) + 1)
        while high >= 1 and shade(high, most) > level:
            high -= 1
        low = max(1, math.floor(math.expm1(span * (level - 1) / SHADES)) - 1)
        while low <= most and shade(low, most) < level:
            low += 1
        if low <= high and shade(low, most) == level:
            legend.append({"shade": level, "low": low, "high": high})
    return legend


def map_data(report: dict) -> dict:
    """The choropleth: every atlas country with its locks over the period (by_country of the
    new locks, summed over the days), its shade and title; the countries with locks that the
    1:110m atlas does not draw (Hong Kong, Singapore, …); the top countries."""
    by_country = _summed(report["days"], "verdicts", "lock", "by_country")
    most = max(by_country.values(), default=0)
    atlas = world_map()
    by_numeric: dict[str, int] = {}
    for code, count in by_country.items():
        number = numeric_id(code)
        if number is not None:
            by_numeric[number] = by_numeric.get(number, 0) + count
    drawn = {c["id"] for c in atlas["countries"] if c["id"]}
    shapes = []
    for country in atlas["countries"]:
        count = by_numeric.get(country["id"], 0) if country["id"] else 0
        noun = "lock" if count == 1 else "locks"
        shapes.append(
            {
                "id": country["id"] or "",
                "d": country["d"],
                "count": count,
                "shade": shade(count, most),
                "title": f"{country['name']}: {count:,} new {noun}",
            }
        )
    top = [
        {"code": code, "name": present.place_name(code), "count": count}
        for code, count in sorted(by_country.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return {
        "view_box": atlas["viewBox"],
        "shapes": shapes,
        "legend": shade_legend(most),
        "total": sum(by_country.values()),
        "top": top[:TOP_COUNTRIES],
        "more": max(0, len(top) - TOP_COUNTRIES),
        "not_drawn": [c for c in top if numeric_id(c["code"]) not in drawn],
    }


def distributor_rows(report: dict, names: dict[str, str]) -> list[dict]:
    """The distributors with most phones outside their territory: new locks over the period
    naming the distributor (by_distributor), and those locked now, most first."""
    period = _summed(report["days"], "verdicts", "lock", "by_distributor")
    now = report["locked_now"].get("by_distributor") or {}
    ids = set(period) | {k for k, v in now.items() if v}
    rows = [
        {
            "id": distributor,
            "name": names.get(distributor, ""),
            "period": period.get(distributor, 0),
            "now": int(now.get(distributor, 0)),
        }
        for distributor in ids
    ]
    rows.sort(key=lambda r: (-r["period"], -r["now"], r["id"]))
    return rows[:TOP_DISTRIBUTORS]


def totals(report: dict) -> dict:
    """The headline figures of the period and of now."""
    days = report["days"]
    unlocks = _summed(days, "overrides", "unlock")
    locks = _summed(days, "overrides", "lock")
    locked_now = report["locked_now"]
    return {
        "checkins": sum(int(d["checkins"]) for d in days),
        "new_locks": sum(int(d["verdicts"]["lock"]["total"]) for d in days),
        "unlocks": sum(unlocks.values()),
        "unlocks_by_role": sorted(unlocks.items(), key=lambda kv: (-kv[1], kv[0])),
        "manual_locks": sum(locks.values()),
        "unlock_codes": sum(int(d.get("unlock_codes", 0)) for d in days),
        "locked_now": int(locked_now.get("total", 0)),
        "locked_by_reason": [
            {"code": code, "label": reason_label(code), "count": int(count)}
            for code, count in sorted(
                (locked_now.get("by_reason") or {}).items(), key=lambda kv: (-kv[1], kv[0])
            )
            if count
        ],
        "locked_by_region": [
            {"code": code, "name": present.place_name(code), "count": int(count)}
            for code, count in sorted(
                (locked_now.get("by_region") or {}).items(), key=lambda kv: (-kv[1], kv[0])
            )
            if count
        ][:TOP_COUNTRIES],
    }


def _distributor_names() -> dict[str, str]:
    """Distributor id -> name, from the policy this worker serves."""
    policy = current_app.extensions["regionlock"].policies.current().policy
    return {d["id"]: d["name"] for d in policy.bundle.get("distributors", ())}


# --- the page --------------------------------------------------------------------------------


@bp.get("/overview")
@security.needs("stats:read")
def overview() -> ResponseReturnValue:
    """The fleet overview for the period in the query (default: the last 30 days)."""
    today = datetime.now(UTC).date()
    day_from, day_to, problem = read_period(request.args, today)
    report = current_app.extensions["regionlock"].stats.report(day_from, day_to)
    charts = chart_data(report)
    return render_template(
        "console/overview.html",
        day_from=day_from,
        day_to=day_to,
        today=today,
        problem=problem,
        presets=[
            {"label": label, "from": (today - timedelta(days=n - 1)).isoformat()}
            for label, n in (("7 days", 7), ("30 days", 30), ("90 days", 90), ("1 year", 365))
        ],
        totals=totals(report),
        charts=charts,
        world=map_data(report),
        distributors=distributor_rows(report, _distributor_names()),
        chart_js=CHART_JS,
    )


# --- the exports ------------------------------------------------------------------------------


def _csv_answer(pieces: Iterator[str], filename: str) -> Response:
    """A streamed CSV download (the generator's pieces, never the whole file in memory)."""
    return Response(
        stream_with_context(pieces),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _filter(name: str, limit: int = 64) -> str | None:
    value = request.args.get(name, "").strip()[:limit]
    return value or None


@bp.get("/reports/locked-devices.csv")
@security.needs("reports:export")
def export_locked_devices() -> ResponseReturnValue:
    """The devices locked now as CSV (SPEC §14), filtered by reason, region, distributor;
    the export is audited (by StatsService, as through the API)."""
    user = security.current_user()
    pieces = current_app.extensions["regionlock"].stats.locked_devices_csv(
        user.name,
        user.role,
        reason=_filter("reason"),
        region=_filter("region"),
        distributor=_filter("distributor"),
    )
    return _csv_answer(pieces, "locked-devices.csv")


@bp.get("/reports/audit.csv")
@security.needs("reports:export")
def export_audit() -> ResponseReturnValue:
    """The audit trail as CSV, with the audit page's filters (IMEI, actor, action); audited."""
    user = security.current_user()
    imei = (_filter("imei", 40) or "").replace(" ", "").replace("-", "")
    pieces = current_app.extensions["regionlock"].stats.audit_csv(
        user.name,
        user.role,
        imei=imei or None,
        entry_actor=_filter("actor", 100),
        action=_filter("action"),
    )
    return _csv_answer(pieces, "audit.csv")
