"""GET /v1/audit: the append-only audit trail, newest first (SPEC §5)."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from service.api.parsing import ApiBlueprint
from service.store.audit import is_cursor
from service.web.auth import require

blp = ApiBlueprint("audit", __name__, url_prefix="/v1", description="Audit trail")


class AuditQueryArgsSchema(Schema):
    class Meta:
        # A misspelt filter (?imie=) must be a 422, not the whole trail unfiltered.
        unknown = RAISE

    imei = fields.String(validate=validate.Length(max=32))
    actor = fields.String(validate=validate.Length(max=100))
    action = fields.String(validate=validate.Length(max=64))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    before = fields.String(
        validate=validate.Regexp(r"^\d{1,20}-\d{1,20}$"),
        metadata={"description": "paging cursor: the `next` of the previous page"},
    )

    @validates("before")
    def _stream_id(self, value: str, **_) -> None:
        # Redis stream ids are two unsigned 64-bit numbers; a larger one is a Redis error.
        if not is_cursor(value):
            raise ValidationError("is not a cursor given by this API")


class AuditEntrySchema(Schema):
    id = fields.String()
    at = fields.String()
    actor = fields.String()
    role = fields.String()
    action = fields.String()
    imei = fields.String(allow_none=True)
    detail = fields.Dict()


class AuditPageSchema(Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema))
    next = fields.String(allow_none=True)


@blp.route("/audit")
class Audit(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, AuditPageSchema)
    @require("audit:read")
    @blp.arguments(AuditQueryArgsSchema, location="query", unknown=RAISE)
    def get(self, args):
        """Audit entries newest first, filtered by imei, actor and action; paged by `before`."""
        imei = args.get("imei")
        if imei:
            imei = imei.replace(" ", "").replace("-", "")
        entries, cursor = current_app.extensions["regionlock"].audit.query(
            imei=imei,
            actor=args.get("actor"),
            action=args.get("action"),
            limit=args["limit"],
            before=args.get("before"),
        )
        return {"entries": entries, "next": cursor}
