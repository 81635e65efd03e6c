"""docs/device-protocol.md's test vectors, recomputed from the page itself (no drift)."""

from __future__ import annotations

import re
import time

import orjson

from service.crypto.device_keys import auth_key, check_proof, device_key, proof_header
from tests.conftest import ROOT

PAGE = (ROOT / "docs" / "device-protocol.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = PAGE.index(f"### {title}")
    end = PAGE.find("\n#", start + 4)
    return PAGE[start : end if end != -1 else None]


def _rows(section: str) -> list[list[str]]:
    """The table rows of SECTION, each cell's code span (without the backticks)."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if all(c.startswith("`") and c.endswith("`") or c.isdigit() for c in cells):
            rows.append([c.strip("`") for c in cells])
    return rows


def _master() -> bytes:
    return bytes.fromhex(re.search(r"master key: `([0-9a-f]{64})`", PAGE).group(1))


def test_the_device_key_vectors_hold():
    rows = _rows(_section("Device key vectors"))
    assert len(rows) >= 2
    for imei, expected in rows:
        assert device_key(_master(), imei).hex() == expected


def test_the_proof_vectors_hold_and_the_server_accepts_them():
    rows = _rows(_section("Proof vectors"))
    assert len(rows) >= 4
    for number, imei, seconds, body, expected_key, header in rows:
        key = auth_key(_master(), imei)
        assert key.hex() == expected_key, number
        raw = body.encode("utf-8")
        assert orjson.loads(raw)["imei"] == imei  # a real check-in body
        assert proof_header(key, int(seconds), raw) == header, number
        assert check_proof(key, header, raw, float(seconds)).valid
        assert not check_proof(key, header, raw + b" ", float(seconds)).valid


def test_the_worked_example_is_vector_1():
    example = _section("Worked example (vector 1)")
    first = _rows(_section("Proof vectors"))[0]
    _, imei, seconds, body, key, header = first
    for part in (imei, key, f"`{body}`", f"`{seconds}`", f"X-Device-Proof: {header}"):
        assert part in example
    assert f"body ({len(body.encode())} bytes)" in example
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds))) in example
