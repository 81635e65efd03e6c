"""What the user sees (SPEC §10, §11): lock-screen messages and the offline lock, from the
bundle's validation to the signed verdict, the manual lock's own text and old bundles."""

from __future__ import annotations

import copy
import json

import orjson
import pytest
import yaml

from service.engine.cases import parse_cases, run_case
from service.engine.compiler import compile_bundle
from service.engine.loading import load_bundle_dir
from service.engine.messages import Cause, MessageBook, is_language_tag, lookup_language
from service.engine.model import Override
from service.engine.validation import BundleError, validate_bundle
from service.store import keys
from service.store.records import decode_override, encode_override
from tests.conftest import ROOT, audit_entries, bearer
from tests.imeis import HK, UNKNOWN, UNKNOWN2
from tests.test_signing import firmware_verifies

HAVANA = {"lat": 23.1136, "lon": -82.3666}
PARIS = {"lat": 48.8566, "lon": 2.3522}

SUPPORT = {
    "phone": "+85230001234",
    "email": "unlock@example.com",
    "url": "https://example.com/unlock",
}


def _bundle(**extra) -> dict:
    """A small valid bundle: one sanctions rule, the given top-level fields."""
    return {
        "rules": [
            {"id": "sanctions", "type": "sanctioned_region", "regions": ["CU"], "signals": ["ip"]}
        ],
        **extra,
    }


def _errors(bundle: dict) -> dict[str, list[str]]:
    with pytest.raises(BundleError) as caught:
        validate_bundle(bundle)
    return caught.value.errors


def _msg(text=None, **parts) -> dict:
    return {"text": {"en": "Locked."} if text is None else text, **parts}


# --- validation: each path ----------------------------------------------------------------

LONG = "x" * 501


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"messages": {"bogus": _msg()}}, "messages.bogus"),
        ({"messages": {"Sanctioned_Region": _msg()}}, "messages.Sanctioned_Region"),
        ({"messages": ["sanctioned_region"]}, "messages"),
        ({"messages": {"default": "Locked."}}, "messages.default"),
        ({"messages": {"default": {"text": {"en": "a"}, "title": "x"}}}, "messages.default.title"),
        ({"messages": {"default": {"support": SUPPORT}}}, "messages.default.text"),
        (
            {"messages": {"sanctioned_region": _msg({"en": "a", "xx-!!": "b"})}},
            "messages.sanctioned_region.text.xx-!!",
        ),
        ({"messages": {"default": _msg({"en": "a", "en_US": "b"})}}, "messages.default.text.en_US"),
        ({"messages": {"default": _msg({"en": "a", "123": "b"})}}, "messages.default.text.123"),
        ({"messages": {"default": _msg({"en": "a", "é": "b"})}}, "messages.default.text.é"),
        ({"messages": {"default": _msg({"en": "a", "es": ""})}}, "messages.default.text.es"),
        ({"messages": {"default": _msg({"en": LONG})}}, "messages.default.text.en"),
        ({"messages": {"default": _msg({"en": 42})}}, "messages.default.text.en"),
        ({"messages": {"default": _msg({"en": "a\x00b"})}}, "messages.default.text.en"),
        ({"messages": {"default": _msg({"es": "Bloqueado."})}}, "messages.default.text"),
        (
            {"messages": {"default": _msg({"en": "a", "es": "b", "ES": "c"})}},
            "messages.default.text.ES",
        ),
        ({"messages": {"default": _msg({})}}, "messages.default.text"),
        ({"messages": {"default": _msg(["en"])}}, "messages.default.text"),
        (
            {"messages": {"default": _msg(support={"phone": "85230001234"})}},
            "messages.default.support.phone",
        ),
        (
            {"messages": {"default": _msg(support={"phone": "+852 3000 1234"})}},
            "messages.default.support.phone",
        ),
        (
            {"messages": {"default": _msg(support={"phone": "+1"})}},
            "messages.default.support.phone",
        ),
        (
            {"messages": {"default": _msg(support={"phone": "call us"})}},
            "messages.default.support.phone",
        ),
        (
            {"messages": {"default": _msg(support={"email": "a@b"})}},
            "messages.default.support.email",
        ),
        (
            {"messages": {"default": _msg(support={"email": "unlock"})}},
            "messages.default.support.email",
        ),
        (
            {"messages": {"default": _msg(support={"url": "http://example.com/unlock"})}},
            "messages.default.support.url",
        ),
        (
            {"messages": {"default": _msg(support={"url": "https://"})}},
            "messages.default.support.url",
        ),
        (
            {"messages": {"default": _msg(support={"url": "example.com"})}},
            "messages.default.support.url",
        ),
        (
            {"messages": {"default": _msg(support={"url": "https://exa mple.com"})}},
            "messages.default.support.url",
        ),
        (
            {"messages": {"default": _msg(support={"fax": "+85230001234"})}},
            "messages.default.support.fax",
        ),
        ({"offline": {"lock_after_days": 0}}, "offline.lock_after_days"),
        ({"offline": {"lock_after_days": 366}}, "offline.lock_after_days"),
        ({"offline": {"lock_after_days": "30"}}, "offline.lock_after_days"),
        ({"offline": {"warn_days": 3}}, "offline.lock_after_days"),
        ({"offline": {"lock_after_days": 30, "warn_days": 31}}, "offline.warn_days"),
        ({"offline": {"lock_after_days": 30, "warn_days": -1}}, "offline.warn_days"),
        ({"offline": {"lock_after_days": 30, "grace": 1}}, "offline.grace"),
        ({"offline": 30}, "offline"),
        # Not longer than the check-in interval: a phone doing everything right would lock.
        (
            {"offline": {"lock_after_days": 2}, "next_checkin_s": 2 * 86400},
            "offline.lock_after_days",
        ),
        ({"offline": {"lock_after_days": 1}, "next_checkin_s": 90000}, "offline.lock_after_days"),
    ],
)
def test_invalid_messages_and_offline_name_their_path(extra, path):
    errors = _errors(_bundle(**extra))
    assert path in errors, errors
    assert list(errors) == [path], errors  # nothing else is blamed


def test_a_rule_message_is_validated_at_its_path():
    bundle = _bundle()
    bundle["rules"][0]["message"] = _msg({"en": LONG, "fa": "این تلفن قفل است."})
    assert list(_errors(bundle)) == ["rules.0.message.text.en"]


def test_every_problem_is_reported_at_once():
    errors = _errors(
        _bundle(
            messages={
                "sanctioned_region": _msg(
                    {"en": "a", "xx-!!": "b"},
                    support={"phone": "1", "email": "x", "url": "ftp://x"},
                ),
                "bogus": _msg(),
            },
            offline={"lock_after_days": 0},
        )
    )
    assert set(errors) == {
        "messages.bogus",
        "messages.sanctioned_region.text.xx-!!",
        "messages.sanctioned_region.support.phone",
        "messages.sanctioned_region.support.email",
        "messages.sanctioned_region.support.url",
        "offline.lock_after_days",
    }


def test_valid_messages_and_offline_normalise_in_a_stable_order():
    bundle = validate_bundle(
        _bundle(
            messages={
                "default": _msg({"en": "Locked.", "zh-Hant": "已鎖定。"}),
                "sanctioned_region": {
                    "support": {"url": SUPPORT["url"], "phone": SUPPORT["phone"]},
                    "text": {"EN": "Not here.", "es-419": "Aquí no."},
                },
            },
            offline={"lock_after_days": 1},
            next_checkin_s=86399,
        )
    )
    assert list(bundle["messages"]) == ["sanctioned_region", "default"]
    assert bundle["messages"]["sanctioned_region"]["support"] == {
        "phone": SUPPORT["phone"],
        "url": SUPPORT["url"],
    }
    assert bundle["messages"]["sanctioned_region"]["text"] == {
        "EN": "Not here.",
        "es-419": "Aquí no.",
    }
    assert "support" not in bundle["messages"]["default"]
    assert bundle["offline"] == {"lock_after_days": 1, "warn_days": 0}
    assert validate_bundle(bundle) == bundle


def test_a_bundle_without_the_new_fields_normalises_as_before():
    bundle = validate_bundle(_bundle())
    assert list(bundle) == ["name", "next_checkin_s", "max_new_lock_ratio", "rules", "distributors"]
    assert "message" not in bundle["rules"][0]
    policy = compile_bundle(bundle)
    assert policy.offline is None and not policy.messages


@pytest.mark.parametrize(
    ("tag", "ok"),
    [
        ("en", True),
        ("es-CU", True),
        ("zh-Hant-TW", True),
        ("es-419", True),
        ("en-US-x-twain", True),
        ("i-klingon", True),
        ("xx-!!", False),
        ("en_US", False),
        ("", False),
        ("en-", False),
        ("123", False),
        ("*", False),
        ("en" + "-abcdefgh" * 10, False),
        (42, False),
        (None, False),
    ],
)
def test_language_tags_are_checked_for_well_formedness(tag, ok):
    assert is_language_tag(tag) is ok


# --- choosing the text: RFC 4647 lookup ----------------------------------------------------

TEXTS = {"en": "en", "es": "es", "fa": "fa", "zh-Hant": "zh-Hant", "de-CH": "de-CH"}


@pytest.mark.parametrize(
    ("texts", "locale", "lang"),
    [
        (TEXTS, "es-CU", "es"),
        (TEXTS, "fa-IR", "fa"),
        ({"en": "", "es": ""}, "zh-Hant-TW", "en"),
        (TEXTS, "zh-Hant-TW", "zh-Hant"),
        (TEXTS, "ZH-hant-tw", "zh-Hant"),
        (TEXTS, "zh-Hans-CN", "en"),
        (TEXTS, "de-CH-x-phonebk", "de-CH"),
        (TEXTS, "de-CH-1996-x-a", "de-CH"),
        (TEXTS, "de", "en"),  # lookup never widens a range: de-CH does not serve de
        (TEXTS, "es", "es"),
        (TEXTS, None, "en"),
        (TEXTS, "xx-!!", "en"),
        (TEXTS, "es_CU", "en"),  # not well-formed: ignored
        ({"EN": "", "es": ""}, "fr", "EN"),
    ],
)
def test_text_is_chosen_by_rfc4647_lookup(texts, locale, lang):
    assert lookup_language(texts, locale) == lang


def _book(**messages) -> MessageBook:
    return MessageBook(messages, {})


def test_the_deciding_reason_is_a_manual_lock_then_the_first_with_the_verdicts_action():
    book = MessageBook(
        {
            "sanctioned_region": _msg({"en": "sanctions"}),
            "outside_territory": _msg({"en": "territory"}),
            "manual_lock": _msg({"en": "manual"}, support={"phone": SUPPORT["phone"]}),
            "grace_period": _msg({"en": "grace"}),
        },
        {"gray": _msg({"en": "gray's own"})},
    )
    territory = Cause("outside_territory", "gray", "lock")
    sanctions = Cause("sanctioned_region", "sanctions", "lock")
    grace = Cause("grace_period", "gray", "warn")
    manual = Cause("manual_lock", None, "lock")
    assert book.choose("allow", [territory], "en") is None
    assert book.choose("lock", [sanctions, territory], "en")["text"] == "sanctions"
    # The rule's own message wins over its code's.
    assert book.choose("lock", [territory, sanctions], "en") == {
        "reason": "outside_territory",
        "lang": "en",
        "text": "gray's own",
        "support": None,
    }
    # A warn verdict: the first reason whose action is warn, not an earlier lock-less one.
    observed_like = Cause("outside_territory", "other", "allow")
    assert book.choose("warn", [observed_like, grace], "en")["text"] == "gray's own"
    assert book.choose("lock", [sanctions, manual], "en") == {
        "reason": "manual_lock",
        "lang": "en",
        "text": "manual",
        "support": {"phone": SUPPORT["phone"]},
    }
    # The agent's own text: shown as given, lang null, the manual_lock support kept.
    assert book.choose("lock", [sanctions, manual], "es", "Call us.") == {
        "reason": "manual_lock",
        "lang": None,
        "text": "Call us.",
        "support": {"phone": SUPPORT["phone"]},
    }


def test_default_serves_codes_without_their_own_and_nothing_gives_null():
    book = _book(default=_msg({"en": "Locked.", "ru": "Заблокирован."}))
    cause = Cause("outside_territory", "gray", "lock")
    assert book.choose("lock", [cause], "ru-UA") == {
        "reason": "outside_territory",
        "lang": "ru",
        "text": "Заблокирован.",
        "support": None,
    }
    empty = _book()
    assert empty.choose("lock", [cause], "en") is None
    manual = Cause("manual_lock", None, "lock")
    assert empty.choose("lock", [manual], "en") is None
    assert empty.choose("lock", [manual], "en", "Own text") == {
        "reason": "manual_lock",
        "lang": None,
        "text": "Own text",
        "support": None,
    }


# --- expected-decision cases check the message ---------------------------------------------


def _seed_policy():
    return compile_bundle(load_bundle_dir(ROOT / "policies"))


def test_a_case_expecting_the_wrong_language_fails():
    policy = _seed_policy()
    raw = yaml.safe_load(
        """
cases:
  - name: Cuba in Spanish
    imei: "990000110000009"
    checkins:
      - places: {network: CU}
        locale: es-CU
        expect: {verdict: lock, message: {reason: sanctioned_region, lang: fa}}
"""
    )
    [case] = parse_cases(raw, "t.yaml")
    result = run_case(policy, case)
    assert not result.passed
    assert "message {'reason': 'sanctioned_region', 'lang': 'es'}" in result.messages[0]
    raw["cases"][0]["checkins"][0]["expect"]["message"]["lang"] = "es"
    assert run_case(policy, parse_cases(raw, "t.yaml")[0]).passed


# --- the check-in ---------------------------------------------------------------------------


@pytest.fixture
def checkin(client, tokens, geo):
    def run(imei=UNKNOWN, ip=None, **body):
        address = geo["ips"].get(ip, ip) if ip else "127.0.0.1"
        response = client.post(
            "/v1/checkin",
            json={"imei": imei, **body},
            headers=bearer(tokens["device"]),
            environ_base={"REMOTE_ADDR": address},
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return run


def _jwks(client, tokens):
    keys_ = client.get("/v1/keys", headers=bearer(tokens["device"])).get_json()["keys"]
    return {jwk["kid"]: jwk for jwk in keys_}


@pytest.mark.parametrize(
    ("locale", "lang", "text"),
    [
        ("es-CU", "es", "Este teléfono no puede usarse en esta región."),
        ("fa-IR", "fa", "این تلفن در این منطقه قابل استفاده نیست."),
        ("ar", "ar", "لا يمكن استخدام هذا الهاتف في هذه المنطقة."),
        ("ko-KP", "ko", "이 휴대전화는 이 지역에서 사용할 수 없습니다."),
        ("ru-UA", "ru", "Этот телефон нельзя использовать в этом регионе."),
        ("zh-Hant-TW", "en", "This phone cannot be used in this region."),
        (None, "en", "This phone cannot be used in this region."),
    ],
)
def test_a_locked_phone_reads_why_in_its_language_and_the_signature_holds(
    checkin, client, tokens, locale, lang, text
):
    body = {"gps": HAVANA} if locale is None else {"gps": HAVANA, "locale": locale}
    answer = checkin(**body)
    assert answer["verdict"] == "lock"
    assert answer["message"] == {
        "reason": "sanctioned_region",
        "lang": lang,
        "text": text,
        "support": SUPPORT,
    }
    assert answer["offline"] == {"lock_after_s": 30 * 86400, "warn_after_s": 27 * 86400}
    jwks = _jwks(client, tokens)
    assert firmware_verifies(answer, jwks)
    # Both new fields are inside the signed body.
    assert not firmware_verifies({**answer, "message": {**answer["message"], "text": "OK"}}, jwks)
    assert not firmware_verifies({**answer, "message": None}, jwks)
    assert not firmware_verifies({**answer, "offline": None}, jwks)
    assert not firmware_verifies(
        {**answer, "offline": {"lock_after_s": 10**9, "warn_after_s": 10**9}}, jwks
    )


@pytest.mark.parametrize("locale", ["xx-!!", "es_CU", "", 42, ["es"], {"es": 1}, "e" * 200, None])
def test_a_malformed_locale_is_ignored_never_a_422(checkin, redis, locale):
    answer = checkin(gps=HAVANA, locale=locale)
    assert answer["message"]["lang"] == "en"
    assert "locale" not in orjson.loads(redis.hget(keys.device(UNKNOWN), "device") or b"{}")


def test_an_allowed_phone_has_no_message_but_keeps_its_offline_terms(checkin):
    answer = checkin(HK, ip="hong_kong", locale="es")
    assert answer["verdict"] == "allow"
    assert answer["message"] is None
    assert answer["offline"] == {"lock_after_s": 2592000, "warn_after_s": 2332800}


def test_the_locale_is_kept_with_the_device_for_support(checkin, client, tokens):
    checkin(gps=HAVANA, locale="fa-IR", model="M2101K6G")
    document = client.get(f"/v1/devices/{UNKNOWN}", headers=bearer(tokens["agent"])).get_json()
    assert document["last_checkin"]["locale"] == "fa-IR"
    assert document["last_checkin"]["model"] == "M2101K6G"


# --- manual locks with their own text ------------------------------------------------------


def _lock(client, tokens, imei=UNKNOWN, **body):
    return client.post(
        f"/v1/devices/{imei}/lock",
        json={"reason": "stolen", **body},
        headers=bearer(tokens["agent"]),
    )


def test_a_manual_lock_shows_its_own_text(client, tokens, checkin, redis):
    text = "Teléfono robado. Llame al +34 600 000 000.\nGracias."
    response = _lock(client, tokens, message=text, ticket="SUP-9")
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["message"] == text
    answer = checkin(ip="france", locale="es-ES")
    assert answer["verdict"] == "lock"
    assert answer["message"] == {
        "reason": "manual_lock",
        "lang": None,
        "text": text,
        # The seed's manual_lock contact.
        "support": {"phone": SUPPORT["phone"], "email": SUPPORT["email"]},
    }
    [entry] = [e for e in audit_entries(redis) if e["action"] == "device.lock"]
    assert json.loads(entry["detail"])["message"] == text
    document = client.get(f"/v1/devices/{UNKNOWN}", headers=bearer(tokens["agent"])).get_json()
    assert document["override"]["message"] == text


def test_a_manual_lock_without_text_shows_the_policys_manual_lock_screen(client, tokens, checkin):
    assert _lock(client, tokens).status_code == 201
    answer = checkin(gps=HAVANA, locale="es-CU")  # sanctions too: the manual lock comes first
    assert answer["message"]["reason"] == "manual_lock"
    assert answer["message"]["lang"] == "en"
    assert answer["message"]["text"].startswith("This phone has been locked by support.")


@pytest.mark.parametrize("message", ["", "x" * 501, 42, "a\x07b"])
def test_a_bad_manual_lock_text_is_a_422_naming_message(client, tokens, redis, message):
    response = _lock(client, tokens, message=message)
    assert response.status_code == 422
    assert "message" in response.get_json()["error"]["fields"]
    assert redis.get(keys.device_override(UNKNOWN)) is None
    assert not [e for e in audit_entries(redis) if e["action"] == "device.lock"]


def test_an_override_without_text_keeps_its_stored_bytes():
    plain = Override(kind="lock", reason="r", actor="a", role="agent", created_at=1.0)
    assert b"message" not in encode_override(plain)
    with_text = Override(kind="lock", reason="r", created_at=1.0, message="Hola")
    assert decode_override(encode_override(with_text)) == with_text
    assert "message" not in plain.to_dict()


# --- old bundles keep working unchanged -------------------------------------------------------


def test_an_old_bundle_answers_null_message_and_offline(make_app, tmp_path, tokens, geo):
    folder = tmp_path / "old-policies"
    folder.mkdir()
    for name in ("10-sanctions.yaml", "20-gray-market.yaml", "50-distributors.yaml"):
        (folder / name).write_text((ROOT / "policies" / name).read_text(encoding="utf-8"))
    app = make_app(policies_dir=folder)
    client = app.test_client()
    response = client.post(
        "/v1/checkin",
        json={"imei": UNKNOWN2, "gps": HAVANA},
        headers=bearer(tokens["device"]),
    )
    answer = response.get_json()
    assert answer["verdict"] == "lock"
    assert answer["message"] is None and answer["offline"] is None
    assert firmware_verifies(answer, _jwks(client, tokens))
    policy = client.get("/v1/policy", headers=bearer(tokens["editor"])).get_json()
    assert "messages" not in policy and "offline" not in policy


def test_messages_and_offline_survive_publishing_and_the_snapshot(client, tokens, checkin):
    editor = bearer(tokens["editor"])
    active = client.get("/v1/policy", headers=editor).get_json()
    bundle = {k: active[k] for k in ("name", "next_checkin_s", "rules", "distributors")}
    bundle = copy.deepcopy({**bundle, "messages": active["messages"]})
    bundle["rules"][0]["message"] = {"text": {"en": "Sanctions rule's own text.", "es": "Propio."}}
    bundle["offline"] = {"lock_after_days": 7, "warn_days": 7}
    response = client.post(
        "/v1/policy",
        json={"bundle": bundle, "note": "messages", "expected_version": active["version"]},
        headers=editor,
    )
    assert response.status_code == 201, response.get_json()
    published = client.get("/v1/policy", headers=editor).get_json()
    assert published["offline"] == {"lock_after_days": 7, "warn_days": 7}
    # Every worker serves the new version within a second (the test app polls every 0.1 s).
    import time

    deadline = time.monotonic() + 3
    while True:
        answer = checkin(gps=HAVANA, locale="es-CU")
        if answer["policy_version"] == published["version"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer["message"]["text"] == "Propio."
    assert answer["offline"] == {"lock_after_s": 7 * 86400, "warn_after_s": 0}


def test_policy_validate_answers_422_with_the_path(client, tokens):
    bundle = _bundle(messages={"sanctioned_region": _msg({"en": "a", "xx-!!": "b"})})
    response = client.post(
        "/v1/policy/validate", json={"bundle": bundle}, headers=bearer(tokens["editor"])
    )
    assert response.status_code == 422
    assert "messages.sanctioned_region.text.xx-!!" in response.get_json()["error"]["fields"]


# --- OpenAPI ---------------------------------------------------------------------------------


def test_openapi_documents_the_new_fields(client):
    spec = client.get("/v1/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    checkin_ref = spec["paths"]["/v1/checkin"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["$ref"]
    request = schemas[checkin_ref.rsplit("/", 1)[1]]
    assert "locale" in request["properties"]
    verdict_ref = spec["paths"]["/v1/checkin"]["post"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]["$ref"]
    verdict = schemas[verdict_ref.rsplit("/", 1)[1]]
    assert {"message", "offline"} <= set(verdict["required"])
    text = json.dumps(spec)
    for name in ("lock_after_s", "warn_after_s", "support", "lang"):
        assert f'"{name}"' in text
    lock = spec["paths"]["/v1/devices/{imei}/lock"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["$ref"]
    assert "message" in schemas[lock.rsplit("/", 1)[1]]["properties"]


# --- the console shows what the phone shows --------------------------------------------------


@pytest.fixture
def agent(app, tokens):
    from tests.test_console import Console

    session = Console(app.test_client())
    assert session.sign_in(tokens["agent"]).status_code == 302
    return session


def _phone_card(page: str) -> str:
    import re

    found = re.search(r'<section class="card phone-screen".*?</section>', page, re.S)
    assert found, "no phone screen on the device page"
    return found.group(0)


def test_device_page_shows_the_lock_screen_in_the_phones_language(agent, checkin):
    checkin(gps=HAVANA, locale="fa-IR")
    card = _phone_card(agent.get(f"/console/devices/{UNKNOWN}").get_data(as_text=True))
    assert 'lang="fa"' in card and "این تلفن در این منطقه قابل استفاده نیست." in card
    assert "+85230001234" in card and "fa-IR" in card
    # Checked in just now: 30 days less a few seconds left, warning from day 27.
    assert 'Locks itself in <strong class="offline-left">29 days 23 hours</strong>' in card
    assert "warns its user from" in card


def test_device_page_countdown_runs_from_the_last_verdict(app):
    from service.console.devices import _offline_countdown

    terms = {"lock_after_s": 30 * 86400, "warn_after_s": 27 * 86400}
    start = 1_800_000_000.0
    decided = "2027-01-15T08:00:00Z"
    assert _offline_countdown(decided, None, start) is None
    counting = _offline_countdown(decided, terms, start + 86400)
    assert counting["state"] == "counting" and counting["left"] == "29 days"
    assert counting["lock_at"] == start + 30 * 86400
    assert _offline_countdown(decided, terms, start + 28 * 86400)["state"] == "warning"
    locked = _offline_countdown(decided, terms, start + 31 * 86400)
    assert locked["state"] == "locked" and locked["left"] == "under a minute"


def test_console_lock_with_its_own_text(agent, checkin, redis):
    checkin(ip="france")
    text = "Téléphone volé : appelez le 01 23 45 67 89."
    review = agent.post(f"/console/devices/{UNKNOWN}/lock", {"reason": "stolen", "message": text})
    assert text in review.get_data(as_text=True)
    done = agent.post(
        f"/console/devices/{UNKNOWN}/lock",
        {"reason": "stolen", "message": text, "step": "confirm"},
    )
    assert done.status_code == 302
    answer = checkin(ip="france", locale="fr-FR")
    assert answer["message"]["text"] == text and answer["message"]["lang"] is None
    card = _phone_card(agent.get(f"/console/devices/{UNKNOWN}").get_data(as_text=True))
    assert text in card and "the agent's own text" in card
    too_long = agent.post(f"/console/devices/{UNKNOWN}/lock", {"reason": "r", "message": "x" * 501})
    assert too_long.status_code == 422


def test_the_bundle_editor_shows_texts_one_language_a_line_and_errors_at_their_line():
    from service.console.bundle_text import check_text, dump_bundle

    text = dump_bundle(load_bundle_dir(ROOT / "policies"))
    lines = text.splitlines()
    fa_line = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("fa: "))
    assert check_text(text).valid
    [error] = check_text(text.replace("      fa: ", "      f!a: ")).to_dict()["errors"]
    assert error["path"] == "messages.sanctioned_region.text.f!a"
    assert error["line"] == fa_line
