"""A request body's validator compiled once from its marshmallow schema (issue 17.2).

The schema stays the one description of a body: the OpenAPI document is generated from it, and
:func:`compile_schema` reads it once, at start-up, into a plain function that loads a body as
``schema.load`` does (the same normalised dict, or a ``ValidationError`` with the same messages
at the same paths) without marshmallow's per-call machinery: the error store, the hook and
``partial``/``unknown`` lookups, one validator chain object per field and call. Each field's
own ``_deserialize`` and validators still run, so a custom field (``Digits``, ``Locale``…) or a
changed bound is honoured without touching this module; what the compiler does not reproduce
(pre/post-load hooks, ``unknown`` other than EXCLUDE, load defaults, ``partial``…) is refused
when compiling, so a schema that grows one fails at start-up and in the tests, never silently.
``tests/test_compiled_schema.py`` runs generated bodies through both and compares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing
from marshmallow.decorators import POST_LOAD, PRE_LOAD, VALIDATES, VALIDATES_SCHEMA
from marshmallow.error_store import merge_errors
from marshmallow.utils import is_collection

#: value, its key, the object holding it -> the loaded value; raises ValidationError.
FieldLoader = Callable[[Any, str, Any], Any]
SCHEMA = "_schema"


class UnsupportedSchema(TypeError):
    """The schema uses a marshmallow feature the compiler does not reproduce."""


def compile_schema(schema: Schema) -> Callable[[Any], dict[str, Any]]:
    """``schema.load`` as a function compiled once: ``load(data) -> dict``, raising
    ``ValidationError`` whose ``messages`` are those ``schema.load(data)`` would give."""
    load = _compile(schema)

    def loader(data: Any) -> dict[str, Any]:
        return load(data, None, None)

    return loader


def _refuse(what: str, where: object) -> UnsupportedSchema:
    return UnsupportedSchema(f"compile_schema: {what} ({where!r}) is not supported")


def _compile(schema: Schema) -> FieldLoader:
    """A nested-schema loader: value -> dict, errors as the schema's nested messages."""
    if schema.many:
        raise _refuse("many=True", schema)
    if schema.unknown != EXCLUDE:
        raise _refuse("unknown other than EXCLUDE", schema)
    if schema._hooks[PRE_LOAD] or schema._hooks[POST_LOAD]:
        raise _refuse("pre_load/post_load hooks", schema)
    type_error = schema.error_messages["type"]
    plan = [_plan(name, field) for name, field in schema.load_fields.items()]
    data_keys = {name: field.data_key or name for name, field in schema.load_fields.items()}
    field_hooks = []
    for attr_name, _many, kwargs in schema._hooks[VALIDATES]:
        method = getattr(schema, attr_name)
        for name in kwargs["field_names"]:
            if name not in schema.load_fields:
                raise _refuse("a validator of an unknown field", name)
            field_hooks.append((method, name, data_keys[name]))
    schema_hooks = []
    for attr_name, hook_many, kwargs in schema._hooks[VALIDATES_SCHEMA]:
        if hook_many or kwargs.get("pass_original"):
            raise _refuse("validates_schema with pass_many or pass_original", attr_name)
        schema_hooks.append((getattr(schema, attr_name), kwargs["skip_on_field_errors"]))

    def load(data: Any, _key: Any, _parent: Any) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise ValidationError({SCHEMA: [type_error]}, valid_data={})
        out: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for key, attr, required, allow_none, load_value, required_error, null_error in plan:
            value = data.get(key, missing)
            if value is missing:
                if required:
                    errors[key] = [required_error]
            elif value is None:
                if allow_none:
                    out[attr] = None
                else:
                    errors[key] = [null_error]
            else:
                try:
                    out[attr] = load_value(value, key, data)
                except ValidationError as error:
                    errors[key] = error.messages
                    # As marshmallow: what did load of a failed list or object is kept, and
                    # the field's validators below see it.
                    if error.valid_data:
                        out[attr] = error.valid_data
        for method, attr, key in field_hooks:
            if attr in out:
                try:
                    method(out[attr], data_key=key)
                except ValidationError as error:
                    errors[key] = merge_errors(errors.get(key), error.messages)
                    del out[attr]
        for method, skip_on_field_errors in schema_hooks:
            if errors and skip_on_field_errors:
                continue
            try:
                method(out, partial=None, many=False, unknown=EXCLUDE)
            except ValidationError as error:
                name = error.field_name
                key = SCHEMA if name == SCHEMA else data_keys.get(name, name)
                if key == SCHEMA and isinstance(error.messages, dict):
                    errors.update(merge_errors(errors, error.messages))
                else:
                    errors[key] = merge_errors(errors.get(key), error.messages)
        if errors:
            raise ValidationError(errors, valid_data=out)
        return out

    return load


def _plan(name: str, field: fields.Field) -> tuple:
    """What the schema loop needs of one field."""
    if field.load_default is not missing:
        raise _refuse("load_default", name)
    if field.attribute is not None:
        raise _refuse("attribute", name)
    return (
        field.data_key or name,
        name,
        field.required,
        field.allow_none,
        _field_loader(field),
        field.error_messages["required"],
        field.error_messages["null"],
    )


def _field_loader(field: fields.Field) -> FieldLoader:
    """A field's value (present, not an allowed None) -> its loaded value: the field's own
    ``_deserialize``, then its validators, every failure collected as ``Field._validate``
    does (all validators run, their messages joined)."""
    if field.pre_load or field.post_load:
        raise _refuse("field pre_load/post_load functions", field)
    if type(field) is fields.Nested:
        if field.many or field.unknown is not None or field.only or field.exclude:
            raise _refuse("Nested with many/unknown/only/exclude", field)
        deserialize: FieldLoader = _compile(field.schema)
    elif type(field) is fields.List:
        deserialize = _list_loader(field)
    elif isinstance(field, (fields.Nested, fields.List, fields.Dict, fields.Tuple)):
        raise _refuse("a subclass of a container field", field)
    else:
        deserialize = field._deserialize
    validators = tuple(field.validators)
    if not validators:
        return deserialize

    def load(value: Any, key: str, parent: Any) -> Any:
        output = deserialize(value, key, parent)
        messages: list[Any] = []
        for validator in validators:
            try:
                validator(output)
            except ValidationError as error:
                if isinstance(error.messages, dict):
                    messages.append(error.messages)
                else:
                    messages.extend(error.messages)
        if messages:
            raise ValidationError(messages)
        return output

    return load


def _list_loader(field: fields.List) -> FieldLoader:
    """``List._deserialize``: each item through the inner field as ``Field.deserialize`` does
    it (a null item is refused unless the inner field allows it), errors keyed by index."""
    inner = field.inner
    invalid = field.error_messages["invalid"]
    null_error = inner.error_messages["null"]
    allow_none = inner.allow_none
    load_item = _field_loader(inner)

    def load(value: Any, key: str, parent: Any) -> list[Any]:
        if value.__class__ is not list and not is_collection(value):
            raise ValidationError(invalid)
        result = []
        errors = {}
        for index, item in enumerate(value):
            try:
                if item is None:
                    if not allow_none:
                        raise ValidationError(null_error)
                    result.append(None)
                else:
                    result.append(load_item(item, None, None))
            except ValidationError as error:
                if error.valid_data is not None:
                    result.append(error.valid_data)
                errors[index] = error.messages
        if errors:
            raise ValidationError(errors, valid_data=result)
        return result

    return load
