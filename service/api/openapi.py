"""The OpenAPI document states every status a /v1 operation can answer, in the one error format.

Routes document their success responses and their own errors (404, 409…); the statuses that come
from the shared machinery are added here for every operation, so a new blueprint gets them too:

- authenticated operations (all but those documented with ``security=[]``): 401, 403, 429, 503,
  and the bearer security requirement itself;
- operations with a body: 400 (not JSON), 413 (too large), 422 (invalid fields);
- operations with path or query parameters: 422.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec, BasePlugin
from flask_smorest import Api

from service.web.errors import ErrorSchema
from service.web.hardening import UNLIMITED_PATHS

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 0},
    }
}

_DESCRIPTIONS = {
    400: "the body is not JSON",
    401: "no token, or an unknown or revoked one",
    403: "the token's role may not do this",
    413: "the body is too large",
    422: "invalid input; every bad field is named by its path",
    429: "too many requests for this token (or, without one, this address)",
    503: "Redis cannot be reached; nothing was decided or recorded",
}


class RegionlockApi(Api):
    """flask-smorest's Api documenting our error payload instead of its own."""

    ERROR_SCHEMA = ErrorSchema


class ErrorResponsesPlugin(BasePlugin):
    """Adds the shared error responses (see the module docstring) to every /v1 operation."""

    def init_spec(self, spec: APISpec) -> None:
        """Keep the spec, to reach its components."""
        self.spec = spec

    def operation_helper(
        self, path: str | None = None, operations: dict | None = None, **kwargs: Any
    ) -> None:
        """Complete each operation's responses."""
        if not path or not path.startswith("/v1/") or not operations:
            return
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            statuses: list[int] = []
            public = operation.get("security") == []
            if public:
                if path not in UNLIMITED_PATHS:
                    statuses.append(429)
            else:
                operation.setdefault("security", [{"bearer": []}])
                statuses += [401, 403, 429, 503]
            if "requestBody" in operation:
                statuses += [400, 413, 422]
            if operation.get("parameters") or "{" in path:
                statuses.append(422)
            # Routes key responses by int or by str; apispec writes both as strings.
            present = {str(key) for key in responses}
            for status in statuses:
                if str(status) not in present:
                    responses[str(status)] = {"description": _DESCRIPTIONS[status]}
            for status, response in responses.items():
                _complete(str(status), response)


def _complete(status: str, response: Any) -> None:
    """Give an error response without content the error schema (and Retry-After if due)."""
    if not isinstance(response, dict) or "$ref" in response or not status.isdigit():
        return
    code = int(status)
    if code < 400:
        return
    response.setdefault("content", {"application/json": {"schema": _ERROR_REF}})
    if code in (429, 503):
        response.setdefault("headers", dict(_RETRY_AFTER))
