"""`regionlock policy validate|test|simulate|publish|diff` (SPEC §6)."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from service.cli import main
from service.store.policy import PolicyStore
from tests.conftest import audit_entries, bearer
from tests.imeis import imei

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(redis, redis_url, monkeypatch):
    """Runs `regionlock ...` against the (flushed) test Redis."""
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    monkeypatch.setenv("USER", "tester")

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    """A copy of the seed bundle (and its cases) to edit."""
    target = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def sanction_russia(folder: Path) -> None:
    edit(folder / "10-sanctions.yaml", "UA-43, UA-40]", "UA-43, UA-40, RU]")


@pytest.fixture
def russians(client, tokens):
    """Five recorded devices on a Russian network, allowed by the seed bundle."""
    devices = [imei(f"49015420{n:06d}") for n in range(5)]
    for device in devices:
        response = client.post(
            "/v1/checkin",
            json={"imei": device, "sim": {"network": "25001"}},
            headers=bearer(tokens["device"]),
        )
        assert response.get_json()["verdict"] == "allow"
    return devices


def test_validate_accepts_the_seed(cli):
    result = cli("policy", "validate", ROOT / "policies")
    assert result.exit_code == 0
    assert "valid (4 rules, 5 distributors, 9 allocations)" in result.stdout


def test_validate_lists_every_error_with_file_and_path(cli, bundle_dir):
    edit(bundle_dir / "10-sanctions.yaml", "UA-43, UA-40]", "UA-43, UA-40, XX]")
    edit(bundle_dir / "20-gray-market.yaml", "min_signals: 1", "min_signals: 4")
    result = cli("policy", "validate", bundle_dir)
    assert result.exit_code == 1
    assert "10-sanctions.yaml:rules.0.regions.7: unknown country code 'XX'" in result.stderr
    assert "20-gray-market.yaml:rules.0.min_signals: must be between 1 and 3" in result.stderr


def test_test_runs_the_cases_like_a_unit_test(cli):
    result = cli("policy", "test", ROOT / "policies")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    passes = [line for line in lines if line.startswith("PASS  ")]
    assert passes and not [line for line in lines if line.startswith("FAIL  ")]
    assert "PASS  gray-market.yaml:cases.0  HK phone activated in the US" in result.stdout
    assert lines[-1] == f"PASS: {len(passes)}/{len(passes)}"


def test_test_reports_a_failing_case_and_exits_1(cli, bundle_dir):
    # Macau leaves hk-global's territories: the case expecting an allow there must fail.
    edit(bundle_dir / "50-distributors.yaml", "territories: [HK, MO]", "territories: [HK]")
    result = cli("policy", "test", bundle_dir)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith("FAIL  ")]
    assert [lines[i].split("  ", 2)[2] for i in failed] == ["Macau is in hk-global's territory"]
    assert "check-in 1: verdict 'lock', expected 'allow'" in lines[failed[0] + 1]
    total = sum(line.startswith(("PASS  ", "FAIL  ")) for line in lines)
    assert lines[-2:] == [f"PASS: {total - 1}/{total}", f"FAIL: 1/{total}"]


def test_test_reports_broken_case_files(cli, bundle_dir):
    (bundle_dir / "cases" / "zz-broken.yaml").write_text(
        "cases:\n  - name: x\n    imei: '1'\n    checkins: []\n"
    )
    result = cli("policy", "test", bundle_dir)
    assert result.exit_code == 1
    assert "zz-broken.yaml:cases.0.imei" in result.stderr


def test_simulate_prints_the_impact(cli, bundle_dir, russians):
    sanction_russia(bundle_dir)
    result = cli("policy", "simulate", bundle_dir)
    assert result.exit_code == 0
    assert "evaluated 5 recorded devices against version 1" in result.stdout
    assert "allow->lock: 5" in result.stdout and "WOULD BRAKE" in result.stdout


def test_publish_is_braked_then_forced(cli, bundle_dir, russians, redis):
    sanction_russia(bundle_dir)
    braked = cli("policy", "publish", bundle_dir, "--note", "sanction RU")
    assert braked.exit_code == 1
    assert "safety brake" in braked.stderr and "allow->lock: 5" in braked.stderr
    assert "nothing published" in braked.stderr
    store = PolicyStore(redis)
    assert store.active_version() == 1

    forced = cli(
        "policy", "publish", bundle_dir, "--note", "sanction RU", "--force", "--actor", "ed"
    )
    assert forced.exit_code == 0, forced.output
    assert "published version 2 (forced past the safety brake)" in forced.stdout
    assert store.version(2)["published_by"] == "ed"
    assert "RU" in store.version(2)["bundle"]["rules"][0]["regions"]
    [entry] = audit_entries(redis)
    assert (entry["action"], entry["actor"]) == ("policy.publish", "ed")
    assert orjson.loads(entry["detail"])["changes"] == {"allow->lock": 5}


def test_publish_default_actor_and_first_version(cli, redis):
    result = cli("policy", "publish", ROOT / "policies", "--note", "first")
    assert result.exit_code == 0, result.output
    assert "published version 1" in result.stdout
    assert PolicyStore(redis).version(1)["published_by"] == "cli:tester"


def test_publish_refuses_an_invalid_bundle(cli, bundle_dir, redis):
    edit(bundle_dir / "10-sanctions.yaml", "UA-43, UA-40]", "UA-43, UA-40, XX]")
    result = cli("policy", "publish", bundle_dir, "--note", "x")
    assert result.exit_code == 1
    assert "rules.0.regions.7" in result.stderr
    assert PolicyStore(redis).active_version() is None


def test_diff_of_two_folders(cli, bundle_dir):
    sanction_russia(bundle_dir)
    edit(bundle_dir / "00-settings.yaml", "next_checkin_s: 86400", "next_checkin_s: 3600")
    edit(bundle_dir / "50-distributors.yaml", "territories: [HK, MO]", "territories: [HK]")
    result = cli("policy", "diff", ROOT / "policies", bundle_dir)
    assert result.exit_code == 1  # they differ, like diff(1)
    out = result.stdout
    assert "setting next_checkin_s: 86400 -> 3600" in out
    assert "~ rule sanctions: regions" in out
    assert "~ distributor hk-global: territories" in out
    assert f"+++ {bundle_dir}" in out
    assert "+  - RU\n" in out and "-next_checkin_s: 86400\n" in out

    same = cli("policy", "diff", ROOT / "policies", ROOT / "policies")
    assert same.exit_code == 0 and same.stdout == "no differences\n"


def test_diff_of_published_versions(cli, bundle_dir, tmp_path, redis):
    (bundle_dir / "60-more.yaml").write_text(
        "distributors:\n"
        "  - id: br-dist\n    territories: [BR]\n    allocations:\n"
        "      - tac: '49015421'\n"
    )
    assert cli("policy", "publish", ROOT / "policies", "--note", "v1").exit_code == 0
    assert cli("policy", "publish", bundle_dir, "--note", "v2").exit_code == 0
    result = cli("policy", "diff", 1, 2, "--summary-only")
    assert result.exit_code == 1
    assert result.stdout == "+ distributor br-dist\n"
    mixed = cli("policy", "diff", 2, bundle_dir)
    assert mixed.exit_code == 0 and mixed.stdout == "no differences\n"
    missing = cli("policy", "diff", 1, 9)
    assert missing.exit_code == 1 and "no published version 9" in missing.stderr


@pytest.mark.parametrize("note", ["x" * 1001, "   ", "bell\x07"])
def test_publish_note_is_bounded_like_the_api(cli, redis, note):
    """The API and console take 1-1000 printable characters; the CLI took any note."""
    result = cli("policy", "publish", ROOT / "policies", "--note", note)
    assert result.exit_code == 2 and "--note" in result.output
    assert PolicyStore(redis).active_version() is None
    assert audit_entries(redis) == []
