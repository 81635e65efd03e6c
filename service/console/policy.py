"""Policy pages: the active bundle, the editor with live validation, impact review, publish,
version history with side-by-side diffs, and rollback.

Publishing goes through service.policy.publishing.Publisher, like POST /v1/policy: the same expected
version check, simulation, safety brake and audit entry. The browser keeps no token, so the
editor's live checks call the console's own JSON endpoints (session + CSRF header).
"""

from __future__ import annotations

from typing import Any

from flask import (
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue

from service.console import present, security
from service.console.blueprint import bp
from service.console.bundle_text import MAX_TEXT_BODY, check_text, dump_bundle
from service.console.diff import changed, side_by_side
from service.console.errors import error_answer
from service.engine.compiler import CompiledPolicy, compile_bundle
from service.engine.validation import BundleError
from service.policy import MAX_NOTE_CHARS
from service.policy.diff import diff_summary, format_summary
from service.policy.publishing import (
    ApprovalRequired,
    Publisher,
    SafetyBrake,
    UnknownVersion,
    VersionConflict,
    brake_message,
)
from service.policy.publishing import version_metadata as _version_metadata

MAX_NOTE = MAX_NOTE_CHARS
#: Above this many allocations the text views show a count per distributor instead of the list.
TEXT_ALLOCATIONS_MAX = 20_000


def _rl() -> Any:
    return current_app.extensions["regionlock"]


def _publisher() -> Publisher:
    rl = _rl()

    def compiled_active(number: int) -> CompiledPolicy | None:
        """This worker's compiled policy when it is version NUMBER."""
        # Reuse the policy this worker already compiled when it is the active one.
        active = rl.policies.current()
        return active.policy if active.version == number else None

    return Publisher(rl.devices, rl.policy_store, rl.audit, compiled_active)


def _active_number() -> int:
    rl = _rl()
    rl.policies.current()  # on a fresh Redis this publishes the seed bundle as version 1
    return rl.policy_store.active_version()


def _entry(number: int) -> dict[str, Any]:
    entry = _rl().policy_store.version(number)
    if entry is None:
        abort(404, description=f"There is no policy version {number}.")
    return entry


def _meta(entry: dict[str, Any]) -> dict[str, Any]:
    meta = _version_metadata(entry)
    meta["published"] = present.when(meta["published_at"])
    return meta


def _allocation_count(bundle: dict[str, Any]) -> int:
    return sum(len(d.get("allocations", ())) for d in bundle.get("distributors", ()))


def _for_text(bundle: dict[str, Any]) -> dict[str, Any]:
    if _allocation_count(bundle) <= TEXT_ALLOCATIONS_MAX:
        return bundle
    return {
        **bundle,
        "distributors": [
            {**d, "allocations": f"<{len(d.get('allocations', ()))} allocations>"}
            for d in bundle.get("distributors", ())
        ],
    }


def _text(bundle: dict[str, Any]) -> str:
    return dump_bundle(_for_text(bundle))


def _carries_text(view: Any) -> Any:
    """Mark a view whose body holds the editor's text: the blueprint raises the body limits
    for it (above the app-wide 1 MiB and werkzeug's form limit) before the CSRF check reads
    the form, so any text the live check accepts is accepted here too."""
    view.max_body_bytes = MAX_TEXT_BODY
    return view


def _versions() -> list[dict[str, Any]]:
    rows = _rl().policy_store.versions()
    return [_meta(row) for row in reversed(rows)]


@bp.get("/policy")
@security.needs("policy:read")
def policy() -> ResponseReturnValue:
    """The active bundle and the version history."""
    active = _active_number()
    entry = _entry(active)
    return render_template(
        "console/policy.html",
        active=_meta(entry),
        text=_text(entry["bundle"]),
        bundle=entry["bundle"],
        versions=_versions(),
    )


@bp.get("/policy/versions/<int:number>")
@security.needs("policy:read")
def policy_version(number: int) -> ResponseReturnValue:
    """One version, its differences from the active one, and (for editors) rollback."""
    active = _active_number()
    entry = _entry(number)
    active_entry = _entry(active)
    return _render_version(entry, active_entry)


def _render_version(
    entry: dict[str, Any],
    active_entry: dict[str, Any],
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    rows = side_by_side(_text(active_entry["bundle"]), _text(entry["bundle"]))
    return (
        render_template(
            "console/policy_version.html",
            version=_meta(entry),
            active=_meta(active_entry),
            text=_text(entry["bundle"]),
            rows=rows,
            differs=changed(rows),
            summary=format_summary(diff_summary(active_entry["bundle"], entry["bundle"])),
            form=form or {},
            errors=errors or {},
        ),
        status,
    )


@bp.get("/policy/compare")
@security.needs("policy:read")
def policy_compare() -> ResponseReturnValue:
    """Two versions side by side (default: the previous version against the active one)."""
    active = _active_number()
    numbers = [row["version"] for row in _versions()]
    try:
        right = int(request.args.get("b") or active)
        left = int(request.args.get("a") or max(right - 1, 1))
    except ValueError:
        abort(404, description="Choose versions by number.")
    old, new = _entry(left), _entry(right)
    rows = side_by_side(_text(old["bundle"]), _text(new["bundle"]))
    return render_template(
        "console/policy_compare.html",
        left=_meta(old),
        right=_meta(new),
        numbers=numbers,
        active_number=active,
        rows=rows,
        differs=changed(rows),
        summary=format_summary(diff_summary(old["bundle"], new["bundle"])),
    )


@bp.route("/policy/edit", methods=["GET", "POST"])
@security.needs("policy:write")
@_carries_text
def policy_edit() -> ResponseReturnValue:
    """The editor: the active bundle as YAML, or (POST, back from review) the text being edited."""
    active = _active_number()
    if request.method == "POST":
        text, expected = _posted()
        return _render_editor(text, expected or active, errors=check_text(text).errors)
    entry = _entry(active)
    if _allocation_count(entry["bundle"]) > TEXT_ALLOCATIONS_MAX:
        message = (
            "This bundle holds too many allocations to edit in a browser; use "
            "`regionlock policy` at the command line instead."
        )
        return render_template("console/error.html", status=413, title="Too large", text=message)
    return _render_editor(_text(entry["bundle"]), active)


def _render_editor(
    text: str,
    expected_version: int,
    errors: list[dict[str, Any]] | None = None,
    message: str | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    return (
        render_template(
            "console/policy_edit.html",
            text=text,
            expected_version=expected_version,
            active=_meta(_entry(_active_number())),
            errors=errors or [],
            message=message,
        ),
        status,
    )


def _posted() -> tuple[str, int | None]:
    text = request.form.get("text", "")
    try:
        expected = int(request.form.get("expected_version", ""))
    except ValueError:
        expected = None
    return text, expected


@bp.post("/policy/review")
@security.needs("policy:write")
@_carries_text
def policy_review() -> ResponseReturnValue:
    """Check the edited text; when valid, show its diff and impact before publishing."""
    text, expected = _posted()
    if expected is None:
        abort(400, description="The editor form lost its version number; reload the editor.")
    check = check_text(text)
    if not check.valid:
        return _render_editor(text, expected, errors=check.errors, status=422)
    return _render_review(text, expected, check.bundle)


def _render_review(
    text: str,
    expected: int,
    bundle: dict[str, Any] | None,
    note: str = "",
    errors: dict[str, str] | None = None,
    report: dict[str, Any] | None = None,
    braked: bool = False,
    status: int = 200,
) -> ResponseReturnValue:
    active_entry = _entry(_active_number())
    assert bundle is not None
    if report is None:
        report = _publisher().simulate(compile_bundle(bundle)).to_dict()
    rows = side_by_side(_text(active_entry["bundle"]), _text(bundle))
    return (
        render_template(
            "console/policy_review.html",
            text=text,
            expected_version=expected,
            active=_meta(active_entry),
            stale=active_entry["version"] != expected,
            rows=rows,
            differs=changed(rows),
            summary=format_summary(diff_summary(active_entry["bundle"], bundle)),
            report=report,
            note=note,
            errors=errors or {},
            braked=braked,
        ),
        status,
    )


@bp.post("/policy/publish")
@security.needs("policy:write")
@_carries_text
def policy_publish() -> ResponseReturnValue:
    """Publish the reviewed text as the next version."""
    text, expected = _posted()
    if expected is None:
        abort(400, description="The form lost its version number; reload the editor.")
    note = request.form.get("note", "").strip()
    force = request.form.get("force") == "1"
    check = check_text(text)
    if not check.valid:
        return _render_editor(text, expected, errors=check.errors, status=422)
    if not note:
        return _render_review(
            text, expected, check.bundle, note, {"note": "Say what changes and why."}, status=422
        )
    if len(note) > MAX_NOTE:
        return _render_review(
            text,
            expected,
            check.bundle,
            note,
            {"note": f"At most {MAX_NOTE} characters."},
            status=422,
        )
    user = security.current_user()
    assert user is not None
    _active_number()
    try:
        published = _publisher().publish(
            check.bundle,  # type: ignore[arg-type]
            note=note,
            expected_version=expected,
            actor=user.name,
            role=user.role,
            force=force,
        )
    except VersionConflict as exc:
        message = (
            f"Version {exc.active} was published while you were editing (you started from "
            f"version {expected}). Your text is kept below: compare it with version "
            f"{exc.active}, re-apply your change on top of it if needed, and review again."
        )
        return _render_editor(text, exc.active or expected, message=message, status=409)
    except ApprovalRequired as exc:  # four eyes on sanctions (SPEC §12.4)
        from service.console.approvals import sent_for_approval

        return sent_for_approval(exc.approval)
    except SafetyBrake as exc:
        return _render_review(
            text,
            expected,
            check.bundle,
            note,
            {"brake": brake_message(exc.report)},
            report=exc.report.to_dict(),
            braked=True,
            status=409,
        )
    except BundleError as exc:  # validated above; kept so a race with a schema change is clear
        return _render_editor(
            text,
            expected,
            errors=[
                {"path": p, "line": 1, "column": None, "messages": m} for p, m in exc.errors.items()
            ],
            status=422,
        )
    number = published.entry["version"]
    forced = " (safety brake overridden)" if published.forced else ""
    flash(f"Published version {number}{forced}: devices get it within a second.", "success")
    return redirect(url_for("console.policy"))


@bp.post("/policy/rollback")
@security.needs("policy:write")
def policy_rollback() -> ResponseReturnValue:
    """Publish a new version equal to an earlier one."""
    try:
        number = int(request.form.get("version", ""))
    except ValueError:
        abort(400, description="Choose a version to roll back to.")
    note = request.form.get("note", "").strip()
    active = _active_number()
    entry = _entry(number)
    if not note or len(note) > MAX_NOTE:
        error = "Say why you roll back." if not note else f"At most {MAX_NOTE} characters."
        return _render_version(entry, _entry(active), {"note": note}, {"note": error}, 422)
    user = security.current_user()
    assert user is not None
    try:
        published = _publisher().rollback(number, note=note, actor=user.name, role=user.role)
    except ApprovalRequired as exc:  # four eyes on sanctions (SPEC §12.4)
        from service.console.approvals import sent_for_approval

        return sent_for_approval(exc.approval)
    except UnknownVersion:
        abort(404, description=f"There is no policy version {number}.")
    except (BundleError, VersionConflict) as exc:
        message = (
            "Another version was published at the same moment; try again."
            if isinstance(exc, VersionConflict)
            else "That version no longer passes validation, so it cannot be restored."
        )
        return _render_version(entry, _entry(active), {"note": note}, {"note": message}, 409)
    flash(
        f"Rolled back: version {published.entry['version']} is version {number}'s bundle.",
        "success",
    )
    return redirect(url_for("console.policy"))


# --- JSON endpoints for the editor's scripts (session + X-CSRF-Token, checked by bp) ---------


def _api_text() -> tuple[str | None, ResponseReturnValue | None]:
    """The editor's {"text"} for a JSON endpoint, or the error answer to send instead."""
    refused = _api_user_error()
    if refused is not None:
        return None, refused
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return None, error_answer(400, 'send {"text": "..."}')
    return body["text"], None


def _api_user_error() -> ResponseReturnValue | None:
    if security.current_user() is None:
        return error_answer(401)
    if not security.can("policy:write"):
        return error_answer(403)
    return None


@bp.post("/api/policy/validate")
@_carries_text
def api_policy_validate() -> ResponseReturnValue:
    """{"text"} -> {"valid", "errors": [{"path", "line", "column", "messages"}]}."""
    text, refused = _api_text()
    if refused is not None:
        return refused
    return jsonify(check_text(text).to_dict())


@bp.post("/api/policy/simulate")
@_carries_text
def api_policy_simulate() -> ResponseReturnValue:
    """{"text"} -> the simulation report of the bundle, or 422 with its errors."""
    text, refused = _api_text()
    if refused is not None:
        return refused
    check = check_text(text)
    if not check.valid:
        # The API's invalid_bundle error, plus the lines the editor marks.
        fields: dict[str, list[str]] = {}
        for error in check.errors:
            fields.setdefault(error["path"] or "_schema", []).extend(error["messages"])
        count = len(check.errors)
        error = {
            "code": "invalid_bundle",
            "message": f"the bundle is invalid ({count} {'error' if count == 1 else 'errors'})",
            "fields": fields,
        }
        return jsonify({"error": error, **check.to_dict()}), 422
    _active_number()
    report = _publisher().simulate(compile_bundle(check.bundle)).to_dict()  # type: ignore[arg-type]
    return jsonify({"valid": True, "errors": [], "report": report})
