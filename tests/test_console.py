"""The web console with Flask's test client: sessions, CSRF, roles, support actions, audit
trail, the policy editor's endpoints, publishing and the error pages (SPEC §8)."""

from __future__ import annotations

import html as html_lib
import re
import stat
import time

import pytest

from service.console import audit as console_audit
from service.console.bundle_text import check_text, dump_bundle
from service.console.security import SECRET_KEY_FILE, load_secret_key
from service.engine.loading import load_bundle_dir
from service.store import keys
from service.store.tokens import ROLES, TokenStore, digest
from tests.conftest import ROOT, audit_entries, bearer
from tests.imeis import HK, UNKNOWN, US

CUBA_NETWORK = {"sim": {"network": "36801"}}
US_NETWORK = {"sim": {"network": "310260"}}
BELARUS_NETWORK = {"sim": {"network": "25701"}}
COOKIE = "regionlock_console"


def csrf_of(html: str) -> str:
    """The CSRF token a page carries."""
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


class Console:
    """A test client that signs in through the form and posts with the page's CSRF token."""

    def __init__(self, client):
        self.client = client

    def csrf(self) -> str:
        return csrf_of(self.client.get("/console/sign-in").get_data(as_text=True))

    def sign_in(self, token: str, **extra):
        return self.client.post(
            "/console/sign-in", data={"token": token, "csrf_token": self.csrf(), **extra}
        )

    def page_csrf(self, path: str = "/console/devices") -> str:
        response = self.client.get(path)
        if response.status_code == 302:
            response = self.client.get("/console/sign-in")
        return csrf_of(response.get_data(as_text=True))

    def post(self, path: str, data: dict | None = None, csrf: bool = True):
        body = dict(data or {})
        if csrf:
            body["csrf_token"] = self.page_csrf()
        return self.client.post(path, data=body)

    def api(self, path: str, body: dict, csrf: bool = True):
        headers = {"X-CSRF-Token": self.page_csrf()} if csrf else {}
        return self.client.post(path, json=body, headers=headers)

    def get(self, path: str, **kwargs):
        return self.client.get(path, **kwargs)


@pytest.fixture
def console(app):
    return Console(app.test_client())


@pytest.fixture
def as_role(app, tokens):
    """A signed-in console per role."""

    def make(role: str) -> Console:
        session = Console(app.test_client())
        assert session.sign_in(tokens[role]).status_code == 302
        return session

    return make


def text(response) -> str:
    return response.get_data(as_text=True)


def rows(page: str) -> int:
    """Rows in the page's table body."""
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S)
    return body.group(1).count("<tr") if body else 0


# --- signing in and out -----------------------------------------------------------------


def test_sign_in_keeps_only_a_random_session_id_in_a_safe_cookie(app, console, tokens, redis):
    response = console.sign_in(tokens["agent"])
    assert response.status_code == 302
    assert response.headers["Location"] == "/console/devices"
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(COOKIE))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http on 127.0.0.1 by default; see the next test

    value = console.client.get_cookie(COOKIE, path="/console").value
    session = app.session_interface.get_signing_serializer(app).loads(value)
    # The id alone (and the sign-in's flash message): neither the token nor its digest.
    assert set(session) <= {"sid", "_flashes", "_permanent"}
    assert len(session["sid"]) >= 40
    for secret in (tokens["agent"], digest(tokens["agent"])):
        assert secret not in value and secret not in repr(session)
    # Redis keeps who it is, under the id's digest (not the id), with the idle timeout.
    [key] = redis.keys("rl:console-session:*")
    assert session["sid"] not in key
    record = redis.hgetall(key)
    assert record["name"] == "test-agent" and record["role"] == "agent"
    assert record["token"] == digest(tokens["agent"]) and len(record["csrf"]) >= 32
    assert 8 * 3600 - 10 < redis.ttl(key) <= 8 * 3600


def test_secure_cookie_flag_is_configurable(make_app, tokens):
    app = make_app(secure_cookies=True)
    response = Console(app.test_client()).sign_in(tokens["agent"])
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(COOKIE))
    assert "Secure" in cookie


def test_unknown_and_device_tokens_cannot_sign_in(console, tokens):
    response = console.sign_in("rl_not-a-real-token")
    assert response.status_code == 401
    assert "not known" in text(response)
    assert "rl_not-a-real-token" not in text(response)  # never echoed back

    response = console.sign_in(tokens["device"])
    assert response.status_code == 401
    assert "cannot sign in to the console" in text(response)
    assert console.get("/console/devices").status_code == 302

    response = console.sign_in("")
    assert response.status_code == 401 and "Paste your token" in text(response)


def test_sign_in_goes_back_to_the_page_asked_for_but_never_off_site(console, tokens):
    response = console.get("/console/audit?actor=x")
    assert response.status_code == 302
    assert "/console/sign-in?next=" in response.headers["Location"]
    assert (
        console.sign_in(tokens["auditor"], next="/console/audit?actor=x").headers["Location"]
        == "/console/audit?actor=x"
    )

    for target in ("https://evil.example/", "//evil.example/console", "/v1/audit"):
        other = Console(console.client.application.test_client())
        response = other.sign_in(tokens["auditor"], next=target)
        assert response.headers["Location"] == "/console/audit", target


def test_sign_out(as_role):
    agent = as_role("agent")
    assert agent.get("/console/devices").status_code == 200
    response = agent.post("/console/sign-out")
    assert response.status_code == 302
    assert agent.get("/console/devices").status_code == 302
    assert "Signed out" in text(agent.get("/console/sign-in"))


def test_a_cookie_copied_before_sign_out_is_worthless_after_it(app, as_role):
    # Issue 12.9: the cookie alone used to carry the session, so a copy outlived sign-out.
    agent = as_role("agent")
    copied = agent.client.get_cookie(COOKIE, path="/console").value
    assert agent.post("/console/sign-out").status_code == 302

    for path in ("/console/devices", f"/console/devices/{HK}", "/console/audit"):
        thief = app.test_client()
        thief.set_cookie(COOKIE, copied, path="/console")
        response = thief.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/console/sign-in"), path


def test_revoked_token_is_signed_out_at_the_next_request(as_role, redis):
    agent = as_role("agent")
    assert agent.get("/console/devices").status_code == 200
    TokenStore(redis).revoke("test-agent")
    response = agent.get("/console/devices")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/console/sign-in")
    assert "revoked" in text(agent.get("/console/sign-in"))


def test_secret_key_is_made_once_with_mode_0600_and_shared(make_app, tmp_path, monkeypatch):
    monkeypatch.delenv("REGIONLOCK_SECRET_KEY", raising=False)
    first = make_app(var_dir=tmp_path / "shared")
    second = make_app(var_dir=tmp_path / "shared")
    key_file = tmp_path / "shared" / "keys" / SECRET_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.secret_key == second.secret_key == bytes.fromhex(key_file.read_text().strip())
    assert len(first.secret_key) == 32
    from_env = load_secret_key(tmp_path / "other", None, {"REGIONLOCK_SECRET_KEY": "e" * 40})
    assert from_env.value == b"e" * 40 and from_env.source == "$REGIONLOCK_SECRET_KEY"
    assert not (tmp_path / "other").exists()


# --- CSRF -------------------------------------------------------------------------------


def test_every_form_needs_the_csrf_token(as_role, console, tokens, checkin, redis):
    response = console.client.post("/console/sign-in", data={"token": tokens["agent"]})
    assert response.status_code == 400
    assert "security token" in text(response)

    checkin(HK, **US_NETWORK)
    agent = as_role("agent")
    for data in ({}, {"csrf_token": "forged"}):
        response = agent.client.post(
            f"/console/devices/{HK}/unlock", data={"reason": "r", "step": "confirm", **data}
        )
        assert response.status_code == 400
    assert redis.get(keys.device_override(HK)) is None

    assert agent.post("/console/sign-out", csrf=False).status_code == 400
    assert agent.get("/console/devices").status_code == 200  # still signed in

    editor = as_role("editor")
    response = editor.api("/console/api/policy/validate", {"text": "name: x"}, csrf=False)
    assert response.status_code == 400


# --- who sees what ----------------------------------------------------------------------

PAGES = ("/console/devices", "/console/policy", "/console/policy/edit", "/console/audit")
#            devices policy edit  audit     nav
VISIBILITY = {
    "agent": ((200, 200, 403, 403), ["Devices", "Policy"]),
    "compliance": ((200, 200, 403, 200), ["Devices", "Policy", "Audit trail"]),
    "editor": ((403, 200, 200, 403), ["Policy"]),
    "auditor": ((200, 200, 403, 200), ["Devices", "Policy", "Audit trail"]),
    "admin": ((200, 200, 200, 200), ["Devices", "Policy", "Audit trail"]),
}


def test_visibility_table_covers_every_console_role():
    assert set(VISIBILITY) == set(ROLES) - {"device"}


@pytest.mark.parametrize("role", sorted(VISIBILITY))
def test_each_role_sees_only_what_it_may_do(as_role, checkin, role):
    statuses, nav = VISIBILITY[role]
    session = as_role(role)
    for path, expected in zip(PAGES, statuses, strict=True):
        assert session.get(path).status_code == expected, (role, path)
    page = text(session.get("/console/policy"))
    assert re.findall(r'<nav class="sections".*?</nav>', page, re.S)
    assert re.findall(r">(Devices|Policy|Audit trail)</a>", page) == nav
    assert ("Edit policy" in page) == (role in ("editor", "admin"))

    checkin(HK, **US_NETWORK)
    device_page = session.get(f"/console/devices/{HK}")
    if statuses[0] == 403:
        assert device_page.status_code == 403
        assert "Not for your role" in text(device_page)
        return
    writes = role in ("agent", "compliance", "admin")
    assert ('id="unlock"' in text(device_page)) == writes
    assert ('id="lock"' in text(device_page)) == writes
    post = session.post(f"/console/devices/{HK}/lock", {"reason": "r", "step": "confirm"})
    assert post.status_code == (302 if writes else 403)


# --- support: search, device page, actions --------------------------------------------


def test_search_accepts_spaces_and_dashes_and_explains_bad_input(as_role):
    agent = as_role("agent")
    response = agent.get("/console/devices", query_string={"imei": f" {HK[:2]}-{HK[2:8]} {HK[8:]}"})
    assert response.status_code == 302
    assert response.headers["Location"] == f"/console/devices/{HK}"
    response = agent.get("/console/devices", query_string={"imei": HK[:-1] + "0"})
    assert response.status_code == 422
    assert "invalid Luhn check digit" in text(response)
    assert agent.get(f"/console/devices/{HK[:2]}-{HK[2:]}").headers["Location"] == (
        f"/console/devices/{HK}"
    )


def test_unknown_device_and_bad_imei_get_404_pages(as_role):
    agent = as_role("agent")
    response = agent.get(f"/console/devices/{UNKNOWN}")
    assert response.status_code == 404
    assert "No record for" in text(response) and UNKNOWN in text(response)
    response = agent.get("/console/devices/12345")
    assert response.status_code == 404
    assert "is not an IMEI" in text(response)


def test_device_page_says_why_in_plain_words(as_role, checkin):
    checkin(HK, model="M2101K6G", **US_NETWORK)
    page = text(as_role("agent").get(f"/console/devices/{HK}"))
    assert "Locked" in page and "The phone may not be used where it is." in page
    assert "Rule “gray-market”: sold through Global Mobile HK Ltd (hk-global)" in page
    assert "Mobile network (US) put it outside them" in page
    evidence = re.search(r'<table class="evidence">.*?</table>', page, re.S).group(0)
    network_row = re.search(r"<tr class=\"cited\">.*?</tr>", evidence, re.S).group(0)
    assert "Mobile network" in network_row and "United States" in network_row
    assert "gray-market" in network_row
    assert evidence.count("no place") == 3
    assert "outside territory" in page and "M2101K6G" in page


def test_history_shows_repeated_outcomes_once_with_a_count(as_role, checkin):
    for _ in range(3):
        checkin(HK, **US_NETWORK)
    page = text(as_role("agent").get(f"/console/devices/{HK}"))
    history = re.search(r'<table class="history stack">.*?</table>', page, re.S).group(0)
    body = history.split("<tbody>", 1)[1]
    assert body.count("<tr") == 1
    assert "3 check-ins since" in body


def test_unlock_is_checked_then_confirmed_then_done(as_role, checkin, redis):
    checkin(HK, **US_NETWORK)
    agent = as_role("agent")
    form = {"reason": "proof of purchase in HK", "ticket": "SUP-1", "expires": "604800"}

    review = agent.post(f"/console/devices/{HK}/unlock", form)
    assert review.status_code == 200
    assert "Unlock" in text(review) and "Yes, unlock" in text(review)
    assert "This lifts “gray-market”" in text(review) and "7 days" in text(review)
    assert redis.get(keys.device_override(HK)) is None  # nothing happens before confirming

    done = agent.post(f"/console/devices/{HK}/unlock", {**form, "step": "confirm"})
    assert done.status_code == 302 and done.headers["Location"] == f"/console/devices/{HK}"
    page = text(agent.get(f"/console/devices/{HK}"))
    assert "Unlocked until" in page
    assert "proof of purchase in HK" in page
    ttl = redis.ttl(keys.device_override(HK))
    assert 604_700 < ttl <= 604_800
    [entry] = audit_entries(redis)
    assert entry["action"] == "device.unlock" and entry["actor"] == "test-agent"
    assert checkin(HK, **US_NETWORK)["verdict"] == "allow"


def test_action_form_errors_are_shown_next_to_the_fields(as_role, checkin, redis):
    checkin(HK, **US_NETWORK)
    agent = as_role("agent")
    response = agent.post(
        f"/console/devices/{HK}/unlock",
        {"reason": "  ", "ticket": "T" * 101, "expires": "99", "step": "confirm"},
    )
    assert response.status_code == 422
    page = text(response)
    assert re.search(r'id="unlock-reason"[^>]*aria-invalid="true"', page)
    assert "Say why" in page and "At most 100 characters" in page
    assert "Choose one of the listed durations" in page
    assert redis.get(keys.device_override(HK)) is None


def _hidden(html: str, name: str) -> str:
    match = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)">', html)
    assert match, f"no hidden {name}"
    return html_lib.unescape(match.group(1))


def test_console_removes_the_override_it_showed(as_role, client, tokens, redis):
    """Issue 12.5: the confirm page names the override shown (its ETag); if someone replaced it
    meanwhile, confirming removes nothing; sending the same confirm form twice removes once."""
    agent = as_role("agent")
    api = bearer(tokens["compliance"])
    client.post(f"/v1/devices/{UNKNOWN}/lock", json={"reason": "first"}, headers=api)
    review = text(agent.post(f"/console/devices/{UNKNOWN}/remove"))
    form = {"step": "confirm", "etag": _hidden(review, "etag")}
    form["operation"] = _hidden(review, "operation")
    assert form["etag"] and form["operation"]
    client.post(f"/v1/devices/{UNKNOWN}/lock", json={"reason": "second"}, headers=api)

    done = agent.post(f"/console/devices/{UNKNOWN}/remove", form)
    assert done.status_code == 302
    assert "override changed since you looked" in text(agent.get(f"/console/devices/{UNKNOWN}"))
    assert redis.get(keys.device_override(UNKNOWN)) is not None
    assert "device.override_removed" not in [f["action"] for f in audit_entries(redis)]

    review = text(agent.post(f"/console/devices/{UNKNOWN}/remove"))
    form = {"step": "confirm", "etag": _hidden(review, "etag")}
    form["operation"] = _hidden(review, "operation")
    assert agent.post(f"/console/devices/{UNKNOWN}/remove", form).status_code == 302
    assert "Override removed" in text(agent.get(f"/console/devices/{UNKNOWN}"))
    # The same form again (a resubmission after an error): replayed, not a second removal.
    agent.post(f"/console/devices/{UNKNOWN}/remove", form)
    assert "Override removed" in text(agent.get(f"/console/devices/{UNKNOWN}"))
    removals = [f for f in audit_entries(redis) if f["action"] == "device.override_removed"]
    assert len(removals) == 1 and '"second"' in removals[0]["detail"]


def test_lock_and_remove_override(as_role, checkin, redis):
    checkin(UNKNOWN, **US_NETWORK)
    agent = as_role("agent")
    review = agent.post(f"/console/devices/{UNKNOWN}/lock", {"reason": "stolen", "ticket": "S-9"})
    assert "Yes, lock" in text(review)
    done = agent.post(
        f"/console/devices/{UNKNOWN}/lock", {"reason": "stolen", "ticket": "S-9", "step": "confirm"}
    )
    assert done.status_code == 302
    assert checkin(UNKNOWN, **US_NETWORK)["verdict"] == "lock"
    page = text(agent.get(f"/console/devices/{UNKNOWN}"))
    assert "Locked by hand" in page and "Remove override" in page

    review = agent.post(f"/console/devices/{UNKNOWN}/remove")
    assert "Yes, remove the override" in text(review)
    done = agent.post(f"/console/devices/{UNKNOWN}/remove", {"step": "confirm"})
    assert done.status_code == 302
    assert redis.get(keys.device_override(UNKNOWN)) is None
    assert "Override removed" in text(agent.get(f"/console/devices/{UNKNOWN}"))
    assert checkin(UNKNOWN, **US_NETWORK)["verdict"] == "allow"
    actions = [f["action"] for f in audit_entries(redis)]
    assert actions == ["device.lock", "device.override_removed"]


def test_agent_sees_why_a_sanctions_lock_is_not_theirs_to_lift(as_role, checkin, redis):
    checkin(UNKNOWN, **CUBA_NETWORK)
    agent = as_role("agent")
    page = text(agent.get(f"/console/devices/{UNKNOWN}"))
    assert "Only a compliance officer can lift a sanctioned-region lock" in page

    response = agent.post(
        f"/console/devices/{UNKNOWN}/unlock", {"reason": "tourist", "step": "confirm"}
    )
    assert response.status_code == 403
    scope_error = re.search(r'<p class="error scope-error"[^>]*>(.*?)</p>', text(response), re.S)
    assert scope_error, "the scope message sits in the unlock form"
    assert "sanctions rule “sanctions” (CU, Cuba)" in scope_error.group(1)
    assert "escalate the ticket to compliance" in scope_error.group(1)
    assert redis.get(keys.device_override(UNKNOWN)) is None

    compliance = as_role("compliance")
    done = compliance.post(
        f"/console/devices/{UNKNOWN}/unlock", {"reason": "investigated", "step": "confirm"}
    )
    assert done.status_code == 302
    assert checkin(UNKNOWN, **CUBA_NETWORK)["verdict"] == "allow"


def test_agent_unlock_of_a_doubly_locked_device_says_sanctions_remain(as_role, checkin):
    checkin(HK, **CUBA_NETWORK)  # a Hong Kong phone in Cuba: gray import and sanctions
    agent = as_role("agent")
    review = text(agent.post(f"/console/devices/{HK}/unlock", {"reason": "receipt"}))
    assert "stays locked" in review
    agent.post(f"/console/devices/{HK}/unlock", {"reason": "receipt", "step": "confirm"})
    page = text(agent.get(f"/console/devices/{HK}"))
    assert "stays locked by sanctions rule “sanctions”" in page
    assert checkin(HK, **CUBA_NETWORK)["verdict"] == "lock"


def test_what_people_typed_is_escaped(as_role, checkin):
    checkin(HK, **US_NETWORK)
    agent = as_role("agent")
    reason = '<script>alert("x")</script>'
    agent.post(f"/console/devices/{HK}/lock", {"reason": reason, "step": "confirm"})
    page = text(agent.get(f"/console/devices/{HK}"))
    assert reason not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


# --- audit trail ------------------------------------------------------------------------


def test_audit_trail_filters_and_pages(as_role, checkin, monkeypatch):
    checkin(HK, **US_NETWORK)
    agent, compliance = as_role("agent"), as_role("compliance")
    for n in range(3):
        agent.post(f"/console/devices/{HK}/unlock", {"reason": f"r{n}", "step": "confirm"})
    compliance.post(f"/console/devices/{HK}/lock", {"reason": "fraud", "step": "confirm"})

    auditor = as_role("auditor")
    page = text(auditor.get("/console/audit"))
    assert page.count("device.unlock</span>") == 3 and page.count("device.lock</span>") == 1

    page = text(auditor.get("/console/audit", query_string={"actor": "test-compliance"}))
    assert rows(page) == 1 and "fraud" in page
    page = text(auditor.get("/console/audit", query_string={"action": "device.unlock"}))
    assert rows(page) == 3
    dashed = f"{HK[:2]}-{HK[2:8]}-{HK[8:]}"
    assert rows(text(auditor.get("/console/audit", query_string={"imei": dashed}))) == 4
    page = text(auditor.get("/console/audit", query_string={"actor": "nobody"}))
    assert "No entries match these filters." in page

    monkeypatch.setattr(console_audit, "PAGE_SIZE", 2)
    first = text(auditor.get("/console/audit", query_string={"action": "device.unlock"}))
    assert rows(first) == 2 and "r2" in first and "r0" not in first
    older = re.search(r'href="(/console/audit\?[^"]*before=[^"]+)"', first).group(1)
    second = text(auditor.get(older.replace("&amp;", "&")))
    assert rows(second) == 1 and "r0" in second and "« Newest" in second
    bad = auditor.get("/console/audit", query_string={"before": "nonsense"})
    assert bad.status_code == 200 and "not valid" in text(bad)


# --- policy editor ----------------------------------------------------------------------


def test_validate_endpoint_reports_errors_at_their_lines(as_role):
    editor = as_role("editor")
    text_ = dump_bundle(load_bundle_dir(ROOT / "policies"))
    line = text_.splitlines().index("  regions: [CU, IR, SY, KP, SD, UA-43, UA-40]") + 1
    bad = text_.replace("regions: [CU, IR,", "regions: [CU, XX,")
    body = editor.api("/console/api/policy/validate", {"text": bad}).get_json()
    assert body["valid"] is False
    [error] = body["errors"]
    assert error["path"] == "rules.0.regions.1" and error["line"] == line
    assert "XX" in error["messages"][0]

    assert editor.api("/console/api/policy/validate", {"text": text_}).get_json() == {
        "valid": True,
        "errors": [],
    }
    broken = editor.api("/console/api/policy/validate", {"text": "rules: [\n  - id: x\n"})
    [error] = broken.get_json()["errors"]
    assert (error["line"], error["column"]) == (2, 3)
    assert "not valid YAML" in error["messages"][0]

    assert editor.api("/console/api/policy/validate", {"nope": 1}).status_code == 400
    assert as_role("agent").api("/console/api/policy/validate", {"text": ""}).status_code == 403
    signed_out = Console(editor.client.application.test_client())
    assert signed_out.api("/console/api/policy/validate", {"text": ""}).status_code == 401


def test_error_paths_map_to_the_lines_typed():
    source = (
        "name: test\n"
        "rules:\n"
        "  - id: r\n"  # no type: the rule's own line, 3
        "    signals: [ip]\n"
        "distributors:\n"
        "  - id: a\n"
        "    name: A\n"
        "    territories: [HK]\n"
        "    allocations:\n"
        "      - {tac: '3538792'}\n"  # 7 digits: line 10
        "  - id: b\n"
        "    nmae: B\n"  # a typo: line 12
        "    territories: [US]\n"
        "    allocations: []\n"
    )
    errors = {e["path"]: e["line"] for e in check_text(source).errors}
    assert errors == {
        "rules.0.type": 3,
        "distributors.0.allocations.0.tac": 10,
        "distributors.1.nmae": 12,
    }
    aliased = check_text("a: &x [1]\nb: *x\n").errors
    assert aliased[0]["line"] == 1 and "aliases" in aliased[0]["messages"][0]  # the anchor
    assert check_text("").errors[0]["messages"] == ["the bundle is empty"]


def test_simulate_endpoint(as_role, checkin):
    checkin(UNKNOWN, **BELARUS_NETWORK)
    editor = as_role("editor")
    text_ = dump_bundle(load_bundle_dir(ROOT / "policies")).replace("[CU,", "[BY, CU,", 1)
    body = editor.api("/console/api/policy/simulate", {"text": text_}).get_json()
    assert body["report"]["changes"] == {"allow->lock": 1}
    assert body["report"]["samples"]["allow->lock"] == [UNKNOWN]
    assert body["report"]["would_brake"] is True
    invalid = editor.api("/console/api/policy/simulate", {"text": "rules: 3"})
    assert invalid.status_code == 422 and invalid.get_json()["errors"]


def _edited(editor: Console, replace: tuple[str, str]) -> tuple[str, int]:
    page = text(editor.get("/console/policy/edit"))
    source = re.search(r'<textarea id="bundle-text"[^>]*>(.*?)</textarea>', page, re.S).group(1)
    source = source.replace("&#39;", "'").replace("&#34;", '"').replace("&amp;", "&")
    version = int(re.search(r'name="expected_version" value="(\d+)"', page).group(1))
    return source.replace(*replace, 1), version


def test_review_then_publish_with_expected_version(as_role, checkin, redis):
    checkin(HK, **US_NETWORK)
    editor = as_role("editor")
    source, version = _edited(editor, ("next_checkin_s: 86400", "next_checkin_s: 43200"))
    assert version == 1

    invalid = editor.post("/console/policy/review", {"text": "rules: 3", "expected_version": 1})
    assert invalid.status_code == 422 and "Line 1" in text(invalid)

    review = editor.post("/console/policy/review", {"text": source, "expected_version": 1})
    assert review.status_code == 200
    page = text(review)
    assert "setting next_checkin_s: 86400 -&gt; 43200" in page
    assert "devices replayed" in page and "No recorded device changes verdict." in page

    no_note = editor.post("/console/policy/publish", {"text": source, "expected_version": 1})
    assert no_note.status_code == 422 and "Say what changes and why." in text(no_note)
    done = editor.post(
        "/console/policy/publish", {"text": source, "expected_version": 1, "note": "twice a day"}
    )
    assert done.status_code == 302
    assert "Published version 2" in text(editor.get("/console/policy"))

    stale = editor.post(
        "/console/policy/publish", {"text": source, "expected_version": 1, "note": "again"}
    )
    assert stale.status_code == 409
    assert "Version 2 was published while you were editing" in text(stale)
    [entry] = [f for f in audit_entries(redis) if f["action"] == "policy.publish"]
    assert entry["actor"] == "test-editor"


def test_safety_brake_then_publish_anyway(as_role, checkin, tokens, client):
    checkin(UNKNOWN, **BELARUS_NETWORK)
    editor = as_role("editor")
    source, _ = _edited(editor, ("[CU,", "[BY, CU,"))
    form = {"text": source, "expected_version": 1, "note": "sanction Belarus"}
    braked = editor.post("/console/policy/publish", form)
    assert braked.status_code == 409
    assert "would go from allow to lock" in text(braked)
    assert 'name="force"' in text(braked)
    assert editor.post("/console/policy/publish", {**form, "force": "1"}).status_code == 302
    policy = client.get("/v1/policy", headers=bearer(tokens["editor"])).get_json()
    assert policy["version"] == 2 and policy["rules"][0]["regions"][0] == "BY"


def test_versions_diff_and_rollback(as_role, tokens, client):
    editor = as_role("editor")
    source, _ = _edited(editor, ("[CU,", "[BY, CU,"))
    editor.post("/console/policy/publish", {"text": source, "expected_version": 1, "note": "BY"})

    compare = text(editor.get("/console/policy/compare", query_string={"a": 1, "b": 2}))
    assert re.search(r'<td class="code add">\s*regions: \[BY, CU,', compare)
    assert re.search(r'<td class="code del">\s*regions: \[CU,', compare)
    assert "~ rule sanctions: regions" in compare

    version_page = editor.get("/console/policy/versions/1")
    assert "Roll back to version 1" in text(version_page)
    refused = editor.post("/console/policy/rollback", {"version": "1", "note": ""})
    assert refused.status_code == 422 and "Say why you roll back." in text(refused)
    done = editor.post("/console/policy/rollback", {"version": "1", "note": "BY was a mistake"})
    # Dropping BY weakens sanctions: sent for approval (SPEC §12.4), approved by compliance.
    assert done.status_code == 302 and "/console/policy/approvals" in done.headers["Location"]
    pending = client.get("/v1/policy/approvals", headers=bearer(tokens["editor"])).get_json()
    (request,) = pending["approvals"]
    approved = as_role("compliance").post(
        f"/console/policy/approvals/{request['id']}", {"decision": "approve"}
    )
    assert approved.status_code == 302
    policy = client.get("/v1/policy", headers=bearer(tokens["editor"])).get_json()
    assert policy["version"] == 3 and "BY" not in policy["rules"][0]["regions"]
    assert editor.get("/console/policy/versions/99").status_code == 404
    # Readers see the history and diffs but no editing or rollback.
    agent_page = text(as_role("agent").get("/console/policy/versions/1"))
    assert "Roll back" not in agent_page and "Compared with the active version" in agent_page


# --- errors -----------------------------------------------------------------------------


def test_unknown_console_page_is_a_console_404(console):
    response = console.get("/console/no/such/page")
    assert response.status_code == 404
    assert response.mimetype == "text/html" and "Not found" in text(response)
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


def test_redis_down_gives_a_friendly_503_page(make_app, app, tokens):
    signed_in = Console(app.test_client())
    signed_in.sign_in(tokens["agent"])
    cookie = signed_in.client.get_cookie(COOKIE, path="/console").value

    down = make_app(redis_url="redis://127.0.0.1:1/0", secret_key=app.secret_key)
    client = down.test_client()
    client.set_cookie(COOKIE, cookie, path="/console")
    started = time.monotonic()
    response = client.get("/console/devices")
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert "Temporarily unavailable" in text(response) and "Try again" in text(response)
    # Issue 12.7: the console cannot know whether a change sent just before went through.
    assert "nothing was changed" not in text(response).lower()
    assert response.headers["Retry-After"]
    assert time.monotonic() - started < 5

    api = client.post(
        "/console/api/policy/validate", json={"text": ""}, headers={"X-CSRF-Token": "x"}
    )
    assert api.status_code in (400, 503) and api.mimetype == "application/json"


def test_console_api_errors_use_the_api_payload_and_codes(app, as_role, tokens):
    editor = as_role("editor")

    def error_of(response) -> dict:
        assert response.mimetype == "application/json"
        return response.get_json()["error"]

    bad = editor.api("/console/api/policy/validate", {"nope": 1})
    assert bad.status_code == 400 and error_of(bad)["code"] == "bad_request"
    forbidden = as_role("agent").api("/console/api/policy/validate", {"text": ""})
    assert forbidden.status_code == 403 and error_of(forbidden)["code"] == "forbidden"
    signed_out = Console(app.test_client())
    unauthorized = signed_out.api("/console/api/policy/validate", {"text": ""})
    assert unauthorized.status_code == 401 and error_of(unauthorized)["code"] == "unauthorized"
    missing = editor.api("/console/api/no/such/thing", {"text": ""})
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    no_csrf = editor.api("/console/api/policy/validate", {"text": ""}, csrf=False)
    assert no_csrf.status_code == 400 and error_of(no_csrf)["code"] == "bad_request"
    invalid = editor.api("/console/api/policy/simulate", {"text": "rules: 3"})
    assert invalid.status_code == 422
    error = error_of(invalid)
    assert error["code"] == "invalid_bundle" and "rules" in error["fields"]
    assert invalid.get_json()["errors"][0]["line"] == 1  # the lines the editor marks


def test_console_outage_trips_the_breaker_the_api_uses(make_app, app, tokens):
    signed_in = Console(app.test_client())
    signed_in.sign_in(tokens["agent"])
    cookie = signed_in.client.get_cookie(COOKIE, path="/console").value
    down = make_app(redis_url="redis://127.0.0.1:1/0", secret_key=app.secret_key)
    breaker = down.extensions["regionlock"].breaker
    breaker.pause_s = 30
    client = down.test_client()
    client.set_cookie(COOKIE, cookie, path="/console")

    page = client.get("/console/devices")
    assert page.status_code == 503 and page.mimetype == "text/html"
    assert "Temporarily unavailable" in text(page)
    assert breaker.is_open()
    # The API now answers at once, as after an outage it met itself.
    api = client.post("/v1/checkin", json={"imei": HK}, headers=bearer(tokens["device"]))
    assert api.status_code == 503 and api.headers["Retry-After"]
    # And so does the console: a page, and the editor's JSON in the one payload.
    again = client.get("/console/audit")
    assert again.status_code == 503 and again.headers["Retry-After"] == "5"
    assert "Temporarily unavailable" in text(again)
    editor_api = client.post(
        "/console/api/policy/validate", json={"text": ""}, headers={"X-CSRF-Token": "x"}
    )
    assert editor_api.status_code == 503 and editor_api.headers["Retry-After"] == "5"
    assert editor_api.get_json()["error"]["code"] == "unavailable"
    for response in (page, api, again, editor_api):
        body = text(response)
        assert "127.0.0.1" not in body and "Connection refused" not in body
        assert "Error 111" not in body


def test_a_refused_redis_command_is_a_500_without_its_text(as_role, client, tokens, redis):
    # A key of the wrong type: Redis refuses the command with its own words (WRONGTYPE …).
    redis.delete(keys.AUDIT)
    redis.set(keys.AUDIT, "not a stream")
    auditor = as_role("auditor")
    page = auditor.get("/console/audit")
    assert page.status_code == 500 and page.mimetype == "text/html"
    assert "Something went wrong" in text(page)
    api = client.get("/v1/audit", headers=bearer(tokens["auditor"]))
    assert api.status_code == 500
    assert api.get_json()["error"] == {"code": "internal_error", "message": "internal error"}
    assert "Retry-After" not in page.headers and "Retry-After" not in api.headers
    for response in (page, api):
        assert "WRONGTYPE" not in text(response) and "wrong kind" not in text(response)
    assert not auditor.client.application.extensions["regionlock"].breaker.is_open()


def test_unexpected_errors_never_show_their_text(as_role, app, client, tokens, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals: /srv/regionlock/var/keys")

    monkeypatch.setattr(app.extensions["regionlock"].audit, "query", broken)
    page = as_role("auditor").get("/console/audit")
    api = client.get("/v1/audit", headers=bearer(tokens["auditor"]))
    assert page.status_code == api.status_code == 500
    assert api.get_json()["error"]["code"] == "internal_error"
    for response in (page, api):
        assert "secret internals" not in text(response) and "/srv" not in text(response)


# --- console 500s found by the outside probe (issue 12.8) ---------------------------------

DEEP = "name: deep\nnote: x\nrules: " + "[" * 5000 + "]" * 5000 + "\n"
LONG_NUMBER = "name: long\nmax_new_lock_ratio: " + "1" * 5000 + "\n"


@pytest.mark.parametrize(("source", "line"), [(DEEP, 3), (LONG_NUMBER, 2)])
def test_hostile_yaml_is_a_422_at_its_line(as_role, source, line):
    [error] = check_text(source).errors
    assert error["line"] == line and error["path"] == ""
    editor = as_role("editor")
    live = editor.api("/console/api/policy/validate", {"text": source})
    assert live.status_code == 200
    assert live.get_json()["valid"] is False and live.get_json()["errors"] == [error]
    simulated = editor.api("/console/api/policy/simulate", {"text": source})
    assert simulated.status_code == 422 and simulated.get_json()["errors"] == [error]
    review = editor.post("/console/policy/review", {"text": source, "expected_version": 1})
    assert review.status_code == 422 and f"Line {line}" in text(review)


def test_hostile_yaml_messages(as_role):
    [deep] = check_text(DEEP).errors
    assert "nested" in deep["messages"][0]
    [number] = check_text(LONG_NUMBER).errors
    assert "number" in number["messages"][0] and "digits" in number["messages"][0]


@pytest.mark.parametrize(
    "target",
    [
        "/console/audit\r\nSet-Cookie: stolen=1",
        "/console/audit\nX-Injected: 1",
        "/console/audit\r",
        "/console/\x00audit",
        "/console/audit\t",
    ],
)
def test_sign_in_next_with_control_characters_is_ignored(console, tokens, target):
    response = console.sign_in(tokens["auditor"], next=target)
    assert response.status_code == 302
    assert response.headers["Location"] == "/console/audit"
    assert "stolen" not in response.headers.get("Set-Cookie", "")
    # Signed in, the page asked with that next= goes to the landing page too.
    again = console.get("/console/sign-in", query_string={"next": target})
    assert again.status_code == 302 and again.headers["Location"] == "/console/audit"


@pytest.mark.parametrize(
    "cursor",
    ["99999999999999999999-0", "1-18446744073709551616", "18446744073709551616-1", "0x1-1"],
)
def test_malformed_audit_cursor_is_a_notice_not_an_outage(as_role, cursor):
    response = as_role("auditor").get("/console/audit", query_string={"before": cursor})
    assert response.status_code == 200
    assert "That page link is not valid" in text(response)


def test_largest_cursor_still_pages(as_role):
    last = f"{(1 << 64) - 1}-{(1 << 64) - 1}"
    response = as_role("auditor").get("/console/audit", query_string={"before": last})
    assert response.status_code == 200 and "not valid" not in text(response)


def _padded(source: str, size: int) -> str:
    """SOURCE grown to SIZE characters with comment lines (still the same bundle)."""
    line = "# " + "padding " * 12 + "\n"
    return source + line * ((size - len(source)) // len(line) + 1)


@pytest.mark.parametrize("size", [750_000, 1_990_000])
def test_texts_that_validate_live_are_reviewed_and_published(as_role, size):
    editor = as_role("editor")
    source, version = _edited(editor, ("next_checkin_s: 86400", "next_checkin_s: 43200"))
    big = _padded(source, size)
    assert size <= len(big) <= 2_000_000
    assert editor.api("/console/api/policy/validate", {"text": big}).get_json()["valid"]
    edit = editor.post("/console/policy/edit", {"text": big, "expected_version": version})
    assert edit.status_code == 200
    review = editor.post("/console/policy/review", {"text": big, "expected_version": version})
    assert review.status_code == 200, text(review)[:500]
    assert "setting next_checkin_s: 86400 -&gt; 43200" in text(review)
    form = {"text": big, "expected_version": version, "note": "twice a day"}
    assert editor.post("/console/policy/publish", form).status_code == 302


def test_texts_over_the_limit_are_refused_with_a_message(as_role):
    editor = as_role("editor")
    source, version = _edited(editor, ("next_checkin_s: 86400", "next_checkin_s: 43200"))
    big = _padded(source, 2_000_100)
    review = editor.post("/console/policy/review", {"text": big, "expected_version": version})
    assert review.status_code == 422 and "over 2,000,000 characters" in text(review)


def test_device_page_lists_the_unlock_codes_issued_but_never_the_codes(
    as_role, checkin, client, tokens
):
    checkin(HK, **US_NETWORK)
    page = text(as_role("agent").get(f"/console/devices/{HK}"))
    assert "No offline unlock code issued for this device." in page
    codes = []
    for role, days, ticket in (("agent", 30, "SUP-41"), ("compliance", 0, None)):
        response = client.post(
            f"/v1/devices/{HK}/unlock-code",
            json={"challenge": "0000012345", "reason": "on the phone", "valid_days": days}
            | ({"ticket": ticket} if ticket else {}),
            headers=bearer(tokens[role]),
        )
        assert response.status_code == 201, response.get_json()
        codes.append(response.get_json()["code"])
    # Another device's code is not listed here.
    other = client.post(
        f"/v1/devices/{US}/unlock-code",
        json={"challenge": "0000012345", "reason": "r", "valid_days": 5},
        headers=bearer(tokens["agent"]),
    )
    assert other.status_code == 201
    page = text(as_role("agent").get(f"/console/devices/{HK}"))
    section = re.search(r'<section class="card" id="unlock-codes".*?</section>', page, re.S)
    assert section is not None
    listed = section.group(0)
    assert rows(listed) == 2
    first, second = re.findall(
        r"<tr>.*?</tr>", re.search(r"<tbody>(.*?)</tbody>", listed, re.S).group(1), re.S
    )
    # Newest first: the compliance officer's all-scope code valid until the next check-in.
    assert "test-compliance" in first and "sanctions included" in first
    assert "until the next check-in" in first
    assert "test-agent" in second and "Gray-market" in second and "30 days" in second
    assert "SUP-41" in second and "5 days" not in listed
    for code in codes:
        assert code not in page


# --- four eyes on sanctions (SPEC §12.4) -------------------------------------------------


def test_approvals_page_shows_the_diff_and_only_others_decide(as_role, tokens, client, redis):
    editor = as_role("editor")
    source, version = _edited(editor, ("[CU, ", "["))
    sent = editor.post(
        "/console/policy/publish", {"text": source, "expected_version": version, "note": "no CU"}
    )
    assert sent.status_code == 302
    assert sent.headers["Location"].startswith("/console/policy/approvals#a-")
    page = text(editor.get(sent.headers["Location"]))
    assert "Not published: this weakens sanctions (sanctions: region CU removed)" in page
    assert "sanctions: region CU removed" in page and "~ rule sanctions: regions" in page
    assert re.search(r'<td class="code del">\s*regions: \[CU, IR', page)
    # The requester may withdraw, not approve.
    assert "Approve and publish" not in page and "Withdraw request" in page
    approval_id = re.search(r'data-approval="([0-9a-f]{16})"', page).group(1)
    own = editor.post(f"/console/policy/approvals/{approval_id}", {"decision": "approve"})
    assert own.status_code == 403
    compliance = as_role("compliance")
    review = text(compliance.get("/console/policy/approvals"))
    assert "Approve and publish" in review and "Reject" in review and "Withdraw" not in review
    assert 'href="/console/policy/approvals"' in review  # in the nav
    # No CSRF token: refused, nothing decided.
    forged = compliance.post(
        f"/console/policy/approvals/{approval_id}", {"decision": "reject"}, csrf=False
    )
    assert forged.status_code == 400
    rejected = compliance.post(
        f"/console/policy/approvals/{approval_id}", {"decision": "reject", "note": "keep CU"}
    )
    assert rejected.status_code == 302
    after = text(compliance.get("/console/policy/approvals"))
    assert f"Rejected request {approval_id}" in after and "No pending requests." in after
    assert client.get("/v1/policy", headers=bearer(tokens["editor"])).get_json()["version"] == 1
    actions = [f["action"] for _, f in redis.xrange(keys.AUDIT) if "approval" in f["action"]]
    assert actions == ["policy.approval.request", "policy.approval.reject"]
    # Agents see no approvals at all.
    assert as_role("agent").get("/console/policy/approvals").status_code == 403


def test_requester_withdraws_from_the_console_and_stale_requests_say_so(as_role, tokens, client):
    editor = as_role("editor")
    source, version = _edited(editor, ("[CU, ", "["))
    editor.post(
        "/console/policy/publish", {"text": source, "expected_version": version, "note": "no CU"}
    )
    source, version = _edited(editor, ("[CU, IR, ", "[CU, "))
    editor.post(
        "/console/policy/publish", {"text": source, "expected_version": version, "note": "no IR"}
    )
    pending = client.get("/v1/policy/approvals", headers=bearer(tokens["editor"])).get_json()
    first, second = (a["id"] for a in pending["approvals"])
    # A strengthening publish moves the active version on: both requests are now stale.
    source, version = _edited(editor, ("[CU, ", "[BY, CU, "))
    published = editor.post(
        "/console/policy/publish", {"text": source, "expected_version": version, "note": "BY"}
    )
    assert published.headers["Location"] == "/console/policy"
    page = text(as_role("admin").get("/console/policy/approvals"))
    assert page.count("approving it fails, and it must be requested again") == 2
    withdrawn = editor.post(f"/console/policy/approvals/{first}", {"decision": "withdraw"})
    assert withdrawn.status_code == 302
    assert f"Withdrew request {first}" in text(editor.get("/console/policy/approvals"))
    compliance = as_role("compliance")
    assert (
        compliance.post(f"/console/policy/approvals/{first}", {"decision": "withdraw"}).status_code
        == 403
    )
    stale = compliance.post(f"/console/policy/approvals/{second}", {"decision": "approve"})
    assert stale.status_code == 302
    after = text(compliance.get("/console/policy/approvals"))
    assert "closed as stale and must be made again" in after and "No pending requests." in after


def test_an_override_change_that_check_ins_keep_racing_is_a_409_not_a_500(
    as_role, checkin, redis, monkeypatch, client, tokens
):
    """When check-ins keep changing the device under an override change (its retries spent),
    nothing is written and both the console and the API answer 409 with a way forward."""
    from service.devices import overrides

    checkin(HK, **US_NETWORK)
    agent = as_role("agent")
    monkeypatch.setattr(overrides, "_STALE_ATTEMPTS", 0)  # every attempt found stale
    form = {"reason": "proof of purchase", "step": "confirm"}
    done = agent.post(f"/console/devices/{HK}/unlock", form)
    assert done.status_code == 409
    assert "try again" in text(done)
    api = client.post(
        f"/v1/devices/{HK}/unlock", json={"reason": "proof"}, headers=bearer(tokens["agent"])
    )
    assert api.status_code == 409
    assert redis.get(keys.device_override(HK)) is None
    assert not [e for e in audit_entries(redis) if e["action"].startswith("device.")]
