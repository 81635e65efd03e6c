"""Settings (service/config.py): typed fields, env overrides, one ConfigError for bad input."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from service.config import _COERCE, ConfigError, Settings, load_settings
from tests.conftest import bearer


def test_every_setting_has_a_coercion():
    assert {f.name for f in fields(Settings)} == set(_COERCE)


def test_unknown_override_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="'max_content_lenght'"):
        load_settings({"max_content_lenght": 10}, environ={})


def test_create_app_refuses_unknown_settings(make_app):
    with pytest.raises(ConfigError, match="'secret'"):
        make_app(secret="x")


@pytest.mark.parametrize(
    ("text", "expected"), [("1", True), ("on", True), ("TRUE", True), ("0", False), ("", False)]
)
def test_secure_cookies_read_as_a_switch(text, expected):
    assert load_settings({"secure_cookies": text}, environ={}).secure_cookies is expected


def test_secure_cookies_refuses_an_unclear_value():
    with pytest.raises(ConfigError, match="secure_cookies"):
        load_settings({"secure_cookies": "maybe"}, environ={})


def test_policy_body_limit_from_the_environment():
    environ = {"REGIONLOCK_POLICY_MAX_BODY_BYTES": "4096"}
    assert load_settings(environ=environ).policy_max_body_bytes == 4096
    assert load_settings(environ={}).policy_max_body_bytes == 64 << 20
    with pytest.raises(ConfigError, match="policy_max_body_bytes"):
        load_settings(environ={"REGIONLOCK_POLICY_MAX_BODY_BYTES": "lots"})


def test_policy_body_limit_applies_to_policy_calls(make_app, tokens):
    client = make_app(policy_max_body_bytes=4096, max_body_bytes=1 << 20).test_client()
    body = {"bundle": {"rules": []}, "pad": "x" * 8192}
    response = client.post("/v1/policy/validate", json=body, headers=bearer(tokens["editor"]))
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


def test_metrics_dir_from_prometheus_variable(tmp_path):
    environ = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    assert load_settings(environ=environ).metrics_dir == Path(tmp_path)
    assert load_settings(environ={}).metrics_dir is None


def test_secret_key_setting_signs_the_console_cookie(make_app):
    assert make_app(secret_key="s" * 48).secret_key == b"s" * 48


def test_secret_key_setting_may_be_bytes(make_app):
    assert make_app(secret_key=b"\x00k" * 24).secret_key == b"\x00k" * 24
