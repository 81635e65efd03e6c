"""deploy/grafana/regionlock.json (SPEC §14): every PromQL query of the dashboard parses, and
every metric it names is one a real app exports at /metrics (a typo in a metric name, or a
metric renamed in service/web/metrics.py, fails here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, bearer
from tests.imeis import HK, UNKNOWN

DASHBOARD = ROOT / "deploy" / "grafana" / "regionlock.json"
# Series Prometheus itself adds to every scrape target, not exported by the service.
PROMETHEUS_SERIES = frozenset({"up"})
# The dashboard's variables, replaced by a value of their kind before parsing (as Grafana does).
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "${job}": ".*", "$job": ".*"}
# Sample names Prometheus stores for each metric type of the exposition format.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "untyped": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
}


def exported_series(text: str) -> set[str]:
    """Every series name a scrape of TEXT gives Prometheus: each family's samples, and the
    names its type implies (a labelled counter with no sample yet still declares its name)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of DASHBOARD."""

    def walk_panels(panels: list[dict]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", ()):
                yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
            yield from walk_panels(panel.get("panels", ()))

    yield from walk_panels(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
            assert found, f"variable {variable['name']}: unexpected query"
            yield f"variable {variable['name']}", found.group(1)


def metric_names(expr: str) -> set[str]:
    """The metric names EXPR selects (by name or by a __name__ matcher); raises on bad PromQL."""
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def unknown_metrics(dashboard: dict, exported: set[str]) -> dict[str, set[str]]:
    """where -> metric names that no scrape gives, for every query of DASHBOARD."""
    unknown = {}
    for where, expr in queries(dashboard):
        missing = metric_names(expr) - exported - PROMETHEUS_SERIES
        if missing:
            unknown[where] = missing
    return unknown


@pytest.fixture
def exported(client, tokens) -> set[str]:
    """The series names of a real app's /metrics after check-ins of each kind."""
    device = bearer(tokens["device"])
    client.post("/v1/checkin", json={"imei": UNKNOWN, "sim": {"network": "36801"}}, headers=device)
    client.post("/v1/checkin", json={"imei": HK, "sim": {"network": "45400"}}, headers=device)
    client.post("/v1/checkin", json={"imei": HK})  # 401
    response = client.get("/metrics")
    assert response.status_code == 200
    return exported_series(response.get_data(as_text=True))


def test_every_query_names_a_metric_the_service_exports(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    assert len(list(queries(dashboard))) >= 15
    assert unknown_metrics(dashboard, exported) == {}
    # The dashboard covers what the issue asks for.
    used = set().union(*(metric_names(expr) for _, expr in queries(dashboard)))
    assert {
        "regionlock_http_requests_total",
        "regionlock_decision_seconds_bucket",
        "regionlock_verdicts_total",
        "regionlock_redis_errors_total",
        "regionlock_policy_version",
    } <= used


def test_a_misspelled_metric_is_caught(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    target = dashboard["panels"][1]["targets"][0]
    target["expr"] = target["expr"].replace(
        "regionlock_http_requests_total", "regionlock_http_request_total"
    )
    assert unknown_metrics(dashboard, exported) == {
        f"panel {dashboard['panels'][1]['title']!r} A": {"regionlock_http_request_total"}
    }
    # A histogram's name alone is not a series Prometheus stores.
    assert "regionlock_decision_seconds" not in exported
    assert "regionlock_decision_seconds_bucket" in exported


def test_bad_promql_is_refused():
    with pytest.raises(ValueError):
        metric_names("sum(rate(regionlock_verdicts_total[5m])")


def test_policy_version_gauge_follows_the_served_version(app, client, tokens):
    client.post("/v1/checkin", json={"imei": HK}, headers=bearer(tokens["device"]))
    served = app.extensions["regionlock"].policies.loaded_version()
    text = client.get("/metrics").get_data(as_text=True)
    assert f"regionlock_policy_version {float(served)}" in text


def test_every_panel_has_a_unique_id_and_a_place():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
