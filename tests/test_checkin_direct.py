"""The server's direct check-in (api/checkin/fast.py) answers what the Flask route answers.

Each case sends the same request both ways on the same app and Redis: through Flask's test
client, and to ``DirectCheckin.handle`` as the RSGI bridge calls it. The direct path answers
the ordinary check-in and the errors of deciding it (rate limits, proofs, a revoked token, a
lost Redis) itself, with the Flask route's status, headers and body (the signature and the
time aside); everything else it leaves to Flask (None) before anything is read or written.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from service.api.checkin.fast import DirectCheckin
from service.crypto.signing import verify_with_jwk
from service.store import keys
from service.store.server import EmbeddedRedis
from service.store.tokens import TokenStore
from tests.conftest import bearer
from tests.imeis import HK, UNKNOWN, UNKNOWN2, imei

PEER = "203.186.10.20"  # a Hong Kong address in the test GeoIP database
# Per response: set by each answer, not by what was asked.
_VARYING = {"X-Request-Id", "Content-Length"}


class _Both:
    """A DirectCheckin called blocking (``handle``) or on an event loop (``handle_async``,
    whose Redis calls go through store/coalesced.py)."""

    def __init__(self, app, coalesced: bool):
        self.direct = DirectCheckin(app)
        self.coalesced = coalesced

    def handle(self, *args):
        if not self.coalesced:
            return self.direct.handle(*args)
        return asyncio.run(self.direct.handle_async(*args))


@pytest.fixture(params=["blocking", "coalesced"])
def mode(request):
    return request.param == "coalesced"


@pytest.fixture
def setup(make_app, redis, tokens, mode):
    app = make_app(token_cache_s=0.5, checkin_device_limit=(3, 60))
    direct = _Both(app, mode)
    # The worker verified the token once (the first check-in of it goes to Flask).
    app.extensions["regionlock"].tokens.for_checkin(tokens["device"])
    return app, direct, tokens


def _flask(app, token, body: bytes, **headers):
    headers = {**(bearer(token) if token else {}), "Content-Type": "application/json", **headers}
    response = app.test_client().post(
        "/v1/checkin", data=body, headers=headers, environ_base={"REMOTE_ADDR": PEER}
    )
    return response.status_code, dict(response.headers), response.get_json()


def _direct(direct, token, body: bytes, **headers):
    lowered = {name.lower(): value for name, value in headers.items()}
    if token:
        lowered["authorization"] = f"Bearer {token}"
    answer = direct.handle(lowered, body, PEER, False)
    if answer is None:
        return None
    status, pairs, content = answer
    assert len({name.lower() for name, _ in pairs}) == len(pairs), "a header sent twice"
    return status, dict(pairs), orjson.loads(content)


def _same_answer(flask, direct) -> None:
    """Same status and headers; same body but for when it was decided and its signature."""
    assert direct[0] == flask[0]
    assert {k: v for k, v in direct[1].items() if k not in _VARYING} == {
        k: v for k, v in flask[1].items() if k not in _VARYING
    }
    assert len(direct[1]["X-Request-Id"]) == 32
    varying = {"decided_at", "signature"}
    assert {k: v for k, v in direct[2].items() if k not in varying} == {
        k: v for k, v in flask[2].items() if k not in varying
    }


def _body(device: str, **more) -> bytes:
    return orjson.dumps({"imei": device, "sim": {"network": "45400"}, **more})


@pytest.mark.parametrize(
    "tac, extra",
    [
        ("35387923", {}),  # hk-global: allowed at home
        ("35875421", {}),  # eu-distri: a gray import in Hong Kong
        ("49015420", {"sim": {"network": "36801"}}),  # nobody's: Cuba locks it
        ("86012345", {"imeis": [UNKNOWN2], "locale": "es-CU", "nonce": "n-1"}),
    ],
)
def test_a_check_in_is_answered_as_the_flask_route_answers_it(setup, redis, tac, extra):
    """Two new phones of one kind, one each way: the same answer (but for the IMEI)."""
    app, direct, tokens = setup
    one, other = imei(tac + "000001"), imei(tac + "000002")
    flask = _flask(app, tokens["device"], _body(one, **extra))
    assert flask[0] == 200
    answer = _direct(direct, tokens["device"], _body(other, **extra))
    assert answer[2].pop("imei") == other and flask[2].pop("imei") == one
    _same_answer(flask, answer)
    keyset = app.test_client().get("/v1/keys", headers=bearer(tokens["device"])).get_json()
    jwks = {k["kid"]: k for k in keyset["keys"]}
    assert verify_with_jwk({**answer[2], "imei": other}, jwks[answer[2]["kid"]])
    # Recorded as the Flask route records it.
    devices = app.extensions["regionlock"].devices

    def recorded(device):
        return [
            {k: v for k, v in entry.items() if k not in ("at", "since")}
            for entry in devices.decisions(device)
        ]

    assert recorded(other) == recorded(one) != []


def test_the_request_id_a_caller_sends_is_echoed(setup):
    app, direct, tokens = setup
    answer = _direct(direct, tokens["device"], _body(HK), **{"X-Request-Id": "abc-123"})
    assert answer[1]["X-Request-Id"] == "abc-123"
    answer = _direct(direct, tokens["device"], _body(HK), **{"X-Request-Id": "no\nway"})
    assert answer[1]["X-Request-Id"] != "no\nway"


def test_over_tls_the_answer_carries_hsts(setup):
    app, direct, tokens = setup
    status, pairs, _ = direct.handle(
        {"authorization": f"Bearer {tokens['device']}"}, _body(HK), PEER, True
    )
    assert status == 200
    assert dict(pairs)["Strict-Transport-Security"].startswith("max-age=")


def test_a_device_over_its_rate_gets_the_same_429(setup):
    app, direct, tokens = setup
    for _ in range(3):
        assert _flask(app, tokens["device"], _body(HK))[0] == 200
    flask = _flask(app, tokens["device"], _body(HK))
    answer = _direct(direct, tokens["device"], _body(HK))
    assert flask[0] == 429
    _same_answer(flask, answer)


def test_a_revoked_token_is_refused_at_once(setup, redis):
    app, direct, tokens = setup
    assert _direct(direct, tokens["device"], _body(HK))[0] == 200
    TokenStore(redis).revoke("test-device")
    answer = _direct(direct, tokens["device"], _body(UNKNOWN))
    flask = _flask(app, tokens["device"], _body(UNKNOWN))
    assert answer[0] == 401
    _same_answer(flask, answer)
    assert not redis.exists(keys.device(UNKNOWN))


@pytest.mark.parametrize(
    "case",
    ["no token", "unknown token", "role without check-ins", "not json", "invalid field", "empty"],
)
def test_what_the_direct_path_does_not_answer_goes_to_flask_untouched(setup, redis, case):
    app, direct, tokens = setup
    token, body = tokens["device"], _body(UNKNOWN)
    if case == "no token":
        token = None
    elif case == "unknown token":
        token = "rl_not-a-token"
    elif case == "role without check-ins":
        token = tokens["auditor"]
        app.extensions["regionlock"].tokens.for_checkin(token)
    elif case == "not json":
        body = b'{"imei": '
    elif case == "invalid field":
        body = _body(UNKNOWN[:-1] + str((int(UNKNOWN[-1]) + 1) % 10))  # a wrong Luhn digit
    else:
        body = b""
    before = redis.dbsize()
    assert _direct(direct, token, body) is None
    assert redis.dbsize() == before  # nothing read into counters, nothing written
    assert _flask(app, token, body)[0] in (400, 401, 403, 422)


def test_a_required_proof_that_is_missing_gets_the_same_401(make_app, tokens, mode):
    app = make_app(token_cache_s=0.5, device_proof="required")
    direct = _Both(app, mode)
    app.extensions["regionlock"].tokens.for_checkin(tokens["device"])
    flask = _flask(app, tokens["device"], _body(HK))
    answer = _direct(direct, tokens["device"], _body(HK))
    assert flask[0] == 401 and flask[2]["error"]["code"] == "device_proof"
    flask[2]["error"].pop("server_time"), answer[2]["error"].pop("server_time")
    _same_answer(flask, answer)


def test_a_lost_redis_is_a_503_then_flask_answers_while_the_breaker_is_open(
    make_app, tokens, tmp_path, mode
):
    server = EmbeddedRedis(tmp_path / "lone", appendonly=False).start()
    try:
        token = TokenStore(__import__("redis").Redis.from_url(server.url)).create("d", "device")
        app = make_app(redis_url=server.url, token_cache_s=0.5, redis_timeout_s=0.5)
        direct = _Both(app, mode)
        app.extensions["regionlock"].tokens.for_checkin(token)
        assert _direct(direct, token, _body(HK))[0] == 200
    finally:
        server.stop()
    answer = _direct(direct, token, _body(HK))
    assert answer[0] == 503
    assert int(answer[1]["Retry-After"]) > 0
    assert answer[2]["error"]["code"] == "unavailable"
    assert _direct(direct, token, _body(HK)) is None  # the breaker is open: Flask's 503
    flask = _flask(app, token, _body(HK))
    _same_answer(flask, answer)


def test_check_ins_in_flight_together_each_get_their_own_answer(make_app, tmp_path):
    """Forty check-ins on one event loop at once: their Redis calls share writes (Redis reads
    far fewer times than it is asked), and each answer is its own device's, decided and
    recorded as if it had been alone."""
    import redis as redis_lib

    with EmbeddedRedis(tmp_path / "lone", appendonly=False) as server:
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        token = TokenStore(client).create("d", "device")
        app = make_app(redis_url=server.url, token_cache_s=0.5, policy_poll_s=0)
        direct = DirectCheckin(app)
        app.extensions["regionlock"].tokens.for_checkin(token)
        headers = {"authorization": f"Bearer {token}"}
        # Even: Hong Kong phones at home (allow); odd: unknown phones on a Cuban network (lock).
        phones = [
            (imei(("35387923" if i % 2 == 0 else "49015420") + f"{900000 + i:06d}"), i % 2)
            for i in range(40)
        ]

        async def run():
            await direct.handle_async(headers, _body(UNKNOWN2), PEER, False)  # connected
            before = int(client.info("stats")["total_reads_processed"])
            answers = await asyncio.gather(
                *(
                    direct.handle_async(
                        headers,
                        _body(phone, sim={"network": "36801" if cuban else "45400"}),
                        PEER,
                        False,
                    )
                    for phone, cuban in phones
                )
            )
            return answers, int(client.info("stats")["total_reads_processed"]) - before - 1

        answers, reads = asyncio.run(run())
        assert reads < 40  # two calls each, one at a time, would be 80
        keyset = app.test_client().get("/v1/keys", headers=bearer(token)).get_json()
        jwks = {k["kid"]: k for k in keyset["keys"]}
        devices = app.extensions["regionlock"].devices
        for (phone, cuban), (status, _, content) in zip(phones, answers, strict=True):
            answer = orjson.loads(content)
            assert status == 200 and answer["imei"] == phone
            assert answer["verdict"] == ("lock" if cuban else "allow")
            assert verify_with_jwk(answer, jwks[answer["kid"]])
            assert devices.decisions(phone)[0]["verdict"] == answer["verdict"]
        client.close()
