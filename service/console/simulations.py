"""Simulation jobs in the console (SPEC §12.5): start one from the review page, follow its
progress bar (the page polls a JSON endpoint) and read its report; the list of recent jobs.

Jobs are the API's (service.policy.simulation_jobs.Simulations): the same records, the same
worker, the same report.
"""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from service.console import present, security
from service.console.blueprint import bp
from service.console.bundle_text import MAX_TEXT_BODY, check_text
from service.console.errors import error_answer
from service.policy.simulation_jobs import JobsUnavailable, Simulations

#: Largest sample the console's form offers (the API's bound).
MAX_SAMPLE = 100_000_000


def _simulations() -> Simulations:
    return current_app.extensions["regionlock_simulations"]


def _active_number() -> int | None:
    rl = current_app.extensions["regionlock"]
    rl.policies.current()
    return rl.policy_store.active_version()


def _with_dates(job: dict[str, Any]) -> dict[str, Any]:
    job = dict(job)
    job["created"] = present.when(job["created_at"])
    return job


@bp.get("/policy/simulations")
@security.needs("policy:write")
def simulations() -> ResponseReturnValue:
    """The simulation jobs of the last 7 days."""
    jobs = [_with_dates(job) for job in _simulations().list()]
    return render_template("console/simulations.html", jobs=jobs)


def _start_form(view: Any) -> Any:
    view.max_body_bytes = MAX_TEXT_BODY  # the form carries the editor's text
    return view


@bp.post("/policy/simulations")
@security.needs("policy:write")
@_start_form
def simulation_start() -> ResponseReturnValue:
    """Start a job for the reviewed text (sample: optional), then show its page."""
    check = check_text(request.form.get("text", ""))
    if not check.valid:
        flash("The bundle is invalid: correct it in the editor first.", "error")
        return redirect(url_for("console.policy_edit"))
    sample: int | None = None
    raw = request.form.get("sample", "").strip().replace(",", "").replace("_", "")
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_SAMPLE:
            return error_answer(
                422, f"The sample must be a number of devices, 1 to {MAX_SAMPLE:,}."
            )
        sample = int(raw)
    user = security.current_user()
    try:
        job_id = _simulations().start(
            check.bundle,  # type: ignore[arg-type]
            active_version=_active_number(),
            sample=sample,
            seed=None,
            actor=user.name if user else "console",
        )
    except JobsUnavailable:
        return error_answer(
            503, "Simulation jobs are off: the service has no job queue (see the README)."
        )
    return redirect(url_for("console.simulation", job_id=job_id))


@bp.get("/policy/simulations/<job_id>")
@security.needs("policy:write")
def simulation(job_id: str) -> ResponseReturnValue:
    """One job: its progress bar while it runs, its report once done."""
    job = _simulations().describe(job_id)
    if job is None:
        abort(404, description="There is no such simulation (jobs are kept 7 days).")
    return render_template("console/simulation.html", job=_with_dates(job))


@bp.post("/policy/simulations/<job_id>/cancel")
@security.needs("policy:write")
def simulation_cancel(job_id: str) -> ResponseReturnValue:
    """Cancel a queued or running job."""
    before = _simulations().cancel(job_id)
    if before == "gone":
        abort(404, description="There is no such simulation (jobs are kept 7 days).")
    if before in ("queued", "running"):
        flash("Simulation cancelled.", "success")
    return redirect(url_for("console.simulation", job_id=job_id))


@bp.get("/api/policy/simulations/<job_id>")
def api_simulation(job_id: str) -> ResponseReturnValue:
    """A job's state and progress (the progress bar's polling), without its report."""
    if security.current_user() is None:
        return error_answer(401)
    if not security.can("policy:write"):
        return error_answer(403)
    job = _simulations().describe(job_id)
    if job is None:
        return error_answer(404, "There is no such simulation.")
    job.pop("report", None)
    return jsonify(job)
