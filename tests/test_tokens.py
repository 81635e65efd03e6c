"""Tokens: CLI creation prints the token alone, only a hash is stored, 401/403 (SPEC §3)."""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

from service.cli import main
from service.store import keys
from service.store.tokens import TokenError, TokenStore
from tests.conftest import audit_entries, bearer


@pytest.fixture
def cli(redis_url, monkeypatch):
    """Runs `regionlock ...` against the test Redis."""
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return run


def test_create_prints_token_alone_and_stores_only_its_hash(cli, redis):
    result = cli("token", "create", "--role", "agent", "--name", "alice")
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert token.startswith("rl_") and len(token) > 30
    stored = redis.hgetall(keys.TOKENS_BY_HASH)
    assert list(stored) == [hashlib.sha256(token.encode()).hexdigest()]
    dump = str(redis.hgetall(keys.TOKENS_BY_NAME)) + str(stored)
    assert token not in dump
    assert TokenStore(redis).verify(token).role == "agent"


def test_list_and_revoke(cli, redis):
    token = cli("token", "create", "--role", "editor", "--name", "ed").stdout.strip()
    listed = cli("token", "list").stdout
    assert "ed\teditor" in listed and token not in listed
    assert cli("token", "revoke", "ed").exit_code == 0
    assert TokenStore(redis).verify(token) is None
    assert cli("token", "list").stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("token", "create", "--role", "root", "--name", "x"), "unknown role"),
        (("token", "revoke", "nobody"), "no token named"),
    ],
)
def test_cli_errors_are_clear(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_duplicate_name_refused(redis):
    store = TokenStore(redis)
    store.create("dup", "agent")
    with pytest.raises(TokenError, match="exists already"):
        store.create("dup", "admin")


def test_token_create_and_revoke_are_audited(cli, redis):
    cli("token", "create", "--role", "auditor", "--name", "aud")
    cli("token", "revoke", "aud")
    actions = [fields["action"] for fields in audit_entries(redis)]
    assert actions == ["token.create", "token.revoke"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer rl_not-a-real-token"}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    ],
)
def test_missing_or_unknown_token_is_401(client, headers, status):
    response = client.post("/v1/checkin", json={"imei": "353879234252633"}, headers=headers)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_revoked_token_is_401(client, redis, tokens):
    TokenStore(redis).revoke("test-device")
    response = client.post(
        "/v1/checkin", json={"imei": "353879234252633"}, headers=bearer(tokens["device"])
    )
    assert response.status_code == 401
