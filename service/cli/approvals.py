"""`regionlock policy rollback` and `regionlock policy approvals list|approve|reject|withdraw`:
four eyes on sanctions at the command line (SPEC §12.4).

Like `regionlock policy publish`, the CLI acts with the admin role under the name ``--actor``
(default ``cli:<OS user>``); nobody decides a request made under their own name. Exit status: 0
done, 1 refused (unknown or closed request, own request, stale, safety brake), 2 could not run,
3 a rollback sent for approval.
"""

from __future__ import annotations

import sys

import click

from service.cli.common import ACTOR_OPTION, actor_name, redis_client
from service.policy import MAX_NOTE_CHARS

#: The role CLI users act with (as `regionlock policy publish`).
CLI_ROLE = "admin"


def _note_option(required: bool, help_text: str):
    def check(ctx, param, value):
        if value is None:
            return ""
        if len(value) > MAX_NOTE_CHARS or not value.replace("\n", "").isprintable():
            raise click.BadParameter(
                f"must be at most {MAX_NOTE_CHARS} printable characters", param_hint="--note"
            )
        if required and not value.strip():
            raise click.BadParameter("must not be empty", param_hint="--note")
        return value

    return click.option("--note", required=required, callback=check, help=help_text)


def _approvals(client):
    from service.cli.policy import _publisher
    from service.policy.approvals import Approvals

    return Approvals(_publisher(client))


def _refuse(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(1)


@click.command("rollback")
@click.argument("version", type=click.IntRange(min=1))
@_note_option(True, f"why (kept in history; 1-{MAX_NOTE_CHARS} characters)")
@ACTOR_OPTION
def policy_rollback(version: int, note: str, actor: str | None) -> None:
    """Publish a new version equal to VERSION (no safety brake); one that weakens sanctions is
    sent for approval (exit 3)."""
    from service.cli.policy import _publisher, _sent_for_approval
    from service.engine.validation import BundleError
    from service.policy.publishing import ApprovalRequired, UnknownVersion, VersionConflict

    with redis_client() as client:
        try:
            published = _publisher(client).rollback(
                version, note=note, actor=actor_name(actor), role=CLI_ROLE
            )
        except UnknownVersion:
            _refuse(f"there is no published version {version}")
        except BundleError:
            _refuse(f"version {version} no longer passes validation: it cannot be restored")
        except VersionConflict:
            _refuse("other versions kept being published meanwhile; run again")
        except ApprovalRequired as exc:
            _sent_for_approval(exc.approval)
    click.echo(f"published version {published.entry['version']} (= version {version})")


@click.group("approvals")
def approvals_group() -> None:
    """Requests that weaken a sanctions rule, waiting for a second person (SPEC §12.4)."""


@approvals_group.command("list")
def approvals_list() -> None:
    """Pending requests, oldest first, each with its diff against the active version."""
    from service.engine.sanctions_changes import describe

    with redis_client() as client:
        rows = _approvals(client).pending()
    if not rows:
        click.echo("no pending approval requests")
        return
    for row in rows:
        what = row["kind"] if row["kind"] == "publish" else f"rollback to {row['rolled_back_to']}"
        stale = "  STALE: the active version moved, approving fails" if row["stale"] else ""
        click.echo(
            f"{row['id']}  {what} by {row['requested_by']} at {row['created_at']}"
            f" (compared with version {row['compared_version']}, active {row['active_version']})"
            f"{stale}"
        )
        click.echo(f"  note: {row['note']}")
        for change in row["changes"]:
            click.echo(f"  weakens: {describe(change)}")
        for line in row["diff_lines"]:
            click.echo(f"  diff: {line}")
        click.echo(f"  expires {row['expires_at']}")


@approvals_group.command("approve")
@click.argument("approval_id")
@_note_option(False, "why it is approved (audited)")
@ACTOR_OPTION
def approvals_approve(approval_id: str, note: str, actor: str | None) -> None:
    """Publish request APPROVAL_ID (safety brake applies), if the active version is still the
    one it was compared with."""
    from service.cli.policy import echo_report
    from service.policy.approvals import ApprovalStale
    from service.policy.publishing import SafetyBrake

    with redis_client() as client:
        with _decision_errors(approval_id):
            try:
                published, record = _approvals(client).approve(
                    approval_id, note=note, actor=actor_name(actor), role=CLI_ROLE
                )
            except ApprovalStale as exc:
                _refuse(
                    f"version {exc.active} was published since the request was compared with "
                    f"version {exc.record['compared_version']}: it is closed as stale and must "
                    "be requested again"
                )
            except SafetyBrake as exc:
                click.echo(f"safety brake: {exc}", err=True)
                echo_report(exc.report.to_dict(), err=True)
                _refuse("nothing published; the request stays pending")
    if published.report is not None:
        echo_report(published.report.to_dict())
    click.echo(
        f"approved {approval_id}: published version {published.entry['version']} "
        f"(requested by {record['requested_by']})"
    )


@approvals_group.command("reject")
@click.argument("approval_id")
@_note_option(False, "why it is rejected (audited)")
@ACTOR_OPTION
def approvals_reject(approval_id: str, note: str, actor: str | None) -> None:
    """Close request APPROVAL_ID unpublished."""
    with redis_client() as client, _decision_errors(approval_id):
        _approvals(client).reject(approval_id, note=note, actor=actor_name(actor), role=CLI_ROLE)
    click.echo(f"rejected {approval_id}")


@approvals_group.command("withdraw")
@click.argument("approval_id")
@ACTOR_OPTION
def approvals_withdraw(approval_id: str, actor: str | None) -> None:
    """Take back your own pending request APPROVAL_ID."""
    with redis_client() as client, _decision_errors(approval_id):
        _approvals(client).withdraw(approval_id, actor=actor_name(actor), role=CLI_ROLE)
    click.echo(f"withdrew {approval_id}")


class _decision_errors:
    """Turns the refusals every decision shares into a message and exit 1."""

    def __init__(self, approval_id: str):
        self.approval_id = approval_id

    def __enter__(self) -> None:
        from service.policy.approvals import is_approval_id

        if not is_approval_id(self.approval_id):
            _refuse(f"there is no approval request {self.approval_id!r}")

    def __exit__(self, kind, exc, tb) -> bool:
        from service.policy.approvals import (
            ApprovalClosed,
            ApprovalMissing,
            NotRequester,
            OwnRequest,
        )

        if isinstance(exc, ApprovalMissing):
            _refuse(f"there is no approval request {self.approval_id}")
        if isinstance(exc, ApprovalClosed):
            _refuse(f"approval request {self.approval_id} is {exc.record['state']}")
        if isinstance(exc, OwnRequest):
            _refuse(
                f"you ({exc}) requested this change: another compliance officer or admin must "
                "decide it (four eyes; use their --actor name)"
            )
        if isinstance(exc, NotRequester):
            _refuse(f"only its requester ({exc}) may withdraw it")
        return False
