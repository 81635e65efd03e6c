"""Each change and its audit entry land together or not at all (issue 12.4).

Redis's MONITOR shows the commands a server executes in order: the audit entry's XADD must sit
inside the same MULTI ... EXEC as the change it records (before the fix, publish, rollback and
token create/revoke wrote the entry with a command of its own after the EXEC, or not at all)."""

from __future__ import annotations

import threading

import orjson
import redis as redis_lib
from click.testing import CliRunner

from service.cli import main
from service.store import keys
from tests.conftest import audit_entries, bearer


class Monitor:
    """Records every command the server executes while the block runs."""

    def __init__(self, redis_url: str):
        self.url = redis_url
        self.commands: list[str] = []

    def __enter__(self):
        self._client = redis_lib.Redis.from_url(self.url, decode_responses=True)
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self):
        while True:
            command = self._monitor.next_command()["command"]
            if "monitor-end-marker" in command:
                return
            self.commands.append(command)

    def __exit__(self, *exc):
        redis_lib.Redis.from_url(self.url).echo("monitor-end-marker")
        self._thread.join(timeout=10)
        self._monitor.__exit__(*exc)
        self._client.close()

    def transaction_with(self, needle: str) -> list[str]:
        """The commands of the MULTI ... EXEC that holds the XADD of an audit entry whose
        command line contains NEEDLE (fails when that XADD is outside any transaction)."""
        for index, command in enumerate(self.commands):
            if command.startswith(f"XADD {keys.AUDIT} ") and needle in command:
                start = max(i for i in range(index) if self.commands[i] == "MULTI")
                ends = [i for i in range(index, len(self.commands)) if self.commands[i] == "EXEC"]
                opened_after = [i for i in range(start, index) if self.commands[i] == "EXEC"]
                assert ends and not opened_after, f"audit XADD outside MULTI: {command}"
                return self.commands[start : ends[0] + 1]
        raise AssertionError(f"no audit entry containing {needle!r}: {self.commands}")


def test_publish_and_rollback_write_their_entry_in_the_transaction(
    redis_url, client, tokens, redis
):
    with Monitor(redis_url) as monitor:
        seed_version = client.get("/v1/policy", headers=bearer(tokens["editor"])).get_json()
        metadata = ("version", "published_at", "published_by", "note")
        bundle = {k: v for k, v in seed_version.items() if k not in metadata}
        published = client.post(
            "/v1/policy",
            json={"bundle": bundle, "note": "same again", "expected_version": 1},
            headers=bearer(tokens["editor"]),
        )
        assert published.status_code == 201, published.get_json()
        rolled = client.post(
            "/v1/policy/rollback",
            json={"version": 1, "note": "back"},
            headers=bearer(tokens["editor"]),
        )
        assert rolled.status_code == 201, rolled.get_json()
    seed = monitor.transaction_with("seed bundle from policies/")
    assert any(c.startswith(f"SET {keys.POLICY_ACTIVE} 1") for c in seed)
    publish = monitor.transaction_with("same again")
    assert any(c.startswith(f"SET {keys.POLICY_ACTIVE} 2") for c in publish)
    rollback = monitor.transaction_with("rolled_back_to")
    assert any(c.startswith(f"SET {keys.POLICY_ACTIVE} 3") for c in rollback)
    actions = [(e["action"], e["actor"]) for e in redis.xrange(keys.AUDIT) for e in [e[1]]]
    assert actions == [
        ("policy.publish", "seed"),
        ("policy.publish", "test-editor"),
        ("policy.rollback", "test-editor"),
    ]


def test_seed_version_one_has_its_entry(client, tokens, redis):
    client.get("/v1/policy", headers=bearer(tokens["editor"]))
    [(_, entry)] = redis.xrange(keys.AUDIT)
    assert (entry["action"], entry["actor"], entry["role"]) == ("policy.publish", "seed", "system")
    assert orjson.loads(entry["detail"])["version"] == 1


def test_token_create_and_revoke_write_their_entry_in_the_transaction(
    redis_url, redis, monkeypatch
):
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    runner = CliRunner()
    with Monitor(redis_url) as monitor:
        created = runner.invoke(
            main, ["token", "create", "--role", "agent", "--name", "desk-1", "--actor", "ops-ann"]
        )
        assert created.exit_code == 0, created.output
        revoked = runner.invoke(main, ["token", "revoke", "desk-1"])
        assert revoked.exit_code == 0, revoked.output
    create = monitor.transaction_with("token.create")
    assert any(c.startswith(f"HSET {keys.TOKENS_BY_NAME} desk-1 ") for c in create)
    assert any(c.startswith(f"HSET {keys.TOKENS_BY_HASH} ") for c in create)
    revoke = monitor.transaction_with("token.revoke")
    assert any(c.startswith(f"HDEL {keys.TOKENS_BY_NAME} desk-1") for c in revoke)
    entries = audit_entries(redis)
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("token.create", "ops-ann"),
        ("token.revoke", entries[1]["actor"]),
    ]
    # Without --actor: the OS user, never a bare "cli" or "cli:unknown" (issue 12.13).
    assert entries[1]["actor"].startswith("cli:") and entries[1]["actor"] != "cli:unknown"
    assert orjson.loads(entries[1]["detail"]) == {"name": "desk-1", "role": "agent"}


def test_a_refused_token_create_writes_nothing(redis_url, redis, monkeypatch):
    monkeypatch.setenv("REGIONLOCK_REDIS_URL", redis_url)
    runner = CliRunner()
    assert runner.invoke(main, ["token", "create", "--role", "agent", "--name", "x"]).exit_code == 0
    again = runner.invoke(main, ["token", "create", "--role", "agent", "--name", "x"])
    assert again.exit_code == 2 and "exists already" in again.output
    assert [e["action"] for e in audit_entries(redis)] == ["token.create"]
    assert redis.hlen(keys.TOKENS_BY_HASH) == 1
