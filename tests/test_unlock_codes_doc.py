"""docs/unlock-codes.md's test vectors, recomputed from the page itself (no drift)."""

from __future__ import annotations

import hashlib
import hmac
import re

from click.testing import CliRunner

from service.cli import main
from service.crypto.device_keys import device_key, unlock_code, verify_code
from tests.conftest import ROOT
from tests.docvectors import section, table_rows

PAGE = (ROOT / "docs" / "unlock-codes.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return section(PAGE, title, level=2)


def _rows() -> list[list[str]]:
    return table_rows(_section("Unlock code vectors"))


def _master() -> bytes:
    return bytes.fromhex(re.search(r"test master key: `([0-9a-f]{64})`", PAGE).group(1))


def test_the_vectors_hold_and_cover_what_the_issue_asks():
    rows = _rows()
    assert len(rows) >= 6
    for number, imei, challenge, scope, days, message, first8, code in rows:
        key = device_key(_master(), imei)
        assert message == f"{challenge}:{scope}:{days}", number
        digest = hmac.new(key, message.encode("ascii"), hashlib.sha256).digest()
        assert digest[:8].hex() == first8, number
        assert unlock_code(key, challenge, scope, int(days)) == code, number
        assert verify_code(key, challenge, code) == (scope, int(days)), number
    assert {r[3] for r in rows} == {"gray", "all"}
    assert {"0", "90"} <= {r[4] for r in rows}
    assert any(r[2].startswith("0") for r in rows)  # a challenge with leading zeros
    assert any(r[7].startswith("0") for r in rows)  # a zero-padded code


def test_the_reference_verifier_accepts_every_vector():
    for _, imei, challenge, scope, days, _, _, code in _rows():
        key = device_key(_master(), imei).hex()
        result = CliRunner().invoke(
            main,
            [
                "unlock-codes",
                "verify",
                "--device-key",
                key,
                "--challenge",
                challenge,
                "--code",
                code,
            ],
        )
        assert result.exit_code == 0, result.output
        assert f"scope: {scope}\nvalid_days: {days}\n" in result.output


def test_the_worked_example_is_vector_1():
    example = _section("Worked example (vector 1)")
    _, imei, challenge, scope, days, message, first8, code = _rows()[0]
    key = device_key(_master(), imei)
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    for part in (imei, key.hex(), challenge, message, digest.hex(), first8, code):
        assert part in example
    assert str(int(first8, 16)) in example


def test_the_device_keys_agree_with_the_device_protocol_page():
    protocol = (ROOT / "docs" / "device-protocol.md").read_text(encoding="utf-8")
    assert _master().hex() in protocol
    assert "unlock-codes.md" in protocol


def test_the_device_protocol_page_carries_the_same_vectors():
    protocol = (ROOT / "docs" / "device-protocol.md").read_text(encoding="utf-8")
    start = protocol.index("### Unlock code vectors")
    table = protocol[start : protocol.index("\n## ", start)]
    ours = _section("Unlock code vectors")
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) >= 8  # header, rule and at least 6 vectors
    for line in lines:
        assert line in ours
