"""/v1/policy: what policy editors see and do (SPEC §6)."""

from __future__ import annotations

import orjson
from flask import Response, current_app, g, request
from flask.views import MethodView

from service.api.parsing import ApiBlueprint
from service.api.policy.schemas import (
    ApprovalRequestedSchema,
    BundleBodySchema,
    PolicySchema,
    PublishedSchema,
    PublishSchema,
    RollbackSchema,
    RolledBackSchema,
    SimulationSchema,
    ValidSchema,
    VersionListSchema,
)
from service.engine.compiler import CompiledPolicy, compile_bundle
from service.engine.validation import BundleError, validate_bundle
from service.policy.publishing import (
    ApprovalRequired,
    Publisher,
    SafetyBrake,
    SimulationUnusable,
    UnknownVersion,
    VersionConflict,
    brake_message,
    version_metadata,
)
from service.web.auth import require
from service.web.errors import ApiError
from service.web.idempotency import (
    IDEMPOTENCY_PARAMETER,
    register_write_errors,
    replay_headers,
    request_operation,
)

blp = ApiBlueprint("policy", __name__, url_prefix="/v1/policy", description="Policy editors")
register_write_errors(blp)

#: The 202 of a publish or rollback that weakens sanctions (SPEC §12.4; answered by the error
#: handler in service/api/policy/approvals.py).
SENT_FOR_APPROVAL = (
    "the bundle weakens a sanctioned_region rule of the active version: nothing is published; "
    "the approval request (its id and changes) waits for a compliance officer or admin other "
    "than the requester (/v1/policy/approvals)"
)


@blp.errorhandler(ApprovalRequired)
def _sent_for_approval(exc: ApprovalRequired) -> Response:
    # Raised by Publisher.publish / .rollback after storing the request and its audit entry.
    return _json({"approval": exc.approval}, 202, replay_headers(exc.replayed))


@blp.before_request
def _allow_big_bundles() -> None:
    # A bundle may carry a million allocations (~50 MB of JSON); every other call keeps the
    # app-wide limit (Settings.max_body_bytes).
    request.max_content_length = current_app.extensions["regionlock"].settings.policy_max_body_bytes


def _json(document: dict, status: int = 200, headers: dict | None = None) -> Response:
    # orjson directly: a million-allocation bundle is too big for marshmallow's dump; the
    # schemas on the routes document the shape.
    return Response(
        orjson.dumps(document), status=status, mimetype="application/json", headers=headers
    )


def _publisher() -> Publisher:
    rl = current_app.extensions["regionlock"]

    def compiled_active(number: int) -> CompiledPolicy | None:
        active = rl.policies.current()
        return active.policy if active.version == number else None

    return Publisher(rl.devices, rl.policy_store, rl.audit, compiled_active)


def _active_number() -> int:
    rl = current_app.extensions["regionlock"]
    rl.policies.current()  # the first use in a fresh Redis publishes the seed as version 1
    return rl.policy_store.active_version()


def _invalid(exc: BundleError) -> ApiError:
    count = len(exc.errors)
    return ApiError(
        422,
        f"the bundle is invalid ({count} {'error' if count == 1 else 'errors'})",
        code="invalid_bundle",
        fields=exc.errors,
    )


def _compile(bundle: dict) -> CompiledPolicy:
    try:
        return compile_bundle(bundle)
    except BundleError as exc:
        raise _invalid(exc) from None


def _version_document(number: int) -> dict:
    entry = current_app.extensions["regionlock"].policy_store.version(number)
    if entry is None:
        raise ApiError(404, f"there is no policy version {number}")
    return {**version_metadata(entry), **entry["bundle"]}


def _conflict(exc: VersionConflict) -> ApiError:
    return ApiError(
        409,
        f"the active version is {exc.active}: reload it, re-apply your change and publish again",
        code="version_conflict",
        extra={"active_version": exc.active},
    )


@blp.route("")
class ActivePolicy(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, PolicySchema)
    @require("policy:read")
    def get(self):
        """The active bundle with its version, publication time, publisher and note."""
        return _json(_version_document(_active_number()))

    @blp.doc(security=[{"bearer": []}], parameters=[IDEMPOTENCY_PARAMETER])
    @blp.response(201, PublishedSchema)
    @blp.alt_response(202, schema=ApprovalRequestedSchema, description=SENT_FOR_APPROVAL)
    @blp.alt_response(
        409,
        description="version_conflict (stale expected_version), "
        "safety_brake (with the simulation report), or simulation_not_done / "
        "simulation_outdated (the simulation_id's job is unfinished, or was compared with "
        "another active version)",
    )
    @blp.alt_response(
        422,
        description="invalid_bundle: every error by path; idempotency_key_reused; or "
        "unknown_simulation / simulation_mismatch (simulation_id unknown, or of another bundle)",
    )
    @blp.alt_response(503, description="Redis unreachable, or the outcome is unknown")
    @require("policy:write")
    @blp.arguments(PublishSchema)
    def post(self, body):
        """Publish a new version, if expected_version is still active and the brake allows."""
        operation = request_operation(body)
        _active_number()
        try:
            published = _publisher().publish(
                body["bundle"],
                note=body["note"],
                expected_version=body["expected_version"],
                actor=g.principal.name,
                role=g.principal.role,
                force=body["force"],
                operation=operation,
                simulation_id=body.get("simulation_id"),  # SPEC §12.5
            )
        except BundleError as exc:
            raise _invalid(exc) from None
        except VersionConflict as exc:
            raise _conflict(exc) from None
        except SimulationUnusable as exc:  # SPEC §12.5: the named job cannot be the brake's
            raise ApiError(
                exc.status,
                str(exc),
                code=exc.code,
                fields={"simulation_id": [str(exc)]} if exc.status == 422 else None,
            ) from None
        except SafetyBrake as exc:
            raise ApiError(
                409,
                f"safety brake: {brake_message(exc.report)} — check the report, or publish "
                'with "force": true',
                code="safety_brake",
                extra={"report": exc.report.to_dict()},
            ) from None
        return _json(
            {
                **version_metadata(published.entry),
                "forced": published.forced,
                "simulation": published.simulation,
            },
            201,
            replay_headers(published.replayed),
        )


@blp.route("/versions")
class Versions(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, VersionListSchema)
    @require("policy:read")
    def get(self):
        """Every published version's metadata, newest first."""
        active = _active_number()
        rows = current_app.extensions["regionlock"].policy_store.versions()
        return {
            "active_version": active,
            "versions": [version_metadata(e) for e in reversed(rows)],
        }


@blp.route("/versions/<int:number>")
class Version(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, PolicySchema)
    @blp.alt_response(404, description="no such version")
    @require("policy:read")
    def get(self, number):
        """One published version: its bundle and metadata."""
        _active_number()
        return _json(_version_document(number))


@blp.route("/validate")
class Validate(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, ValidSchema)
    @blp.alt_response(422, description="invalid_bundle: every error by path")
    @require("policy:write")
    @blp.arguments(BundleBodySchema)
    def post(self, body):
        """Check a bundle without publishing it: every error, each with its path."""
        try:
            validate_bundle(body["bundle"])
        except BundleError as exc:
            raise _invalid(exc) from None
        return {"valid": True}


@blp.route("/simulate")
class Simulate(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, SimulationSchema)
    @blp.alt_response(422, description="invalid_bundle: every error by path")
    @require("policy:write")
    @blp.arguments(BundleBodySchema)
    def post(self, body):
        """Replay every recorded device's latest check-in under this bundle and the active one."""
        _active_number()
        candidate = _compile(body["bundle"])
        return _publisher().simulate(candidate).to_dict()


@blp.route("/rollback")
class Rollback(MethodView):
    @blp.doc(security=[{"bearer": []}], parameters=[IDEMPOTENCY_PARAMETER])
    @blp.response(201, RolledBackSchema)
    @blp.alt_response(202, schema=ApprovalRequestedSchema, description=SENT_FOR_APPROVAL)
    @blp.alt_response(404, description="no such version")
    @blp.alt_response(422, description="idempotency_key_reused")
    @blp.alt_response(503, description="Redis unreachable, or the outcome is unknown")
    @require("policy:write")
    @blp.arguments(RollbackSchema)
    def post(self, body):
        """Publish a new version equal to an earlier one (no safety brake: a known version)."""
        operation = request_operation(body)
        _active_number()
        try:
            published = _publisher().rollback(
                body["version"],
                note=body["note"],
                actor=g.principal.name,
                role=g.principal.role,
                operation=operation,
            )
        except UnknownVersion:
            raise ApiError(404, f"there is no policy version {body['version']}") from None
        except BundleError as exc:
            raise _invalid(exc) from None
        except VersionConflict as exc:
            raise _conflict(exc) from None
        return _json(
            {**version_metadata(published.entry), "rolled_back_to": body["version"]},
            201,
            replay_headers(published.replayed),
        )
