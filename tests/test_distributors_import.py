"""`regionlock distributors import`: shipment lists become merged allocations (SPEC §6)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from service.cli import main
from service.engine.loading import load_bundle_dir
from service.policy.allocations import (
    OwnerIndex,
    imei_luhn_ok,
    merge_intervals,
    read_shipment,
    to_allocations,
)
from service.store.policy import PolicyStore
from tests.conftest import audit_entries, bearer
from tests.imeis import HK, imei

ROOT = Path(__file__).resolve().parent.parent
SEED = load_bundle_dir(ROOT / "policies")
#: A TAC no seed distributor holds.
FREE_TAC = "49015420"


@pytest.fixture
def cli(redis, redis_url, monkeypatch):
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


def shipment_file(tmp_path: Path, lines: list[str], name: str = "shipment.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def active_distributor(redis, ident: str) -> dict | None:
    store = PolicyStore(redis)
    bundle = store.version(store.active_version())["bundle"]
    return next((d for d in bundle["distributors"] if d["id"] == ident), None)


# --- the parser and the merging ---------------------------------------------------------------


def test_luhn_check_of_imeis():
    assert imei_luhn_ok(HK)
    wrong = HK[:-1] + str((int(HK[-1]) + 1) % 10)
    assert not imei_luhn_ok(wrong)


def test_consecutive_imeis_merge_into_one_range():
    # Consecutive IMEIs differ in their check digit; their 14-digit bodies are consecutive.
    lines = [imei(f"{FREE_TAC}{n:06d}") for n in (5, 3, 4, 6, 9, 10)]
    shipment = read_shipment(lines)
    assert shipment.ok and shipment.imeis == 6
    intervals = merge_intervals(shipment.bodies, shipment.bodies)
    assert intervals == [
        (int(f"{FREE_TAC}000003"), int(f"{FREE_TAC}000006")),
        (int(f"{FREE_TAC}000009"), int(f"{FREE_TAC}000010")),
    ]


def test_whole_tacs_become_tac_allocations():
    intervals = [(35387922_999_990, 35387925_000_005), (1_000_000, 1_999_999)]
    assert to_allocations(intervals) == [
        {"from": "35387922999990", "to": "35387922999999"},
        {"tac": "35387923"},
        {"tac": "35387924"},
        {"from": "35387925000000", "to": "35387925000005"},
        {"tac": "00000001"},
    ]
    assert to_allocations([(5, 9)]) == [{"from": "00000000000005", "to": "00000000000009"}]


def test_overlapping_and_adjacent_intervals_merge():
    assert merge_intervals([10, 1, 4, 20], [15, 3, 9, 25]) == [(1, 15), (20, 25)]
    assert merge_intervals([], []) == []


def test_bad_lines_are_reported_with_line_numbers_and_reasons():
    lines = [
        "imei",  # header
        imei(f"{FREE_TAC}000001"),
        "",
        HK[:-1] + str((int(HK[-1]) + 1) % 10),
        "12345",
        f"{FREE_TAC}000200,{FREE_TAC}000100",
        f"{FREE_TAC}000200,{FREE_TAC}00030",
        "imei",  # a header only counts on the first line
    ]
    shipment = read_shipment(lines)
    assert not shipment.ok and shipment.imeis == 1
    assert [(p.line, p.reason) for p in shipment.bad] == [
        (4, "IMEI with a wrong Luhn check digit"),
        (5, "expected a 15-digit IMEI or 'from,to'"),
        (6, "'from' is greater than 'to'"),
        (7, "a range is two 14-digit IMEI bodies: from,to"),
        (8, "expected a 15-digit IMEI or 'from,to'"),
    ]


def test_overlaps_with_other_distributors_name_the_line_and_owner():
    others = OwnerIndex.from_bundle(SEED, exclude="us-carrier")
    lines = [
        "from,to",
        f"{FREE_TAC}000000,{FREE_TAC}000099",
        "86012345099990,86012345100010",  # runs into hk-global's range
        imei("35875421123456"),  # eu-distri's TAC
        imei("35332211000001"),  # us-carrier's own TAC: excluded, fine
    ]
    shipment = read_shipment(lines, others)
    assert shipment.bad_count == 0 and shipment.overlap_count == 2
    assert [(p.line, p.reason) for p in shipment.overlaps] == [
        (3, "overlaps range 86012345000000-86012345099999 of distributor 'hk-global'"),
        (4, "overlaps tac 35875421 of distributor 'eu-distri'"),
    ]


def test_a_big_shipment_list_collapses_to_few_allocations():
    lines = [imei(f"{FREE_TAC}{n:06d}") for n in range(1_000_000 - 50_000, 1_000_000)]
    lines += [f"{int(FREE_TAC) + 1}000000,{int(FREE_TAC) + 1}999999"]
    shipment = read_shipment(lines)
    assert shipment.ok
    starts = list(shipment.bodies) + list(shipment.range_starts)
    ends = list(shipment.bodies) + list(shipment.range_ends)
    assert to_allocations(merge_intervals(starts, ends)) == [
        {"from": f"{FREE_TAC}950000", "to": f"{FREE_TAC}999999"},
        {"tac": f"{int(FREE_TAC) + 1}"},
    ]


# --- the command ------------------------------------------------------------------------------


def test_import_a_new_distributor_publishes_a_version(cli, tmp_path, redis, client, tokens):
    lines = ["IMEI"] + [imei(f"{FREE_TAC}{n:06d}") for n in range(100)]
    lines += [f"{int(FREE_TAC) + 1}000000,{int(FREE_TAC) + 1}999999", imei(f"{FREE_TAC}000500")]
    path = shipment_file(tmp_path, lines)
    result = cli(
        "distributors",
        "import",
        path,
        "--distributor",
        "br-dist",
        "--name",
        "Brasil Fones",
        "--territories",
        "br,ar",
        "--actor",
        "ops",
    )
    assert result.exit_code == 0, result.output
    assert "101 IMEIs, 1 ranges" in result.stdout and "published version 1" in result.stdout
    dist = active_distributor(redis, "br-dist")
    assert dist["name"] == "Brasil Fones" and dist["territories"] == ["BR", "AR"]
    assert dist["allocations"] == [
        {"from": f"{FREE_TAC}000000", "to": f"{FREE_TAC}000099"},
        {"from": f"{FREE_TAC}000500", "to": f"{FREE_TAC}000500"},
        {"tac": f"{int(FREE_TAC) + 1}"},
    ]
    assert active_distributor(redis, "hk-global") is not None  # the rest is kept
    [entry] = audit_entries(redis)
    assert (entry["action"], entry["actor"]) == ("policy.publish", "ops")
    assert orjson.loads(entry["detail"])["note"] == "import shipment.csv for br-dist"
    # The service now knows these phones: one checking in from the US is a gray import.
    response = client.post(
        "/v1/checkin",
        json={"imei": imei(f"{FREE_TAC}000042"), "sim": {"network": "310260"}},
        headers=bearer(tokens["device"]),
    )
    assert response.get_json()["verdict"] == "lock"
    assert response.get_json()["reasons"][0]["distributor"] == "br-dist"


def test_bad_lines_or_overlaps_publish_nothing(cli, tmp_path, redis, app):
    app.extensions["regionlock"].policies.current()  # version 1: the seed
    lines = [
        imei(f"{FREE_TAC}000001"),
        "not an imei",
        imei("35387923000077"),  # hk-global's TAC
    ]
    result = cli(
        "distributors",
        "import",
        shipment_file(tmp_path, lines),
        "--distributor",
        "br-dist",
        "--territories",
        "BR",
    )
    assert result.exit_code == 1
    assert "line 2: not an imei: expected a 15-digit IMEI or 'from,to'" in result.stderr
    assert (
        f"line 3: {imei('35387923000077')}: overlaps tac 35387923 of distributor 'hk-global'"
        in result.stderr
    )
    assert "1 bad lines, 1 overlapping other distributors: nothing published" in result.stderr
    assert PolicyStore(redis).active_version() == 1
    assert audit_entries(redis) == []


def test_dry_run_publishes_nothing(cli, tmp_path, redis):
    path = shipment_file(tmp_path, [imei(f"{FREE_TAC}000001")])
    result = cli(
        "distributors",
        "import",
        path,
        "--distributor",
        "br-dist",
        "--territories",
        "BR",
        "--dry-run",
    )
    assert result.exit_code == 0
    assert "br-dist: 1 allocations after merging" in result.stdout
    assert "dry run: nothing published" in result.stdout
    assert PolicyStore(redis).active_version() is None


def test_dry_run_still_checks_the_resulting_bundle(cli, tmp_path):
    path = shipment_file(tmp_path, [imei(f"{FREE_TAC}000001")])
    result = cli(
        "distributors",
        "import",
        path,
        "--distributor",
        "br-dist",
        "--territories",
        "XX",
        "--dry-run",
    )
    assert result.exit_code == 1
    assert "territories.0" in result.stderr


def test_a_new_distributor_needs_territories(cli, tmp_path, redis):
    path = shipment_file(tmp_path, [imei(f"{FREE_TAC}000001")])
    result = cli("distributors", "import", path, "--distributor", "br-dist")
    assert result.exit_code == 1 and "--territories" in result.stderr
    assert PolicyStore(redis).active_version() is None


def test_import_adds_to_or_replaces_an_existing_distributor(cli, tmp_path, redis):
    # hk-global holds TAC 35387923 and 86012345000000-86012345099999; extend that range.
    path = shipment_file(tmp_path, ["86012345100000,86012345100009"])
    added = cli("distributors", "import", path, "--distributor", "hk-global", "--note", "more")
    assert added.exit_code == 0, added.output
    assert active_distributor(redis, "hk-global")["allocations"] == [
        {"tac": "35387923"},
        {"from": "86012345000000", "to": "86012345100009"},
    ]
    replaced = cli("distributors", "import", path, "--distributor", "hk-global", "--replace")
    assert replaced.exit_code == 0, replaced.output
    dist = active_distributor(redis, "hk-global")
    assert dist["allocations"] == [{"from": "86012345100000", "to": "86012345100009"}]
    assert dist["territories"] == ["HK", "MO"]
    store = PolicyStore(redis)
    assert store.active_version() == 2 and store.version(1)["note"] == "more"


def test_an_import_that_would_lock_many_devices_is_braked(cli, tmp_path, redis, client, tokens):
    # Five unknown phones in Brazil are allowed; giving them to a Hong Kong distributor makes
    # them gray imports.
    phones = [imei(f"{FREE_TAC}{n:06d}") for n in range(5)]
    for phone in phones:
        client.post(
            "/v1/checkin",
            json={"imei": phone, "sim": {"network": "72405"}},
            headers=bearer(tokens["device"]),
        )
    path = shipment_file(tmp_path, phones)
    result = cli(
        "distributors",
        "import",
        path,
        "--distributor",
        "hk2",
        "--territories",
        "HK",
    )
    assert result.exit_code == 1
    assert "safety brake" in result.stderr and "allow->lock: 5" in result.stderr
    assert PolicyStore(redis).active_version() == 1
    forced = cli(
        "distributors",
        "import",
        path,
        "--distributor",
        "hk2",
        "--territories",
        "HK",
        "--force",
    )
    assert forced.exit_code == 0 and PolicyStore(redis).active_version() == 2
