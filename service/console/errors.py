"""Error pages: every failure under /console is a page in the console's layout, or, for the
console's own /console/api endpoints, the API's one error payload with the API's codes.

Redis errors go through the same classification as the API's (``web.errors.redis_failure``): an
outage trips the app's breaker and is a 503 with Retry-After, a refused command is a 500. No
answer ever carries an exception's text.
"""

from __future__ import annotations

import logging

import redis
from flask import Response, abort, current_app, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from service.console.blueprint import bp
from service.web.errors import (
    INTERNAL_MESSAGE,
    UNAVAILABLE_MESSAGE,
    error_response,
    exception_headers,
    redis_failure,
    retry_after_headers,
)

log = logging.getLogger(__name__)

_TITLES = {
    400: "This request could not be used",
    401: "Please sign in",
    403: "Not for your role",
    404: "Not found",
    405: "Not allowed here",
    413: "Too large",
    503: "Temporarily unavailable",
    500: "Something went wrong",
}

_TEXTS = {
    403: "Your role does not allow this page or action. The sections you may use are in the "
    "menu above.",
    404: "There is nothing at this address.",
    # Never "nothing was changed": a change sent just before Redis stopped answering may have
    # been applied (issue 12.7).
    503: "The decision store (Redis) cannot be reached right now. Try again in a few seconds; "
    "if it keeps happening, tell the on-call engineer.",
    500: "An unexpected error happened and was logged. Nothing on this page was changed.",
}

# The console API's messages, in the API's voice.
_MESSAGES = {
    401: "sign in again",
    403: "not for your role",
    404: "there is nothing at this address",
    405: "this method is not allowed here",
    413: "the request is too large",
    500: INTERNAL_MESSAGE,
    503: UNAVAILABLE_MESSAGE,
}


def wants_json() -> bool:
    """True for the console's own JSON endpoints (the editor's scripts)."""
    return request.path.startswith("/console/api/")


def error_answer(status: int, text: str | None = None, headers: dict | None = None) -> Response:
    """The console's answer for an error: its page, or the one JSON payload under /console/api.

    TEXT is a message written for people (never an exception's text); without one, the
    status's own wording is used.
    """
    if wants_json():
        message = text or _MESSAGES.get(status) or _TITLES.get(status, "error").lower()
        return error_response(status, message, headers=headers)
    response = current_app.make_response(
        render_template(
            "console/error.html",
            status=status,
            title=_TITLES.get(status, "Error"),
            text=text or _TEXTS.get(status, ""),
        )
    )
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> ResponseReturnValue:
    status = exc.code or 500
    # werkzeug's stock descriptions are generic; ours (CSRF, 404 device) say what to do.
    text = exc.description if status in (400, 404) and exc.description else None
    if status == 404 and text and text.startswith("The requested URL"):
        text = None
    if status >= 500:
        text = None
    return error_answer(status, text, exception_headers(exc))


@bp.errorhandler(redis.exceptions.RedisError)
@bp.errorhandler(redis.exceptions.RedisClusterException)
def _redis_error(exc: Exception) -> ResponseReturnValue:
    if redis_failure(exc) == 503:
        return error_answer(503, headers=retry_after_headers())
    return error_answer(500)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> ResponseReturnValue:
    log.exception("console: unhandled error")
    return error_answer(500)


@bp.route("/<path:anything>", methods=["GET", "POST"])
def not_found(anything: str) -> ResponseReturnValue:
    """Unknown console addresses get the console's 404 page, not the API's JSON."""
    abort(404)
