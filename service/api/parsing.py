"""Request parsing shared by every blueprint: bodies are JSON whatever the Content-Type says."""

from __future__ import annotations

import re

import orjson
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.routing import UnicodeConverter

from service.api.compiled_schema import compile_schema


def digits_pattern(min_len: int, max_len: int) -> str:
    """The pattern of what a digit field accepts: MIN_LEN to MAX_LEN digits with any spaces
    and dashes (people paste numbers as printed); documented in the OpenAPI document."""
    count = f"{{{min_len}}}" if min_len == max_len else f"{{{min_len},{max_len}}}"
    return f"^[ -]*(?:[0-9][ -]*){count}$"


#: An IMEI as the API accepts it (body fields and path parameters); its Luhn check digit is
#: checked after it (a pattern cannot express it).
IMEI_PATTERN = digits_pattern(15, 15)
#: An IMEI as the API gives it back: 15 digits.
IMEI_OUT_PATTERN = "^[0-9]{15}$"
_IMEI = re.compile(IMEI_PATTERN.removesuffix("$") + r"\Z")


def matches_imei_pattern(text: str) -> bool:
    """True when TEXT is what IMEI_PATTERN documents (nothing else, not even a tab, is stripped)."""
    return _IMEI.match(text) is not None


class ImeiConverter(UnicodeConverter):
    """``<imei:imei>`` in a route: any path segment, as before (the route answers 422 naming
    what is wrong), documented in the OpenAPI document with IMEI_PATTERN."""


def imei_parameter_schema(converter: ImeiConverter) -> dict:
    """The OpenAPI schema of an ``<imei:...>`` path parameter."""
    return {"type": "string", "pattern": IMEI_PATTERN}


class JsonBodyParser(FlaskParser):
    """Parses the body as JSON (orjson, strict: no NaN) and answers 400 when it is not JSON."""

    def _raw_load_json(self, req):
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return self._handle_invalid_json_error(exc, req)


class Digits(fields.String):
    """A string of digits; spaces and dashes are stripped first (people paste IMEIs)."""

    def __init__(self, min_len: int, max_len: int, **kwargs):
        kwargs["metadata"] = {
            "pattern": digits_pattern(min_len, max_len),
            **kwargs.get("metadata", {}),
        }
        super().__init__(**kwargs)
        self.min_len = min_len
        self.max_len = max_len

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        digits = text.replace(" ", "").replace("-", "")
        if not digits.isascii() or not digits.isdigit():
            raise ValidationError("must contain digits only")
        if not self.min_len <= len(digits) <= self.max_len:
            if self.min_len == self.max_len:
                raise ValidationError(f"must be {self.min_len} digits")
            raise ValidationError(f"must be {self.min_len}-{self.max_len} digits")
        return digits


class ApiBlueprint(Blueprint):
    """A flask-smorest blueprint whose bodies are parsed by JsonBodyParser."""

    ARGUMENTS_PARSER = JsonBodyParser()


class CompiledBodyParser(JsonBodyParser):
    """JsonBodyParser whose body schemas are compiled once, when a route is declared
    (:func:`~service.api.compiled_schema.compile_schema`): each request's body is then checked
    by the compiled function instead of ``schema.load``; everything else (reading the body, the
    400 for bad JSON, the 422 with the messages by location) is webargs' as before."""

    def __init__(self) -> None:
        super().__init__()
        self._compiled: dict[int, tuple[Schema, object]] = {}

    def use_args(self, argmap, *args, **kwargs):
        if isinstance(argmap, Schema):
            self._compiled[id(argmap)] = (argmap, compile_schema(argmap))
        return super().use_args(argmap, *args, **kwargs)

    def parse(
        self,
        argmap,
        req=None,
        *,
        location=None,
        unknown=core._UNKNOWN_DEFAULT_PARAM,
        validate=None,
        error_status_code=None,
        error_headers=None,
    ):
        compiled = self._compiled.get(id(argmap))
        if (
            compiled is None
            or compiled[0] is not argmap
            or (location or self.location) != "json"
            or validate
            or unknown not in (core._UNKNOWN_DEFAULT_PARAM, None)
        ):
            return super().parse(
                argmap,
                req,
                location=location,
                unknown=unknown,
                validate=validate,
                error_status_code=error_status_code,
                error_headers=error_headers,
            )
        # What webargs' parse does for a JSON body, without its generic steps.
        req = req if req is not None else self.get_default_request()
        data = self.load_json(req, argmap)
        try:
            return compiled[1]({} if data is core.missing else data)
        except ValidationError as error:
            self._on_validation_error(
                error,
                req,
                argmap,
                "json",
                error_status_code=error_status_code,
                error_headers=error_headers,
            )
            raise  # _on_validation_error aborts; this is never reached


class CompiledApiBlueprint(ApiBlueprint):
    """An ApiBlueprint whose bodies are checked by validators compiled from their schemas
    (the hot path of check-ins; the schemas still make the OpenAPI document)."""

    ARGUMENTS_PARSER = CompiledBodyParser()
