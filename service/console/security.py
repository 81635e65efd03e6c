"""Console sessions: the secret key, who is signed in, CSRF tokens and permission checks.

A signed-in session lives in Redis (``service.store.sessions``): the token's name, role and
SHA-256 digest and the session's CSRF secret. The cookie (Flask's, signed with the console's
secret key) holds only the session's random id, never the token or its digest; before sign-in
it holds the sign-in form's CSRF secret. Signing out deletes the record, so a copied cookie is
worthless afterwards, on every host. Each request looks the token digest up again, so revoking
the token ends the session at its next click.

The secret key must be the same on every host (SPEC §15): ``REGIONLOCK_SECRET_KEY``, or the
file ``REGIONLOCK_SECRET_KEY_FILE``, else ``var/keys/console-secret-key`` made on first start
(0600). Its id is checked against the deployment's at start-up (``service.web.deployment``).
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, g, redirect, request, session, url_for

from service.crypto.secrets import SharedSecret, load_shared_secret
from service.engine.roles import allowed
from service.store.sessions import ConsoleSession
from service.store.tokens import Principal

SECRET_KEY_ENV = "REGIONLOCK_SECRET_KEY"
SECURE_COOKIE_ENV = "REGIONLOCK_SECURE_COOKIES"
SECRET_KEY_FILE = "console-secret-key"
#: Its name among the deployment's shared secrets (the id recorded in Redis).
SECRET_KEY_NAME = "console-secret-key"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
#: A session lapses after this long without a request (Flask refreshes it on each one).
SESSION_IDLE = timedelta(hours=8)
#: Permissions that give something to do in the console; a role with none cannot sign in.
CONSOLE_PERMISSIONS = ("devices:read", "policy:read", "audit:read")


def load_secret_key(
    keys_dir: Path, configured_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> SharedSecret:
    """The key that signs the console's cookies: $REGIONLOCK_SECRET_KEY, else CONFIGURED_FILE
    ($REGIONLOCK_SECRET_KEY_FILE), else KEYS_DIR's key file, made (mode 0600) on first start."""
    env = os.environ if environ is None else environ
    return load_shared_secret(
        SECRET_KEY_NAME,
        Path(keys_dir) / SECRET_KEY_FILE,
        configured_file,
        value=env.get(SECRET_KEY_ENV),
        value_source=f"${SECRET_KEY_ENV}",
    )


def configure_app(app: Flask) -> None:
    """Secret key and session cookie flags for the console (called when bp is registered)."""
    settings = app.config["SETTINGS"]
    if settings.secret_key:
        value = settings.secret_key
        value = value if isinstance(value, bytes) else value.encode()
        secret = SharedSecret(SECRET_KEY_NAME, value, "the configuration")
    else:
        secret = load_secret_key(settings.key_ring_dir, settings.secret_key_file)
    app.secret_key = secret.value
    # Checked against the deployment's at start-up: a host with another key refuses to start.
    app.extensions["regionlock"].deployment.add_secret(secret)
    secure = settings.secure_cookies
    if secure is None:
        secure = os.environ.get(SECURE_COOKIE_ENV, "").lower() in ("1", "true", "yes", "on")
    app.config.update(
        SESSION_COOKIE_NAME="regionlock_console",
        # Only the console reads the session; the API authenticates with Bearer tokens.
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(secure),
        PERMANENT_SESSION_LIFETIME=SESSION_IDLE,
    )


def csrf_token() -> str:
    """This session's CSRF token: the signed-in session's (kept in Redis), else the sign-in
    form's (made on first use, kept in the cookie)."""
    live = g.get("console_session")
    if live is not None:
        return live.csrf
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok() -> bool:
    """True when the request carries this session's CSRF token (form field or header)."""
    live = load_session()
    expected = live.csrf if live is not None else session.get("csrf")
    presented = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())


def _sessions():
    return current_app.extensions["regionlock"].sessions


def load_session() -> ConsoleSession | None:
    """The live server-side session of this request's cookie (looked up once per request)."""
    if "console_session" not in g:
        session_id = session.get("sid")
        g.console_session = _sessions().get(session_id) if session_id else None
    return g.console_session


def sign_in(principal: Principal, token_digest: str) -> None:
    """Start a fresh session for PRINCIPAL: a new id and CSRF secret, nothing carries over
    (no fixation); the cookie gets the id alone."""
    end_session()
    session_id, record = _sessions().start(principal.name, principal.role, token_digest)
    session.permanent = True
    session["sid"] = session_id
    g.console_session = record


def end_session() -> None:
    """End this request's session everywhere (its Redis record) and forget the cookie."""
    session_id = session.get("sid")
    if session_id:
        _sessions().end(session_id)
    session.clear()
    g.console_session = None
    g.console_user = None


def current_user() -> Principal | None:
    """Who is signed in on this request (set by the blueprint's before_request)."""
    return g.get("console_user")


def can(permission: str) -> bool:
    """True when the signed-in user's role holds PERMISSION."""
    user = current_user()
    return user is not None and allowed(user.role, permission)


def has_console_access(role: str) -> bool:
    """True when ROLE can see at least one console section."""
    return any(allowed(role, p) for p in CONSOLE_PERMISSIONS)


def safe_next(target: str | None) -> str | None:
    """TARGET when it is a console path on this site, else None (no open redirects)."""
    if not target or not target.isprintable():
        # CR/LF (header injection) or any other control character: not a page of ours.
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console"):
        return None
    if target.startswith("//") or "\\" in target:
        return None
    return target


def needs(permission: str | None = None) -> Callable:
    """View decorator: sign-in page when signed out; 403 page when the role lacks PERMISSION."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if current_user() is None:
                if request.method == "GET":
                    return redirect(url_for("console.sign_in", next=request.full_path.rstrip("?")))
                return redirect(url_for("console.sign_in"))
            if permission is not None and not can(permission):
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    return decorator


def principal_of_session() -> Principal | None:
    """Who this request's session belongs to now; None when signed out, or when its token was
    revoked or replaced (the session is then ended)."""
    live = load_session()
    if live is None:
        return None
    # The store, not the per-worker token cache: revocation signs the user out at once.
    principal = current_app.extensions["regionlock"].token_store.verify_digest(live.token_digest)
    if principal is None or principal.role != live.role:
        return None
    return principal
