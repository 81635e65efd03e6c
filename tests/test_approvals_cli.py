"""`regionlock policy publish|rollback` and `regionlock policy approvals ...`: four eyes on
sanctions at the command line (SPEC §12.4)."""

from __future__ import annotations

import shutil

import orjson
import pytest
from click.testing import CliRunner

from service.cli import main
from service.store.policy import PolicyStore
from tests.conftest import ROOT, audit_entries
from tests.test_policy_cli import edit, sanction_russia


@pytest.fixture
def cli(redis, redis_url, monkeypatch):
    """Runs `regionlock ...` against the (flushed) test Redis."""
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def bundle_dir(tmp_path):
    """A copy of the seed bundle to edit."""
    target = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", target)
    return target


def drop_cuba(folder):
    edit(folder / "10-sanctions.yaml", "[CU, IR,", "[IR,")


def request(cli, folder, actor="alice"):
    result = cli("policy", "publish", folder, "--note", "drop Cuba", "--actor", actor)
    assert result.exit_code == 3, result.output
    return result.stdout.strip()


def test_a_weakening_publish_is_sent_for_approval(cli, bundle_dir, redis):
    cli("policy", "publish", bundle_dir, "--note", "first")  # version 1
    drop_cuba(bundle_dir)
    result = cli("policy", "publish", bundle_dir, "--note", "drop Cuba", "--actor", "alice")
    assert result.exit_code == 3
    approval_id = result.stdout.strip()
    assert len(approval_id) == 16
    assert "NOT published" in result.stderr and "sanctions: region CU removed" in result.stderr
    assert PolicyStore(redis).active_version() == 1
    listing = cli("policy", "approvals", "list")
    assert listing.exit_code == 0
    assert approval_id in listing.output and "publish by alice" in listing.output
    assert "weakens: sanctions: region CU removed" in listing.output
    assert "diff: ~ rule sanctions: regions" in listing.output
    entry = [e for e in audit_entries(redis) if e["action"] == "policy.approval.request"][0]
    assert entry["actor"] == "alice" and entry["role"] == "admin"


def test_approve_by_someone_else_publishes(cli, bundle_dir, redis):
    cli("policy", "publish", bundle_dir, "--note", "first")
    drop_cuba(bundle_dir)
    approval_id = request(cli, bundle_dir)
    own = cli("policy", "approvals", "approve", approval_id, "--actor", "alice")
    assert own.exit_code == 1 and "another compliance officer or admin" in own.stderr
    assert PolicyStore(redis).active_version() == 1
    done = cli("policy", "approvals", "approve", approval_id, "--actor", "bob", "--note", "ok")
    assert done.exit_code == 0, done.output
    assert f"approved {approval_id}: published version 2 (requested by alice)" in done.output
    store = PolicyStore(redis)
    entry = store.version(2)
    assert "CU" not in entry["bundle"]["rules"][0]["regions"]
    assert entry["published_by"] == "alice" and entry["approved_by"] == "bob"
    approve = [e for e in audit_entries(redis) if e["action"] == "policy.approval.approve"][0]
    assert approve["actor"] == "bob" and orjson.loads(approve["detail"])["note"] == "ok"
    assert cli("policy", "approvals", "list").output.strip() == "no pending approval requests"


def test_reject_and_withdraw(cli, bundle_dir, redis):
    cli("policy", "publish", bundle_dir, "--note", "first")
    drop_cuba(bundle_dir)
    first = request(cli, bundle_dir)
    second = request(cli, bundle_dir)
    assert cli("policy", "approvals", "reject", first, "--actor", "bob").exit_code == 0
    refused = cli("policy", "approvals", "withdraw", second, "--actor", "bob")
    assert refused.exit_code == 1 and "only its requester (alice)" in refused.stderr
    assert cli("policy", "approvals", "withdraw", second, "--actor", "alice").exit_code == 0
    closed = cli("policy", "approvals", "approve", first, "--actor", "bob")
    assert closed.exit_code == 1 and "is rejected" in closed.stderr
    assert PolicyStore(redis).active_version() == 1
    actions = [e["action"] for e in audit_entries(redis) if "approval" in e["action"]]
    assert actions == [
        "policy.approval.request",
        "policy.approval.request",
        "policy.approval.reject",
        "policy.approval.withdraw",
    ]


def test_stale_request(cli, bundle_dir, redis, tmp_path):
    cli("policy", "publish", bundle_dir, "--note", "first")
    drop_cuba(bundle_dir)
    approval_id = request(cli, bundle_dir)
    edit(bundle_dir / "10-sanctions.yaml", "[IR,", "[CU, IR,")
    sanction_russia(bundle_dir)
    assert cli("policy", "publish", bundle_dir, "--note", "RU").exit_code == 0  # version 2
    result = cli("policy", "approvals", "approve", approval_id, "--actor", "bob")
    assert result.exit_code == 1 and "closed as stale" in result.stderr
    assert PolicyStore(redis).active_version() == 2


def test_rollback_command(cli, bundle_dir, redis):
    cli("policy", "publish", bundle_dir, "--note", "first")
    edit(bundle_dir / "00-settings.yaml", "next_checkin_s: 86400", "next_checkin_s: 3600")
    cli("policy", "publish", bundle_dir, "--note", "faster")
    plain = cli("policy", "rollback", 1, "--note", "slower again")
    assert plain.exit_code == 0 and "published version 3 (= version 1)" in plain.output
    sanction_russia(bundle_dir)
    assert cli("policy", "publish", bundle_dir, "--note", "RU").exit_code == 0  # version 4
    weakening = cli("policy", "rollback", 3, "--note", "drop RU", "--actor", "alice")
    assert weakening.exit_code == 3 and "region RU removed" in weakening.stderr
    assert PolicyStore(redis).active_version() == 4
    done = cli("policy", "approvals", "approve", weakening.stdout.strip(), "--actor", "bob")
    assert done.exit_code == 0 and "published version 5" in done.output
    assert cli("policy", "rollback", 99, "--note", "x").exit_code == 1


def test_unknown_request(cli, redis):
    result = cli("policy", "approvals", "approve", "0123456789abcdef", "--actor", "bob")
    assert result.exit_code == 1 and "no approval request" in result.stderr
    assert cli("policy", "approvals", "reject", "zz", "--actor", "bob").exit_code == 1
