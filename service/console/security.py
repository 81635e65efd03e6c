"""Console sessions: the secret key, who is signed in, CSRF tokens and permission checks.

The session cookie (Flask's signed cookie) holds the SHA-256 digest of the token the user
pasted, its name and role, and a CSRF secret: never the token itself, so a leaked cookie does
not leak API access. Each request looks the digest up again, so revoking the token signs the
user out at their next click.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, g, redirect, request, session, url_for

from service.engine.roles import allowed
from service.store.tokens import Principal

SECRET_KEY_ENV = "REGIONLOCK_SECRET_KEY"
SECURE_COOKIE_ENV = "REGIONLOCK_SECURE_COOKIES"
SECRET_KEY_FILE = "console-secret-key"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
#: A session lapses after this long without a request (Flask refreshes it on each one).
SESSION_IDLE = timedelta(hours=8)
#: Permissions that give something to do in the console; a role with none cannot sign in.
CONSOLE_PERMISSIONS = ("devices:read", "policy:read", "audit:read")


def load_secret_key(var_dir: Path, environ: dict[str, str] | None = None) -> str:
    """The key that signs session cookies: $REGIONLOCK_SECRET_KEY, else VAR_DIR's key file,
    made (mode 0600) on first use so every worker forked from the master shares it."""
    env = os.environ if environ is None else environ
    configured = env.get(SECRET_KEY_ENV, "").strip()
    if configured:
        return configured
    path = Path(var_dir) / SECRET_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: when two processes start at once, one writes and the other reads its key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if key:
            return key
        raise RuntimeError(f"{path} is empty; delete it to make a new console secret key") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key


def configure_app(app: Flask) -> None:
    """Secret key and session cookie flags for the console (called when bp is registered)."""
    settings = app.config["SETTINGS"]
    if not app.secret_key:
        app.secret_key = settings.secret_key or load_secret_key(settings.var_dir)
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
    """This session's CSRF token (made on first use; sent back in forms and a header)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok() -> bool:
    """True when the request carries this session's CSRF token (form field or header)."""
    expected = session.get("csrf")
    presented = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())


def sign_in(principal: Principal, token_digest: str) -> None:
    """Start a fresh session for PRINCIPAL (a new CSRF secret: nothing carries over)."""
    session.clear()
    session.permanent = True
    session["tok"] = token_digest
    session["name"] = principal.name
    session["role"] = principal.role
    session["csrf"] = secrets.token_urlsafe(32)


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
    """Who the session's token digest belongs to now; None once the token is revoked."""
    token_digest = session.get("tok")
    if not token_digest:
        return None
    # The store, not the per-worker token cache: revocation signs the user out at once.
    return current_app.extensions["regionlock"].token_store.verify_digest(token_digest)
