"""Fleet overview (SPEC §14): the stats query and document, the reports' filters."""

from __future__ import annotations

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

from service.devices.stats import MAX_DAYS, RangeError, check_range, default_range
from service.store.audit import is_cursor


class StatsQueryArgsSchema(Schema):
    class Meta:
        unknown = RAISE

    day_from = fields.Date(
        data_key="from",
        metadata={
            "description": "first UTC day (YYYY-MM-DD), inclusive; default: 29 days before `to`"
        },
    )
    day_to = fields.Date(
        data_key="to",
        metadata={"description": "last UTC day (YYYY-MM-DD), inclusive; default: today"},
    )

    @validates_schema
    def _range(self, data, **_) -> None:
        default_from, default_to = default_range()
        day_to = data.get("day_to") or default_to
        day_from = data.get("day_from") or (
            day_to - (default_to - default_from) if "day_to" in data else default_from
        )
        try:
            check_range(day_from, day_to)
        except RangeError as exc:
            raise ValidationError(str(exc), field_name=exc.field) from None
        data["day_from"], data["day_to"] = day_from, day_to


class BreakdownSchema(Schema):
    total = fields.Integer()
    by_reason = fields.Dict(keys=fields.String(), values=fields.Integer())
    by_country = fields.Dict(keys=fields.String(), values=fields.Integer())
    by_region = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "by the reason's region label (subdivision when known)"},
    )
    by_distributor = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={
            "description": "reasons naming a distributor (outside_territory, "
            "foreign_sim, grace_period)"
        },
    )


class VerdictsSchema(Schema):
    lock = fields.Nested(BreakdownSchema)
    warn = fields.Nested(BreakdownSchema)
    allow = fields.Nested(BreakdownSchema)


class OverrideCountsSchema(Schema):
    unlock = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "unlocks created that day, by role"},
    )
    lock = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "manual locks created that day, by role"},
    )


class StatsDaySchema(Schema):
    date = fields.String()
    checkins = fields.Integer()
    verdicts = fields.Nested(
        VerdictsSchema,
        metadata={
            "description": "devices whose verdict became lock / warn / allow that day "
            "(a change, or a device's first check-in)"
        },
    )
    overrides = fields.Nested(OverrideCountsSchema)
    unlock_codes = fields.Integer()


class StatsSchema(Schema):
    day_from = fields.String(data_key="from", attribute="from")
    day_to = fields.String(data_key="to", attribute="to")
    days = fields.List(
        fields.Nested(StatsDaySchema), metadata={"description": "one entry per day, in date order"}
    )
    locked_now = fields.Nested(
        BreakdownSchema,
        metadata={
            "description": "devices whose current verdict (last decision with "
            "overrides applied) is lock"
        },
    )


class LockedReportArgsSchema(Schema):
    class Meta:
        unknown = RAISE

    reason = fields.String(
        validate=validate.Length(min=1, max=64),
        metadata={"description": "a reason code the row lists"},
    )
    region = fields.String(
        validate=validate.Length(min=1, max=16),
        metadata={"description": "a region label or a country"},
    )
    distributor = fields.String(validate=validate.Length(min=1, max=64))


class AuditReportArgsSchema(Schema):
    """GET /v1/audit's filters; no limit means the whole trail (newest first)."""

    class Meta:
        unknown = RAISE

    imei = fields.String(validate=validate.Length(max=32))
    actor = fields.String(validate=validate.Length(max=100))
    action = fields.String(validate=validate.Length(max=64))
    limit = fields.Integer(validate=validate.Range(min=1, max=100_000_000))
    before = fields.String(
        validate=validate.Regexp(r"^\d{1,20}-\d{1,20}$"),
        metadata={"description": "entries older than this cursor (an entry's id)"},
    )

    @validates("before")
    def _stream_id(self, value: str, **_) -> None:
        if not is_cursor(value):
            raise ValidationError("is not a cursor given by this API")


__all__ = ["MAX_DAYS"]
