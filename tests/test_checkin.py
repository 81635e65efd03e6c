"""POST /v1/checkin end to end: real Redis, a GeoIP database built with mmdb-writer (SPEC §4)."""

from __future__ import annotations

import orjson
import pytest

from service.store import keys
from tests.conftest import bearer
from tests.imeis import EU, HK, HK2, UNKNOWN

HAVANA = {"lat": 23.1136, "lon": -82.3666}
SIMFEROPOL = {"lat": 44.9521, "lon": 34.1024}
SEVASTOPOL = {"lat": 44.6166, "lon": 33.5254}
KYIV = {"lat": 50.4501, "lon": 30.5234}
PARIS = {"lat": 48.8566, "lon": 2.3522}
HONG_KONG = {"lat": 22.3193, "lon": 114.1694}
NEW_YORK = {"lat": 40.7128, "lon": -74.0060}


@pytest.fixture
def checkin(client, tokens, geo):
    """POST a check-in from the client IP of a labelled place (or a literal address)."""

    def run(imei, ip=None, expect=200, headers=None, **body):
        address = geo["ips"].get(ip, ip) if ip else "127.0.0.1"
        response = client.post(
            "/v1/checkin",
            json={"imei": imei, **body},
            headers={**bearer(tokens["device"]), **(headers or {})},
            environ_base={"REMOTE_ADDR": address},
        )
        assert response.status_code == expect, response.get_json()
        return response.get_json()

    return run


def codes(answer):
    return [r["code"] for r in answer["reasons"]]


# --- the seed stories -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "kwargs", "signals"),
    [
        ("ip", {"ip": "cuba"}, {"ip": "CU"}),
        ("gps", {"gps": HAVANA}, {"gps": "CU-03"}),
        ("network", {"sim": {"network": "36801"}}, {"network": "CU"}),
        ("ipv6", {"ip": "ipv6"}, {"ip": "CU"}),
    ],
)
def test_phone_in_havana_is_locked(checkin, how, kwargs, signals):
    answer = checkin(UNKNOWN, **kwargs)
    assert answer["verdict"] == "lock", how
    [reason] = answer["reasons"]
    assert reason["code"] == "sanctioned_region" and reason["rule"] == "sanctions"
    assert reason["region"] == "CU"
    got = {k: v[:2] for k, v in reason["signals"].items()}
    assert got == {k: v[:2] for k, v in signals.items()}


@pytest.mark.parametrize(
    ("kwargs", "region"),
    [
        ({"ip": "crimea"}, "UA-43"),
        ({"gps": SIMFEROPOL}, "UA-43"),
        ({"ip": "sevastopol"}, "UA-40"),
        ({"gps": SEVASTOPOL}, "UA-40"),
    ],
)
def test_crimea_and_sevastopol_are_locked(checkin, kwargs, region):
    answer = checkin(UNKNOWN, **kwargs)
    assert answer["verdict"] == "lock"
    assert answer["reasons"][0]["region"] == region


@pytest.mark.parametrize("kwargs", [{"ip": "kyiv"}, {"gps": KYIV}])
def test_kyiv_is_not_crimea(checkin, kwargs):
    answer = checkin(UNKNOWN, **kwargs)
    assert answer["verdict"] == "allow" and answer["reasons"] == []


def test_iranian_sim_roaming_in_france_is_allowed(checkin):
    answer = checkin(
        EU, ip="france", gps=PARIS, sim={"imsi": "432111234567890", "network": "20801"}
    )
    assert answer["verdict"] == "allow"
    assert answer["reasons"] == []


def test_hong_kong_phone_activated_in_the_us_stays_locked(checkin):
    first = checkin(HK, ip="us", gps=NEW_YORK, sim={"network": "310260"})
    assert first["verdict"] == "lock"
    [reason] = first["reasons"]
    assert reason["code"] == "outside_territory" and reason["distributor"] == "hk-global"
    assert set(reason["territories"]) == {"HK", "MO"}
    back_home = checkin(HK, ip="hong_kong", gps=HONG_KONG, sim={"network": "45400"})
    assert back_home["verdict"] == "lock"
    assert codes(back_home) == ["outside_territory"]


def test_hong_kong_phone_activated_at_home_may_travel(checkin):
    assert checkin(HK2, ip="hong_kong", sim={"network": "45400"})["verdict"] == "allow"
    abroad = checkin(HK2, ip="france", gps=PARIS, sim={"network": "20801"})
    assert abroad["verdict"] == "allow"


# --- response shape, state ------------------------------------------------------------


def test_response_fields(checkin):
    answer = checkin(HK, ip="hong_kong")
    assert set(answer) == {
        "imei",
        "verdict",
        "reasons",
        "observed",
        "lock_at",
        "override",
        "policy_version",
        "next_checkin_s",
        "decided_at",
        "message",  # SPEC §10: null when allowed
        "offline",  # SPEC §11: null when the bundle has no offline block
        "nonce",
        "kid",
        "signature",
    }
    assert answer["message"] is None
    assert answer["nonce"] is None
    assert answer["policy_version"] == 1
    assert answer["next_checkin_s"] == 86400
    assert answer["decided_at"].endswith("Z")


def test_imei_with_dashes_and_spaces(checkin):
    dashed = f"{HK[:2]}-{HK[2:8]}-{HK[8:14]} {HK[14]}"
    assert checkin(dashed)["imei"] == HK


def test_what_is_stored_is_places_not_raw_evidence(checkin, redis, geo):
    checkin(
        HK,
        ip="hong_kong",
        gps=HONG_KONG,
        sim={"imsi": "454001234567890", "iccid": "8985200000000000002", "network": "45400"},
    )
    everything = repr({k: _read(redis, k) for k in redis.keys("*")})
    for secret in (
        "454001234567890",
        "8985200000000000002",
        geo["ips"]["hong_kong"],
        "22.3193",
        "114.1694",
    ):
        assert secret not in everything, secret
    facts = orjson.loads(redis.hget(keys.device(HK), "facts"))
    assert {k: v[:2] for k, v in facts["places"].items()} == {
        "ip": "HK",
        "gps": "HK",
        "network": "HK",
        "sim": "HK",
    }
    assert orjson.loads(redis.hget(keys.device(HK), "device"))["sim_operator"] == "45400"


def _read(redis, key):
    kind = redis.type(key)
    if kind == "hash":
        return redis.hgetall(key)
    if kind == "list":
        return redis.lrange(key, 0, -1)
    if kind == "stream":
        return redis.xrange(key)
    if kind == "string":
        return redis.get(key)
    return kind


def test_decision_history_is_bounded_and_merges_repeats(make_app, tokens, redis):
    app = make_app(decisions_kept=3)
    client = app.test_client()

    def checkin(network):
        client.post(
            "/v1/checkin",
            json={"imei": HK, "sim": {"network": network}},
            headers=bearer(tokens["device"]),
        )

    for network in ("45400", "45400", "45400"):  # the same outcome three times: one entry
        checkin(network)
    history = app.extensions["regionlock"].devices.decisions(HK)
    assert [(d["places"], d["count"]) for d in history] == [({"network": "HK"}, 3)]
    assert history[0]["since"] <= history[0]["at"]
    for network in ("45500", "20801", "46000", "45400"):  # MO, FR, CN, HK: all different
        checkin(network)
    history = app.extensions["regionlock"].devices.decisions(HK)
    assert [d["places"]["network"] for d in history] == ["HK", "CN", "FR"]
    assert [d["count"] for d in history] == [1, 1, 1]
    assert redis.xlen(keys.CHECKIN_FACTS) == 7


def test_client_ip_from_trusted_proxy_only(make_app, tokens, geo):
    app = make_app(trusted_proxies="10.0.0.0/8")
    client = app.test_client()
    xff = {"X-Forwarded-For": f"{geo['ips']['cuba']}, 10.1.1.1"}

    def verdict(peer):
        response = client.post(
            "/v1/checkin",
            json={"imei": UNKNOWN},
            headers={**bearer(tokens["device"]), **xff},
            environ_base={"REMOTE_ADDR": peer},
        )
        return response.get_json()["verdict"]

    assert verdict("10.2.2.2") == "lock"  # proxy trusted: right-most untrusted hop
    assert verdict(geo["ips"]["france"]) == "allow"  # untrusted peer: header ignored


def test_body_cannot_claim_an_ip(checkin):
    assert (
        checkin(UNKNOWN, ip="france", client_ip="152.206.12.34", ip_address="152.206.12.34")[
            "verdict"
        ]
        == "allow"
    )


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"imei"}),
        ({"imei": "35387923425263"}, {"imei"}),
        ({"imei": "353879234252634"}, {"imei"}),
        ({"imei": 353879234252633}, {"imei"}),
        ({"imei": "35387923425263x"}, {"imei"}),
        ({"imei": HK, "sim": {"imsi": "12345"}}, {"sim.imsi"}),
        ({"imei": HK, "sim": {"iccid": "8985200000000000007"}}, {"sim.iccid"}),
        ({"imei": HK, "sim": {"network": "3680"}}, {"sim.network"}),
        ({"imei": HK, "gps": {"lat": 91, "lon": 0}}, {"gps.lat"}),
        ({"imei": HK, "gps": {"lat": 0, "lon": -180.5}}, {"gps.lon"}),
        ({"imei": HK, "gps": {"lat": 10}}, {"gps.lon"}),
        ({"imei": HK, "gps": {"lat": True, "lon": 1}}, {"gps.lat"}),
        ({"imei": HK, "gps": "here"}, {"gps"}),
        ({"imei": HK, "sim": [1, 2]}, {"sim"}),
        (
            {"imei": "1", "sim": {"imsi": "x"}, "gps": {"lat": 100, "lon": 0}},
            {"imei", "sim.imsi", "gps.lat"},
        ),
        ({"imei": HK, "model": "x" * 65}, {"model"}),
    ],
)
def test_invalid_input_is_422_naming_every_field(client, tokens, redis, body, fields):
    response = client.post("/v1/checkin", json=body, headers=bearer(tokens["device"]))
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert set(error["fields"]) == fields
    assert redis.keys("rl:dev:*") == [] and redis.xlen(keys.CHECKIN_FACTS) == 0


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"imei=353879234252633", "application/x-www-form-urlencoded", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"[1, 2, 3]", "application/json", 422),
        (b'"text"', "application/json", 422),
        (b"null", "application/json", 422),
        (b"", "application/json", 422),
        (b'{"imei": NaN}', "application/json", 400),
    ],
)
def test_bodies_that_are_not_a_json_object(client, tokens, redis, data, content_type, status):
    response = client.post(
        "/v1/checkin", data=data, content_type=content_type, headers=bearer(tokens["device"])
    )
    assert response.status_code == status
    assert "error" in response.get_json()
    assert redis.keys("rl:dev:*") == []


def test_unknown_fields_are_ignored(checkin):
    answer = checkin(HK, ip="hong_kong", firmware_feature="x", sim={"network": "45400", "eid": 1})
    assert answer["verdict"] == "allow"


def test_redis_down_gives_503_with_retry_after(make_app, tokens):
    app = make_app(redis_url="redis://127.0.0.1:1/0")
    response = app.test_client().post(
        "/v1/checkin", json={"imei": HK}, headers=bearer(tokens["device"])
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.get_json()["error"]["code"] == "unavailable"
    assert app.test_client().get("/readyz").status_code == 503


def test_health_and_ready(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["policy_version"] == 1
