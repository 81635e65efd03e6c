"""The console blueprint: per-request sign-in check, CSRF check, security headers, nav."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, flash, g, request, session
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import BadRequest, ServiceUnavailable

from service.console import security
from service.console.present import ROLE_LABELS
from service.engine.roles import allowed

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# (endpoint, label, permission): the sections, in nav order; each role sees those it may use.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("console.devices", "Devices", "devices:read"),
    ("console.policy", "Policy", "policy:read"),
    ("console.audit", "Audit trail", "audit:read"),
    ("console.approvals", "Approvals", "approvals:read"),  # SPEC §12.4
    ("console.overview", "Overview", "stats:read"),
)

# The page a role lands on after signing in: its main job first.
_LANDING = (
    ("devices:write", "console.devices"),
    ("policy:write", "console.policy_edit"),
    ("audit:read", "console.audit"),
    ("devices:read", "console.devices"),
    ("policy:read", "console.policy"),
)

# Content-Security-Policy: no inline script or style, nothing from other sites, no framing.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class CsrfFailed(BadRequest):
    """A state-changing request without this session's CSRF token."""

    description = (
        "This form was sent without a valid security token (it may have expired, or the "
        "page was opened before you signed in). Reload the page and try again."
    )


def landing_endpoint(role: str) -> str | None:
    """Where ROLE starts in the console, None when it has nothing to do there."""
    for permission, endpoint in _LANDING:
        if allowed(role, permission):
            return endpoint
    return None


@bp.record_once
def _configure(state: BlueprintSetupState) -> None:
    security.configure_app(state.app)


@bp.before_request
def _check_request() -> None:
    g.console_user = None
    if request.endpoint == "console.static":
        return
    settings = current_app.config["SETTINGS"]
    if current_app.extensions["regionlock"].breaker.is_open():
        # Redis was just found away (by the API or the console): answer at once instead of
        # waiting out the socket timeouts on the session lookup.
        raise ServiceUnavailable(retry_after=settings.retry_after_s)
    limit = getattr(current_app.view_functions.get(request.endpoint or ""), "max_body_bytes", None)
    live = security.load_session() if limit is not None and session.get("sid") else None
    if live is not None and allowed(live.role, "policy:write"):
        # The editor's text (views marked by policy._carries_text): larger bodies, for people
        # whose signed session says they may edit, set before the form is first read below.
        request.max_content_length = limit
        request.max_form_memory_size = limit
    # CSRF first: a forged request is refused before anything else is looked at.
    if request.method not in _SAFE_METHODS and not security.csrf_ok():
        raise CsrfFailed()
    if not session.get("sid"):
        return
    principal = security.principal_of_session()
    if principal is None:
        ended_here = security.load_session() is None
        security.end_session()
        if ended_here:
            flash(
                "Your session has ended (signed out, or idle too long): sign in again.", "warning"
            )
        else:
            flash("Your token has been revoked or replaced: you are signed out.", "warning")
        return
    g.console_user = principal


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # As the README promises for every page: console URLs carry IMEIs and audit filters.
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "console.static":
        # Pages show device records and policy: keep them out of shared caches and history.
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.context_processor
def _template_globals() -> dict[str, Any]:
    user = security.current_user()
    sections = []
    endpoint_now = request.endpoint or ""
    if user is not None:
        sections = [
            {
                "endpoint": endpoint,
                "label": label,
                # console.device and console.device_action belong to console.devices.
                "current": endpoint_now.startswith(endpoint.rstrip("s")),
            }
            for endpoint, label, permission in SECTIONS
            if security.can(permission)
        ]
    return {
        "console_user": user,
        "console_sections": sections,
        "role_label": lambda role: ROLE_LABELS.get(role, role),
        "can": security.can,
        "csrf_token": security.csrf_token,
    }
