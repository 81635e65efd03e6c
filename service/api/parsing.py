"""Request parsing shared by every blueprint: bodies are JSON whatever the Content-Type says."""

from __future__ import annotations

import orjson
from flask_smorest import Blueprint
from marshmallow import ValidationError, fields
from webargs import core
from webargs.flaskparser import FlaskParser


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
