"""Signing in with a token, signing out, and the console's front door."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from service.console import security
from service.console.blueprint import bp, landing_endpoint
from service.store.tokens import digest


@bp.get("/")
def index() -> ResponseReturnValue:
    """The signed-in user's landing page, or the sign-in page."""
    user = security.current_user()
    if user is None:
        return redirect(url_for("console.sign_in"))
    return redirect(url_for(landing_endpoint(user.role) or "console.sign_in"))


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    """Paste a token to sign in; the session (in Redis) keeps its digest, name and role, the
    cookie only the session's random id."""
    target = security.safe_next(request.values.get("next"))
    user = security.current_user()
    if request.method == "GET":
        if user is not None:
            return redirect(target or url_for(landing_endpoint(user.role) or "console.index"))
        return render_template("console/sign_in.html", next=target, error=None)

    token = request.form.get("token", "").strip()
    error = None
    principal = None
    if not token:
        error = "Paste your token (it starts with rl_)."
    elif len(token) > 200:
        error = "That is not a regionlock token."
    else:
        # The store, not the per-worker cache: a token revoked a second ago must not work here.
        principal = current_app.extensions["regionlock"].token_store.verify(token)
        if principal is None:
            error = "This token is not known: it may have been revoked, or mistyped."
        elif not security.has_console_access(principal.role):
            error = (
                f"A {principal.role} token cannot sign in to the console: ask for a token "
                "with a support, compliance, editor, auditor or admin role."
            )
    if error is not None or principal is None:
        # The token is never echoed back into the page.
        return render_template("console/sign_in.html", next=target, error=error), 401
    security.sign_in(principal, digest(token))
    flash(f"Signed in as {principal.name}.", "success")
    return redirect(target or url_for(landing_endpoint(principal.role) or "console.index"))


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    """End the session on every host (its server-side record), not just in this browser."""
    security.end_session()
    flash("Signed out.", "success")
    return redirect(url_for("console.sign_in"))
