"""GET /v1/stats, GET /v1/reports/locked-devices, GET /v1/reports/audit (SPEC §14)."""

from __future__ import annotations

from flask import Response, current_app, g, stream_with_context
from flask.views import MethodView
from marshmallow import RAISE

from service.api.parsing import ApiBlueprint
from service.api.stats.schemas import (
    AuditReportArgsSchema,
    LockedReportArgsSchema,
    StatsQueryArgsSchema,
    StatsSchema,
)
from service.web.auth import require

blp = ApiBlueprint("stats", __name__, url_prefix="/v1", description="Fleet overview and reports")

_CSV_RESPONSE = {
    200: {
        "description": "CSV (header row first), streamed",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


def _csv(pieces, filename: str) -> Response:
    """A streamed text/csv answer of the generator PIECES."""
    return Response(
        stream_with_context(pieces),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


@blp.route("/stats")
class Stats(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, StatsSchema)
    @require("stats:read")
    @blp.arguments(StatsQueryArgsSchema, location="query", unknown=RAISE)
    def get(self, args):
        """Fleet counters per UTC day (`from`..`to`, at most 400 days; default the last 30)
        and the devices locked now, by reason, country, region and distributor."""
        return current_app.extensions["regionlock"].stats.report(args["day_from"], args["day_to"])


@blp.route("/reports/locked-devices")
class LockedDevicesReport(MethodView):
    @blp.doc(security=[{"bearer": []}], responses=_CSV_RESPONSE)
    @require("reports:export")
    @blp.arguments(LockedReportArgsSchema, location="query", unknown=RAISE)
    def get(self, args):
        """The devices locked now (`imei,reason,region,distributor,locked_since,override`),
        as streamed CSV; each export writes an audit entry naming who exported what."""
        pieces = current_app.extensions["regionlock"].stats.locked_devices_csv(
            g.principal.name,
            g.principal.role,
            reason=args.get("reason"),
            region=args.get("region"),
            distributor=args.get("distributor"),
        )
        return _csv(pieces, "locked-devices.csv")


@blp.route("/reports/audit")
class AuditReport(MethodView):
    @blp.doc(security=[{"bearer": []}], responses=_CSV_RESPONSE)
    @require("reports:export")
    @blp.arguments(AuditReportArgsSchema, location="query", unknown=RAISE)
    def get(self, args):
        """The audit trail newest first (`id,at,actor,role,action,imei,detail`; GET /v1/audit's
        filters, no limit: all of it), as streamed CSV; the export itself is audited first."""
        imei = args.get("imei")
        if imei:
            imei = imei.replace(" ", "").replace("-", "")
        pieces = current_app.extensions["regionlock"].stats.audit_csv(
            g.principal.name,
            g.principal.role,
            imei=imei,
            entry_actor=args.get("actor"),
            action=args.get("action"),
            limit=args.get("limit"),
            before=args.get("before"),
        )
        return _csv(pieces, "audit.csv")
