"""Operations (SPEC §7): /metrics, structured JSON logs with request ids, /docs, and
`regionlock serve` itself (several granian workers, one metrics view)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from service.store.server import free_port
from service.store.tokens import TokenStore
from service.web.logs import request_id_for
from tests.conftest import ROOT, bearer
from tests.imeis import HK, UNKNOWN

HAVANA = {"lat": 23.1136, "lon": -82.3666}


def _sample(app, name: str, **labels) -> float:
    registry = app.extensions["regionlock"].metrics.registry
    return registry.get_sample_value(name, labels) or 0.0


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# --- metrics -----------------------------------------------------------------------------


def test_metrics_count_requests_verdicts_reasons_and_latency(app, client, tokens):
    requests_before = _sample(
        app, "regionlock_http_requests_total", endpoint="/v1/checkin", method="POST", status="200"
    )
    refused_before = _sample(
        app, "regionlock_http_requests_total", endpoint="/v1/checkin", method="POST", status="401"
    )
    locks_before = _sample(app, "regionlock_verdicts_total", verdict="lock")
    sanctions_before = _sample(app, "regionlock_verdict_reasons_total", code="sanctioned_region")
    decisions_before = _sample(app, "regionlock_decision_seconds_count")

    device = bearer(tokens["device"])
    client.post("/v1/checkin", json={"imei": UNKNOWN, "gps": HAVANA}, headers=device)
    client.post("/v1/checkin", json={"imei": HK}, headers=device)
    client.post("/v1/checkin", json={"imei": HK})

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert "regionlock_decision_seconds_bucket" in text
    assert (
        _sample(
            app,
            "regionlock_http_requests_total",
            endpoint="/v1/checkin",
            method="POST",
            status="200",
        )
        == requests_before + 2
    )
    assert (
        _sample(
            app,
            "regionlock_http_requests_total",
            endpoint="/v1/checkin",
            method="POST",
            status="401",
        )
        == refused_before + 1
    )
    assert _sample(app, "regionlock_verdicts_total", verdict="lock") == locks_before + 1
    assert _sample(app, "regionlock_verdict_reasons_total", code="sanctioned_region") == (
        sanctions_before + 1
    )
    assert _sample(app, "regionlock_decision_seconds_count") == decisions_before + 2


def test_metrics_label_unknown_paths_as_one_series(app, client):
    before = _sample(
        app, "regionlock_http_requests_total", endpoint="unmatched", method="GET", status="404"
    )
    for n in range(3):
        client.get(f"/no/such/page/{n}")
    after = _sample(
        app, "regionlock_http_requests_total", endpoint="unmatched", method="GET", status="404"
    )
    assert after == before + 3


def test_invented_methods_and_unknown_paths_add_no_series(app, client):
    """Issue 12.2: every label value a client can choose is folded into one."""

    def series() -> set[tuple]:
        registry = app.extensions["regionlock"].metrics.registry
        return {
            tuple(sorted(sample.labels.items()))
            for metric in registry.collect()
            if metric.name == "regionlock_http_requests"
            for sample in metric.samples
            if sample.name == "regionlock_http_requests_total"
        }

    # One of each kind first, so their series exist.
    client.open("/v1/checkin", method="BREW")
    client.open("/nowhere", method="BREW")
    client.open("/no/such/page", method="GET")
    before = series()
    for n in range(25):
        client.open("/v1/checkin", method=f"INVENTED{n}")
        client.open(f"/nowhere/{n}", method=f"X{n}")
        client.open(f"/no/such/page/{n}", method="GET")
    assert series() == before
    labels = {dict(s)["method"] for s in before}
    assert labels <= {"GET", "other"}


def test_metrics_count_redis_errors(make_app, tokens):
    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    before = _sample(app, "regionlock_redis_errors_total", kind="ConnectionError")
    response = app.test_client().post(
        "/v1/checkin", json={"imei": HK}, headers=bearer(tokens["device"])
    )
    assert response.status_code == 503
    assert _sample(app, "regionlock_redis_errors_total", kind="ConnectionError") == before + 1


def test_each_app_counts_in_its_own_registry(make_app):
    first, second = make_app(), make_app()
    first.test_client().get("/healthz")
    labels = {"endpoint": "/healthz", "method": "GET", "status": "200"}
    assert _sample(first, "regionlock_http_requests_total", **labels) == 1
    assert _sample(second, "regionlock_http_requests_total", **labels) == 0


_FORKED_WORKERS = """
import os, sys
from pathlib import Path
import prometheus_client  # first, before any folder is known: the order must not matter
assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
from service.web.metrics import Metrics
metrics = Metrics(Path(sys.argv[1]))
metrics.observe_request("/v1/checkin", "POST", 200)
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        metrics.observe_request("/v1/checkin", "POST", 200)
        os._exit(0)
    os.waitpid(pid, 0)
sys.stdout.write(metrics.render()[0].decode())
"""


def test_multiprocess_metrics_whatever_was_imported_first(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    folder = tmp_path / "prometheus"
    done = subprocess.run(
        [sys.executable, "-c", _FORKED_WORKERS, str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [line] = [
        line
        for line in done.stdout.splitlines()
        if line.startswith("regionlock_http_requests_total{")
    ]
    assert float(line.rsplit(" ", 1)[1]) == 3.0  # the parent and both forked workers
    assert len(list(folder.glob("counter_*.db"))) == 3


# --- logs --------------------------------------------------------------------------------


def test_one_json_line_per_request_with_its_id(client, tokens, captured_logs):
    response = client.post(
        "/v1/checkin?x=1",
        json={"imei": HK},
        headers={**bearer(tokens["device"]), "X-Request-Id": "fw-7f3a.2:b"},
    )
    assert response.headers["X-Request-Id"] == "fw-7f3a.2:b"
    [line] = [e for e in _lines(captured_logs) if e["msg"] == "request"]
    assert line["request_id"] == "fw-7f3a.2:b"
    assert line["method"] == "POST" and line["path"] == "/v1/checkin"  # no query string
    assert line["status"] == 200 and line["level"] == "info"
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["ts"].endswith("Z")


@pytest.mark.parametrize("given", ["", "has space", "x" * 129, "<script>", "ümlaut", "a;b", None])
def test_insane_request_ids_are_replaced(client, given):
    headers = {"X-Request-Id": given} if given is not None else {}
    issued = client.get("/healthz", headers=headers).headers["X-Request-Id"]
    assert issued != given and len(issued) == 32 and int(issued, 16) >= 0


def test_other_lines_of_a_request_carry_its_id(make_app, tokens, captured_logs):
    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    app.test_client().post(
        "/v1/checkin",
        json={"imei": HK},
        headers={**bearer(tokens["device"]), "X-Request-Id": "req-42"},
    )
    lines = _lines(captured_logs)
    outage = [e for e in lines if e["msg"].startswith("redis unavailable")]
    assert outage and all(e["request_id"] == "req-42" for e in outage)
    assert [e["status"] for e in lines if e["msg"] == "request"] == [503]


def test_request_id_helper():
    assert request_id_for("abc-123") == "abc-123"
    assert request_id_for("a b") != "a b"


# --- docs --------------------------------------------------------------------------------


def test_docs_page_and_openapi_document(client):
    page = client.get("/docs")
    assert page.status_code == 200 and b"swagger-ui" in page.data
    spec = client.get("/v1/openapi.json").get_json()
    assert "/v1/keys" in spec["paths"] and "/v1/checkin" in spec["paths"]
    checkin = spec["paths"]["/v1/checkin"]["post"]
    assert {"200", "400", "401", "403", "413", "422", "429", "503"} <= set(checkin["responses"])
    assert "Retry-After" in checkin["responses"]["503"]["headers"]
    assert spec["paths"]["/v1/keys"]["get"]["security"] == [{"bearer": []}]


def test_405_names_the_allowed_methods(client):
    response = client.get("/v1/checkin")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert {m.strip() for m in response.headers["Allow"].split(",")} >= {"POST", "OPTIONS"}
    console = client.put("/console/devices")
    assert console.status_code == 405 and "GET" in console.headers["Allow"]


def test_openapi_states_the_imei_pattern(client):
    import re

    spec = client.get("/v1/openapi.json").get_json()
    paths = [p for p in spec["paths"] if "{imei}" in p]
    assert len(paths) >= 5 and "/v1/devices/{imei}/activation" in paths
    for path in paths:
        # Path parameters are stated once per path, for all of its operations.
        [imei] = [p for p in spec["paths"][path]["parameters"] if p["name"] == "imei"]
        assert imei["in"] == "path"
        pattern = re.compile(imei["schema"]["pattern"])
        assert pattern.fullmatch(HK) and pattern.fullmatch(f"{HK[:2]}-{HK[2:8]} {HK[8:]}")
        assert not pattern.fullmatch(HK[:-1]) and not pattern.fullmatch(f"{HK[:-1]}x")
    body = spec["components"]["schemas"]["Checkin"]["properties"]["imei"]
    assert body["pattern"] == imei["schema"]["pattern"]
    assert re.fullmatch(
        spec["components"]["schemas"]["Verdict"]["properties"]["imei"]["pattern"], HK
    )


def test_path_imei_is_read_as_its_pattern_says(client, tokens):
    agent = bearer(tokens["agent"])
    dashed = client.get(f"/v1/devices/{HK[:2]}-{HK[2:8]}%20{HK[8:]}", headers=agent)
    assert dashed.status_code == 404  # an IMEI, never seen
    for odd in (f"%09{HK}", f"{HK}%0A", f"{HK}%C2%A0"):
        response = client.get(f"/v1/devices/{odd}", headers=agent)
        assert response.status_code == 422, odd
        assert response.get_json()["error"]["fields"] == {"imei": ["must be 15 digits"]}


# --- the real server ---------------------------------------------------------------------


def _get(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_serve_with_several_workers(redis, redis_url, tmp_path: Path):
    """`regionlock serve`: JSON logs on stderr without tokens, metrics summed over workers."""
    port = free_port()
    env = {
        **os.environ,
        "REGIONLOCK_REDIS_URL": redis_url,
        "REGIONLOCK_BIND": f"127.0.0.1:{port}",
        "REGIONLOCK_VAR_DIR": str(tmp_path / "var"),
        "REGIONLOCK_POLICIES": str(ROOT / "policies"),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    token = TokenStore(redis).create(name="fw-serve", role="device")
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--workers", "3", "--threads", "2"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _get(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        statuses = [_get(f"{base}/v1/checkin", token, {"imei": HK})[0] for _ in range(30)]
        assert statuses == [200] * 30
        # Whichever worker answers, it reports all of them.
        for _ in range(4):
            status, text = _get(f"{base}/metrics")
            assert status == 200
            counted = [
                line
                for line in text.decode().splitlines()
                if line.startswith("regionlock_http_requests_total{")
                and 'endpoint="/v1/checkin"' in line
                and 'status="200"' in line
            ]
            assert len(counted) == 1 and float(counted[0].rsplit(" ", 1)[1]) == 30.0
        assert (tmp_path / "var" / "prometheus").is_dir()
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert sum(1 for e in entries if e.get("path") == "/v1/checkin") == 30
    assert any(e.get("logger") == "_granian" for e in entries)
    assert token not in stderr.read_text()


def test_docs_assets_come_from_the_service_under_a_strict_csp(client):
    """Issue 12.14: Swagger UI was loaded unpinned from a CDN, under a CSP allowing any script."""
    page = client.get("/docs")
    html = page.get_data(as_text=True)
    assert "cdn" not in html and "http://" not in html and "https://" not in html
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "<script>" not in html  # no inline script: every <script> has a src
    srcs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(srcs) == 4 and all(s.startswith("/docs/assets/") for s in srcs)
    for src in srcs:
        asset = client.get(src)
        assert asset.status_code == 200, src
        assert asset.data
    assert client.get("/docs/assets/swagger-ui-bundle.js").mimetype in (
        "application/javascript",
        "text/javascript",
    )
    # Only the files the page needs: nothing else of the package, no path tricks.
    assert client.get("/docs/assets/swagger-editor-bundle.js").status_code == 404
    assert client.get("/docs/assets/..%2F__init__.py").status_code == 404
