"""`regionlock policy ...` and `regionlock distributors ...`: policy editors at the command line.

Exit status: 0 when all went well, 1 when the command's answer is "no" (invalid bundle, a
failing case, a braked or conflicting publish, a bad shipment list, bundles that differ), 2 when
the command could not run (no Redis, bad configuration), 3 when a publish or rollback was not
published but sent for approval because it weakens sanctions (SPEC §12.4; the API's 202).

The CLI acts with the admin role (whoever runs it holds the service's Redis) under the name
``--actor`` (default ``cli:<OS user>``): four eyes compare these names, so a request made with
one name is approved with another (``regionlock policy approvals approve``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from service.cli.common import ACTOR_OPTION, actor_name, redis_client
from service.engine.loading import load_bundle_dir
from service.engine.validation import BundleError
from service.policy import MAX_NOTE_CHARS

_RULE = "-" * 80


def _check_note(note: str) -> str:
    """A version's note as the API accepts it (1-MAX_NOTE_CHARS characters, printable)."""
    if not note.strip() or len(note) > MAX_NOTE_CHARS:
        raise click.BadParameter(f"must be 1-{MAX_NOTE_CHARS} characters", param_hint="--note")
    if not note.replace("\n", "").isprintable():
        raise click.BadParameter("must be printable text", param_hint="--note")
    return note


def _echo_errors(errors: dict[str, list[str]]) -> None:
    for path, messages in errors.items():
        for message in messages:
            click.echo(f"  {path}: {message}", err=True)


def _load_dir(directory: str) -> dict[str, Any]:
    """The bundle in DIRECTORY, or exit 1 listing every error with its path."""
    try:
        return load_bundle_dir(directory)
    except BundleError as exc:
        click.echo(f"{directory}: invalid bundle ({len(exc.errors)} problems)", err=True)
        _echo_errors(exc.errors)
        sys.exit(1)


def _publisher(client):
    from service.policy.publishing import Publisher
    from service.store.audit import AuditStore
    from service.store.devices import DeviceStore
    from service.store.policy import PolicyStore

    return Publisher(DeviceStore(client), PolicyStore(client), AuditStore(client))


def echo_report(report: dict[str, Any], err: bool = False) -> None:
    """Print a simulation report (the API's form) for people."""
    against = report.get("active_version")
    click.echo(
        f"evaluated {report['evaluated']} recorded devices"
        f" against version {against if against is not None else '(none)'}"
        f" ({report['skipped']} without replayable facts)",
        err=err,
    )
    if not report["changes"]:
        click.echo("  no verdict changes", err=err)
    for change, count in report["changes"].items():
        samples = ", ".join(report["samples"].get(change, ()))
        click.echo(f"  {change}: {count}  (e.g. {samples})", err=err)
    click.echo(
        f"  allow->lock ratio {report['allow_to_lock_ratio']:.2%}, brake above "
        f"{report['max_new_lock_ratio']:.2%}{': WOULD BRAKE' if report['would_brake'] else ''}",
        err=err,
    )


#: Exit status of a publish or rollback sent for approval (SPEC §12.4).
EXIT_SENT_FOR_APPROVAL = 3


def _sent_for_approval(approval: dict) -> None:
    """Say that nothing was published and why; exit 3."""
    from service.engine.sanctions_changes import describe

    click.echo(
        f"NOT published: this weakens a sanctions rule of version "
        f"{approval['compared_version']}, so it needs the approval of a compliance officer "
        f"or admin other than you (SPEC §12.4). Sent for approval as {approval['id']}:",
        err=True,
    )
    for change in approval["changes"]:
        click.echo(f"  - {describe(change)}", err=True)
    click.echo(
        f"approve with: regionlock policy approvals approve {approval['id']} --actor NAME",
        err=True,
    )
    click.echo(approval["id"])  # alone on standard output, for scripts
    sys.exit(EXIT_SENT_FOR_APPROVAL)


def _publish(
    client,
    bundle: dict,
    note: str,
    expected: int | None,
    actor: str,
    force: bool,
    simulation_id: str | None = None,
):
    """Publish through the safety brake (judged on the finished job SIMULATION_ID when given,
    SPEC §12.5); exit 1 with the report when braked or stale, 3 when sent for approval."""
    from service.policy.publishing import (
        ApprovalRequired,
        SafetyBrake,
        SimulationUnusable,
        VersionConflict,
    )

    try:
        published = _publisher(client).publish(
            bundle,
            note=note,
            expected_version=expected,
            actor=actor,
            role="admin",
            force=force,
            simulation_id=simulation_id,
        )
    except SimulationUnusable as exc:
        click.echo(f"simulation not usable ({exc.code}): {exc}; nothing published", err=True)
        sys.exit(1)
    except BundleError as exc:
        click.echo("invalid bundle:", err=True)
        _echo_errors(exc.errors)
        sys.exit(1)
    except VersionConflict as exc:
        click.echo(
            f"version conflict: version {exc.active} was published meanwhile; run again",
            err=True,
        )
        sys.exit(1)
    except SafetyBrake as exc:
        click.echo(f"safety brake: {exc}", err=True)
        echo_report(exc.report.to_dict(), err=True)
        click.echo("nothing published (use --force to publish anyway)", err=True)
        sys.exit(1)
    except ApprovalRequired as exc:
        _sent_for_approval(exc.approval)
    if published.report is not None:
        echo_report(published.report.to_dict())
    forced = (
        " (forced past the safety brake)" if published.forced and published.report.brakes else ""
    )
    click.echo(f"published version {published.entry['version']}{forced}")
    return published


@click.group()
def policy() -> None:
    """Validate, test, simulate, publish and compare policy bundles."""


@policy.command("validate")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def policy_validate(directory: str) -> None:
    """Check the bundle in DIRECTORY (its *.yaml merged): every error with its path."""
    bundle = _load_dir(directory)
    allocations = sum(len(d["allocations"]) for d in bundle["distributors"])
    click.echo(
        f"{directory}: valid ({len(bundle['rules'])} rules, {len(bundle['distributors'])} "
        f"distributors, {allocations} allocations)"
    )


@policy.command("test")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def policy_test(directory: str) -> None:
    """Run DIRECTORY/cases/*.yaml (expected decisions) against the bundle in DIRECTORY."""
    from service.engine.cases import CaseError, load_cases, run_case
    from service.engine.compiler import compile_bundle

    policy_ = compile_bundle(_load_dir(directory))
    cases_dir = Path(directory) / "cases"
    try:
        cases = load_cases(cases_dir) if cases_dir.is_dir() else []
    except CaseError as exc:
        click.echo("invalid case files:", err=True)
        _echo_errors(exc.errors)
        sys.exit(1)
    if not cases:
        click.echo(f"no cases found in {cases_dir}/*.yaml", err=True)
        sys.exit(1)
    failed = 0
    for case in cases:
        result = run_case(policy_, case)
        click.echo(f"{'PASS' if result.passed else 'FAIL'}  {case.source}  {case.name}")
        for message in result.messages:
            click.echo(f"      {message}")
        failed += not result.passed
    click.echo(_RULE)
    click.echo(f"PASS: {len(cases) - failed}/{len(cases)}")
    if failed:
        click.echo(f"FAIL: {failed}/{len(cases)}")
        sys.exit(1)


@policy.command("simulate")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def policy_simulate(directory: str) -> None:
    """Show what the bundle in DIRECTORY would change for the recorded devices."""
    from service.engine.compiler import compile_bundle

    candidate = compile_bundle(_load_dir(directory))
    with redis_client() as client:
        echo_report(_publisher(client).simulate(candidate).to_dict())


@policy.command("publish")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--note",
    required=True,
    callback=lambda ctx, param, value: _check_note(value),
    help=f"why this version is published (kept in history; 1-{MAX_NOTE_CHARS} characters)",
)
@click.option("--force", is_flag=True, help="publish even when the safety brake trips")
@click.option(
    "--simulation-id",
    default=None,
    help="a finished simulation job of this bundle (POST /v1/policy/simulations) for the "
    "safety brake to judge on, instead of a sample drawn now",
)
@ACTOR_OPTION
def policy_publish(
    directory: str, note: str, force: bool, simulation_id: str | None, actor: str | None
) -> None:
    """Publish the bundle in DIRECTORY as the next version (safety brake applies)."""
    from service.store.policy import PolicyStore

    bundle = _load_dir(directory)
    with redis_client() as client:
        expected = PolicyStore(client).active_version()
        _publish(client, bundle, note, expected, actor_name(actor), force, simulation_id)


@policy.command("diff")
@click.argument("old")
@click.argument("new")
@click.option("--summary-only", is_flag=True, help="no unified text diff, only the summary")
def policy_diff(old: str, new: str, summary_only: bool) -> None:
    """Compare two bundles, each a folder or a published version number.

    Prints a summary (settings, rules and distributors added, removed, changed) and a unified
    diff of the normalised bundles as YAML. Exit status 1 when they differ, like diff(1).
    """
    from service.policy.diff import diff_summary, format_summary, summary_is_empty, unified_diff

    with contextlib.ExitStack() as stack:
        clients: list[Any] = []

        def client() -> Any:
            if not clients:  # Redis only when a version number is given
                clients.append(stack.enter_context(redis_client()))
            return clients[0]

        before = _resolve(old, client)
        after = _resolve(new, client)
    summary = diff_summary(before, after)
    if summary_is_empty(summary):
        click.echo("no differences")
        return
    for line in format_summary(summary):
        click.echo(line)
    if not summary_only:
        click.echo(_RULE)
        click.echo(unified_diff(before, after, _label(old), _label(new)), nl=False)
    sys.exit(1)


def _label(ref: str) -> str:
    return ref if Path(ref).is_dir() else f"version {ref}"


def _resolve(ref: str, client) -> dict[str, Any]:
    """The normalised bundle of a folder or of a published version number."""
    if Path(ref).is_dir():
        return _load_dir(ref)
    if not ref.isdigit():
        click.echo(f"{ref}: neither a folder nor a version number", err=True)
        sys.exit(2)
    from service.store.policy import PolicyStore

    entry = PolicyStore(client()).version(int(ref))
    if entry is None:
        click.echo(f"there is no published version {ref}", err=True)
        sys.exit(1)
    return entry["bundle"]


@click.group()
def distributors() -> None:
    """Manage distributors' IMEI allocations."""


def _territories(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [code.strip().upper() for code in value.split(",") if code.strip()]


@contextlib.contextmanager
def _lines(path: str) -> Iterator[Any]:
    # utf-8-sig: spreadsheets often start CSV files with a byte-order mark.
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        yield handle


@distributors.command("import")
@click.argument("path", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--distributor", "distributor_id", required=True, help="distributor id")
@click.option("--name", default=None, help="distributor name (new distributor, or a rename)")
@click.option("--territories", default=None, help="comma-separated codes, e.g. HK,MO")
@click.option(
    "--note",
    default=None,
    callback=lambda ctx, param, value: None if value is None else _check_note(value),
    help=f"note of the published version (1-{MAX_NOTE_CHARS} characters)",
)
@click.option("--replace", is_flag=True, help="replace the distributor's allocations (else add)")
@click.option("--dry-run", is_flag=True, help="check and report, publish nothing")
@click.option("--force", is_flag=True, help="publish even when the safety brake trips")
@ACTOR_OPTION
def distributors_import(
    path: str,
    distributor_id: str,
    name: str | None,
    territories: str | None,
    note: str | None,
    replace: bool,
    dry_run: bool,
    force: bool,
    actor: str | None,
) -> None:
    """Import a shipment list: one IMEI or 'from,to' range of 14-digit bodies per line.

    Consecutive IMEIs are merged into ranges and whole TACs into tac allocations. Bad lines and
    overlaps with other distributors are reported and nothing is published; otherwise a new
    policy version is published (safety brake applies).
    """
    from service.config import load_settings
    from service.policy.allocations import (
        DistributorError,
        OwnerIndex,
        read_shipment,
        with_distributor_allocations,
    )
    from service.store.policy import PolicyStore

    with redis_client() as client:
        store = PolicyStore(client)
        expected = store.active_version()
        if expected is None:  # nothing published yet: the service would serve the seed
            active = load_bundle_dir(load_settings().policies_dir)
        else:
            active = store.version(expected)["bundle"]
        others = OwnerIndex.from_bundle(active, exclude=distributor_id)
        with _lines(path) as handle:
            shipment = read_shipment(handle, others)
        click.echo(
            f"{path}: {shipment.lines} lines, {shipment.imeis} IMEIs, {shipment.ranges} ranges"
        )
        for problem in sorted(shipment.bad + shipment.overlaps, key=lambda p: p.line):
            click.echo(f"line {problem.line}: {problem.text}: {problem.reason}", err=True)
        listed = len(shipment.bad) + len(shipment.overlaps)
        if shipment.bad_count + shipment.overlap_count > listed:
            click.echo(
                f"... and {shipment.bad_count + shipment.overlap_count - listed} more", err=True
            )
        if not shipment.ok:
            click.echo(
                f"{shipment.bad_count} bad lines, {shipment.overlap_count} overlapping other "
                "distributors: nothing published",
                err=True,
            )
            sys.exit(1)
        try:
            bundle, count = with_distributor_allocations(
                active,
                distributor_id,
                shipment,
                name=name,
                territories=_territories(territories),
                replace=replace,
            )
        except DistributorError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)
        click.echo(f"{distributor_id}: {count} allocations after merging")
        if dry_run:
            from service.engine.validation import validate_bundle

            try:
                validate_bundle(bundle)
            except BundleError as exc:
                click.echo("the resulting bundle would be invalid:", err=True)
                _echo_errors(exc.errors)
                sys.exit(1)
            click.echo("dry run: nothing published")
            return
        note = note or f"import {Path(path).name} for {distributor_id}"
        _publish(client, bundle, note, expected, actor_name(actor), force)
