"""/docs: the interactive API page, served entirely from this service (SPEC §7).

Swagger UI comes from the pinned PyPI package swagger-ui-py (its static files: Apache-2.0,
LICENSE beside them); the page loads nothing from another origin and runs no inline script,
so its Content-Security-Policy can say ``script-src 'self'``.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from flask import Blueprint, Response, abort, send_from_directory, url_for

bp = Blueprint("docs", __name__, static_folder=None)

SWAGGER_DIR = Path(swagger_ui.__file__).resolve().parent / "static"
OWN_DIR = Path(__file__).resolve().parent / "static"
# The only files the page needs; nothing else of the package is served.
SWAGGER_FILES = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "LICENSE"}
)
OWN_FILES = frozenset({"docs.js"})

# Swagger UI sets style attributes from script, hence 'unsafe-inline' for styles only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>regionlock API</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="icon" type="image/png" href="{favicon}">
  <link rel="stylesheet" href="{css}">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{spec}"></div>
  <script src="{bundle}"></script>
  <script src="{init}"></script>
</body>
</html>
"""


@bp.get("/docs")
def docs_page() -> Response:
    """The Swagger UI page for /v1/openapi.json."""
    html = _PAGE.format(
        favicon=url_for("docs.asset", name="favicon-32x32.png"),
        css=url_for("docs.asset", name="swagger-ui.css"),
        bundle=url_for("docs.asset", name="swagger-ui-bundle.js"),
        init=url_for("docs.asset", name="docs.js"),
        spec="/v1/openapi.json",
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@bp.get("/docs/assets/<name>")
def asset(name: str) -> Response:
    """One of the page's pinned static files (cached: they change only with the package)."""
    if name in SWAGGER_FILES:
        folder = SWAGGER_DIR
    elif name in OWN_FILES:
        folder = OWN_DIR
    else:
        abort(404)
    response = send_from_directory(folder, name, max_age=86400)
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response
