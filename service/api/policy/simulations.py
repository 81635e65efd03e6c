"""/v1/policy/simulations: simulation jobs (SPEC §12.5), for the editors who may simulate."""

from __future__ import annotations

from flask import current_app, g
from flask.views import MethodView

from service.api.parsing import ApiBlueprint
from service.api.policy.simulation_schemas import (
    SimulationJobBodySchema,
    SimulationJobCreatedSchema,
    SimulationJobListSchema,
    SimulationJobSchema,
)
from service.engine.validation import BundleError, validate_bundle
from service.policy.simulation_jobs import JobsUnavailable, Simulations
from service.web.auth import require
from service.web.errors import ApiError

blp = ApiBlueprint(
    "simulations",
    __name__,
    url_prefix="/v1/policy/simulations",
    description="Policy editors: simulations as jobs",
)


def _simulations() -> Simulations:
    return current_app.extensions["regionlock_simulations"]


def _active_number() -> int | None:
    rl = current_app.extensions["regionlock"]
    rl.policies.current()  # the first use in a fresh Redis publishes the seed as version 1
    return rl.policy_store.active_version()


def _job(job_id: str) -> dict:
    document = _simulations().describe(job_id)
    if document is None:
        raise ApiError(404, f"there is no simulation {job_id} (jobs are kept 7 days)")
    return document


@blp.route("")
class SimulationJobs(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(202, SimulationJobCreatedSchema)
    @blp.alt_response(422, description="invalid_bundle: every error by path; or a bad sample")
    @blp.alt_response(
        503,
        description="Redis unreachable, or no job queue (a Redis Cluster "
        "without REGIONLOCK_JOBS_REDIS_URL)",
    )
    @require("policy:write")
    @blp.arguments(SimulationJobBodySchema)
    def post(self, body):
        """Start a simulation job of this bundle against the active version: 202 with its id."""
        try:
            bundle = validate_bundle(body["bundle"])
        except BundleError as exc:
            count = len(exc.errors)
            raise ApiError(
                422,
                f"the bundle is invalid ({count} {'error' if count == 1 else 'errors'})",
                code="invalid_bundle",
                fields=exc.errors,
            ) from None
        try:
            job_id = _simulations().start(
                bundle,
                active_version=_active_number(),
                sample=body.get("sample"),
                seed=body.get("seed"),
                actor=g.principal.name,
            )
        except JobsUnavailable as exc:
            raise ApiError(503, str(exc), code="jobs_unavailable") from None
        return {"id": job_id}, 202, {"Location": f"/v1/policy/simulations/{job_id}"}

    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, SimulationJobListSchema)
    @require("policy:write")
    def get(self):
        """The simulation jobs of the last 7 days, newest first (without their reports)."""
        return {"simulations": _simulations().list()}


@blp.route("/<string:job_id>")
class SimulationJob(MethodView):
    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, SimulationJobSchema)
    @blp.alt_response(404, description="no such job (or older than 7 days)")
    @require("policy:write")
    def get(self, job_id):
        """A job's state and progress and, once done, its report."""
        return _job(job_id)

    @blp.doc(security=[{"bearer": []}])
    @blp.response(200, SimulationJobSchema)
    @blp.alt_response(404, description="no such job (or older than 7 days)")
    @blp.alt_response(409, description="job_finished: it is done, failed or cancelled already")
    @require("policy:write")
    def delete(self, job_id):
        """Cancel a queued or running job (a running one stops at its next checkpoint)."""
        before = _simulations().cancel(job_id)
        if before == "gone":
            raise ApiError(404, f"there is no simulation {job_id} (jobs are kept 7 days)")
        if before not in ("queued", "running"):
            raise ApiError(
                409,
                f"the simulation is {before} already",
                code="job_finished",
                extra={"state": before},
            )
        return _job(job_id)
