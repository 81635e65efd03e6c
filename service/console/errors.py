"""Error pages: every failure under /console is a page in the console's layout (or JSON for
the console's own /console/api endpoints), never the API's JSON or a bare server error."""

from __future__ import annotations

import logging

import redis
from flask import Response, abort, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from service.console.blueprint import bp

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
    503: "The decision store (Redis) cannot be reached right now. Nothing was changed. "
    "Try again in a few seconds; if it keeps happening, tell the on-call engineer.",
    500: "An unexpected error happened and was logged. Nothing on this page was changed.",
}


def _wants_json() -> bool:
    return request.path.startswith("/console/api/")


def _page(status: int, text: str | None = None, headers: dict | None = None) -> Response:
    if _wants_json():
        response = jsonify({"error": {"code": str(status), "message": text or _TITLES[status]}})
    else:
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
    return _page(status, text)


@bp.errorhandler(redis.exceptions.RedisError)
def _redis_down(exc: redis.exceptions.RedisError) -> ResponseReturnValue:
    log.warning("console: redis unavailable: %s", type(exc).__name__)
    retry = str(current_app.config["SETTINGS"].retry_after_s)
    return _page(503, headers={"Retry-After": retry})


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> ResponseReturnValue:
    log.exception("console: unhandled error")
    return _page(500)


@bp.route("/<path:anything>", methods=["GET", "POST"])
def not_found(anything: str) -> ResponseReturnValue:
    """Unknown console addresses get the console's 404 page, not the API's JSON."""
    abort(404)
