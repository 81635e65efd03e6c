"""Offline unlock codes (SPEC §11): the code, its reference verifier, and the API that issues
them with the matching override (docs/unlock-codes.md has the published vectors)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from click.testing import CliRunner

from service.cli import main
from service.crypto.device_keys import device_key, unlock_code, verify_code

KEY = device_key(bytes(range(32)), "353879234252633")


def _by_hand(key: bytes, challenge: str, scope: str, days: int) -> str:
    """SPEC §11's words, written out again independently of the module."""
    digest = hmac.new(key, f"{challenge}:{scope}:{days}".encode(), hashlib.sha256).digest()
    return str(int.from_bytes(digest[:8], "big") % 10**12).zfill(12)


@pytest.mark.parametrize(
    ("challenge", "scope", "days"),
    [("0123456789", "gray", 7), ("0000000001", "all", 0), ("9999999999", "all", 90)],
)
def test_the_code_is_the_spec_formula_and_verifies(challenge, scope, days):
    code = unlock_code(KEY, challenge, scope, days)
    assert code == _by_hand(KEY, challenge, scope, days)
    assert len(code) == 12 and code.isdigit()
    assert verify_code(KEY, challenge, code) == (scope, days)


def test_a_code_is_bound_to_its_device_challenge_and_grant():
    code = unlock_code(KEY, "0123456789", "gray", 7)
    other_key = device_key(bytes(range(32)), "358754210000014")
    assert verify_code(other_key, "0123456789", code) is None
    assert verify_code(KEY, "0123456788", code) is None
    assert unlock_code(KEY, "0123456789", "all", 7) != code
    assert unlock_code(KEY, "0123456789", "gray", 8) != code
    # Off by one digit: refused.
    wrong = code[:-1] + str((int(code[-1]) + 1) % 10)
    assert verify_code(KEY, "0123456789", wrong) is None


@pytest.mark.parametrize(
    ("challenge", "code"),
    [
        ("012345678", "000000000000"),
        ("01234567890", "000000000000"),
        ("０１２３４５６７８９", "0"),
        ("0123456789", "12345678901"),
        ("0123456789", "1234567890123"),
        ("0123456789", "12345678901a"),
    ],
)
def test_verify_refuses_malformed_input_without_raising(challenge, code):
    assert verify_code(KEY, challenge, code) is None


@pytest.mark.parametrize(
    ("scope", "days"), [("none", 7), ("GRAY", 7), ("gray", -1), ("gray", 91), ("all", True)]
)
def test_unlock_code_refuses_what_is_not_a_grant(scope, days):
    with pytest.raises(ValueError):
        unlock_code(KEY, "0123456789", scope, days)


def _verify(*args):
    return CliRunner().invoke(main, ["unlock-codes", "verify", *args])


def test_the_verify_command_prints_the_grant():
    code = unlock_code(KEY, "0012345678", "all", 30)
    result = _verify("--device-key", KEY.hex(), "--challenge", "0012345678", "--code", code)
    assert result.exit_code == 0, result.output
    assert "scope: all" in result.output
    assert "valid_days: 30" in result.output
    assert "sanctioned_region" in result.output
    zero = unlock_code(KEY, "0012345678", "gray", 0)
    result = _verify("--device-key", KEY.hex().upper(), "--challenge", "0012345678", "--code", zero)
    assert result.exit_code == 0, result.output
    assert "scope: gray" in result.output and "valid_days: 0" in result.output
    assert "next successful check-in" in result.output


def test_the_verify_command_exits_1_for_a_wrong_code():
    code = unlock_code(KEY, "0012345678", "all", 30)
    for challenge, candidate in (
        ("0012345679", code),
        ("0012345678", "000000000000"),
        ("0012345678", "123"),
    ):
        result = _verify("--device-key", KEY.hex(), "--challenge", challenge, "--code", candidate)
        assert result.exit_code == 1, result.output
        assert "scope:" not in result.output


@pytest.mark.parametrize(
    ("key", "challenge"), [("abc", "0012345678"), ("zz" * 32, "0012345678"), (KEY.hex(), "12")]
)
def test_the_verify_command_names_a_bad_argument(key, challenge):
    result = _verify("--device-key", key, "--challenge", challenge, "--code", "000000000000")
    assert result.exit_code == 2
    assert "--device-key" in result.output or "--challenge" in result.output
