"""Support pages: find a device by IMEI, see why it is locked, unlock / lock / remove override.

The actions go through the same OverrideService (and so the same audit entries and role scope)
as POST /v1/devices/<imei>/unlock; every action is a two-step form: the first POST checks the
fields and shows what will happen, the second (``step=confirm``) does it.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from typing import Any

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from service.console import present, security
from service.console.blueprint import bp
from service.console.errors import error_answer
from service.devices.document import device_document as _device_document
from service.devices.identity import AmbiguousImei, resolve_device
from service.devices.overrides import (
    MAX_IDEMPOTENCY_KEY,
    IdempotencyConflict,
    InvalidImei,
    OutcomeUnknown,
    OverrideService,
    OverviewConflict,
    SanctionsScopeError,
    anonymous_operation,
    named_operation,
    normalise_imei,
    request_fingerprint,
)
from service.engine.messages import Cause
from service.engine.model import SANCTIONED_REGION, lifted_kinds
from service.engine.roles import liftable_kinds
from service.store.devices import Operation
from service.web.errors import redis_failure, retry_after_headers

MAX_REASON = 500
#: A manual lock's own lock-screen text (SPEC §10).
MAX_LOCK_MESSAGE = 500
MAX_TICKET = 100
_ACTIONS = ("unlock", "lock", "remove")

#: The console's page when a change was sent but its outcome could not be learnt.
OUTCOME_UNKNOWN_TEXT = (
    "The decision store (Redis) did not answer in time, so this change may or may not have "
    "been applied. Send the same form again (reload and confirm resending): it is applied at "
    "most once. Or open the device's page to see what it holds now."
)


def _rl() -> Any:
    return current_app.extensions["regionlock"]


def _document(imei: str) -> dict | None:
    rl = _rl()
    return _device_document(rl.devices, rl.policies.current().policy, imei, rl.identities)


def _service() -> OverrideService:
    rl = _rl()
    return OverrideService(rl.devices, rl.audit, rl.identities)


def _canonical(raw: str) -> str:
    """The primary IMEI of the device RAW names (an alias reaches its device, SPEC §9)."""
    try:
        imei = normalise_imei(raw)
    except InvalidImei:
        abort(404, description=f"“{raw[:40]}” is not an IMEI (15 digits with a valid check digit).")
    try:
        return resolve_device(_rl().identities, imei)
    except AmbiguousImei as exc:
        abort(
            409,
            description=f"{imei} is another IMEI of several devices: "
            + ", ".join(exc.primaries)
            + ". Open one of them by its primary IMEI.",
        )


def unlock_scope(imei: str, role: str, document: dict[str, Any] | None) -> dict[str, Any]:
    """Which of the device's policy locks an unlock by ROLE lifts and which stay, with the
    region each sanctions lock is about (for the explanation next to the unlock form)."""
    lifts = lifted_kinds(liftable_kinds(role))
    regions = {r.get("rule"): r.get("region") for r in (document or {}).get("reasons") or []}
    locks = [
        {**r, "region": regions.get(r.get("rule"))}
        for r in _rl().devices.policy_reasons(imei)
        if r.get("action") in ("lock", "warn")
    ]
    lifted = [r for r in locks if r.get("kind") in lifts]
    kept = [r for r in locks if r.get("kind") not in lifts]
    return {
        "lifted": lifted,
        "kept": kept,
        # Nothing this role can lift, but something blocks: the unlock would be refused.
        "refused": bool(kept) and not lifted,
        "sanctions_kept": any(r.get("kind") == SANCTIONED_REGION for r in kept),
    }


def phone_screen(imei: str, document: dict[str, Any], now: float | None = None) -> dict | None:
    """What the phone shows (SPEC §10, §11): its lock-screen message in its own language and
    its offline countdown, as the *active* policy words them, from the last check-in's verdict
    and locale. None before any check-in."""
    last = document.get("last_checkin")
    if not last or not document.get("verdict"):
        return None
    policy = _rl().policies.current().policy
    actions = {
        (r.get("code"), r.get("rule")): r.get("action") for r in _rl().devices.policy_reasons(imei)
    }
    fixed = {"manual_lock": "lock", "override_unlock": "allow"}
    causes = [
        Cause(
            r["code"],
            r.get("rule"),
            fixed.get(r["code"]) or actions.get((r["code"], r.get("rule")), ""),
        )
        for r in document.get("reasons") or []
    ]
    override = document.get("override") or {}
    manual = override.get("message") if override.get("kind") == "lock" else None
    locale = last.get("locale")
    message = policy.messages.choose(document["verdict"], causes, locale, manual)
    return {
        "locale": locale,
        "message": message,
        "offline": _offline_countdown(last["at"], policy.offline, now),
    }


def _offline_countdown(decided_at: str, offline: dict | None, now: float | None) -> dict | None:
    """When the phone warns and locks itself if it gets no newer verified verdict."""
    if offline is None:
        return None
    now = time.time() if now is None else now
    start = datetime.fromisoformat(decided_at.replace("Z", "+00:00")).timestamp()
    lock_at = start + offline["lock_after_s"]
    warn_at = start + offline["warn_after_s"]
    state = "locked" if now >= lock_at else "warning" if now >= warn_at else "counting"
    return {
        "state": state,
        "lock_at": lock_at,
        "warn_at": warn_at,
        "left": present.duration_text(max(0.0, lock_at - now)),
    }


def _read_form(action: str) -> tuple[dict[str, str], dict[str, str]]:
    form = {
        "reason": request.form.get("reason", "").strip(),
        "ticket": request.form.get("ticket", "").strip(),
        "expires": request.form.get("expires", ""),
        "message": request.form.get("message", "").strip(),
    }
    errors: dict[str, str] = {}
    if action in ("unlock", "lock"):
        if not form["reason"]:
            errors["reason"] = "Say why (it goes into the audit trail)."
        elif len(form["reason"]) > MAX_REASON:
            errors["reason"] = f"At most {MAX_REASON} characters."
        if len(form["ticket"]) > MAX_TICKET:
            errors["ticket"] = f"At most {MAX_TICKET} characters."
    if action == "lock" and len(form["message"]) > MAX_LOCK_MESSAGE:
        errors["message"] = f"At most {MAX_LOCK_MESSAGE} characters."
    if action == "unlock" and form["expires"] not in dict(present.EXPIRY_CHOICES):
        errors["expires"] = "Choose one of the listed durations."
    return form, errors


def render_device(
    imei: str,
    *,
    forms: dict[str, dict[str, str]] | None = None,
    errors: dict[str, dict[str, str]] | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    """The device page (or the not-found page), with any form values and errors to show."""
    document = _document(imei)
    user = security.current_user()
    assert user is not None
    context: dict[str, Any] = {
        "imei": imei,
        "forms": forms or {},
        "errors": errors or {},
        "expiry_choices": present.EXPIRY_CHOICES,
    }
    if document is None:
        return render_template("console/device_missing.html", **context), (
            status if status != 200 else 404
        )
    context.update(
        doc=document,
        summary=present.verdict_summary(document),
        reasons=[
            {"reason": r, "text": present.explain_reason(r, document)} for r in document["reasons"]
        ],
        observed=[
            {"reason": r, "text": present.explain_reason(r, document)} for r in document["observed"]
        ],
        evidence=present.evidence_rows(document),
        history=present.history_rows(document),
        scope=unlock_scope(imei, user.role, document) if security.can("devices:write") else None,
        phone=phone_screen(imei, document),
        unlock_codes=issued_unlock_codes(imei),
        unlock_codes_scanned=UNLOCK_CODES_SCAN,
        when=present.when,
        place_name=present.place_name,
        places_text=present.places_text,
    )
    return render_template("console/device.html", **context), status


#: How many of the newest audit entries the device page reads for the unlock codes issued.
UNLOCK_CODES_SCAN = 20_000


def issued_unlock_codes(imei: str, limit: int = 20) -> list[dict]:
    """The offline unlock codes issued for IMEI (SPEC §11), newest first, from the audit trail's
    ``device.unlock_code`` entries: when, by whom, scope, validity, ticket. Never the codes
    (they are not stored anywhere)."""
    entries, _ = current_app.extensions["regionlock"].audit.query(
        imei=imei, action="device.unlock_code", limit=limit, scan_limit=UNLOCK_CODES_SCAN
    )
    return [
        {
            "at": entry["at"],
            "actor": entry["actor"],
            "role": entry["role"],
            "scope": entry["detail"].get("scope"),
            "valid_days": entry["detail"].get("valid_days"),
            "ticket": entry["detail"].get("ticket"),
        }
        for entry in entries
    ]


@bp.get("/devices")
@security.needs("devices:read")
def devices() -> ResponseReturnValue:
    """Search by IMEI (spaces and dashes allowed)."""
    query = request.args.get("imei", "").strip()
    error = None
    if query:
        try:
            imei = normalise_imei(query)
            # An alias leads to its device; one of several devices' aliases is named here.
            return redirect(url_for("console.device", imei=resolve_device(_rl().identities, imei)))
        except InvalidImei as exc:
            error = f"This IMEI {exc.problem}."
        except AmbiguousImei as exc:
            error = (
                "This IMEI is another IMEI of several devices (a cloned or reused IMEI): "
                + ", ".join(exc.primaries)
                + ". Search for one of them."
            )
    status = 422 if error else 200
    return render_template("console/devices.html", query=query, error=error), status


@bp.get("/devices/<imei>")
@security.needs("devices:read")
def device(imei: str) -> ResponseReturnValue:
    """A device's verdict, why, evidence, distributor, activation, override and history."""
    canonical = _canonical(imei)
    if canonical != imei:
        return redirect(url_for("console.device", imei=canonical))
    return render_device(canonical)


@bp.post("/devices/<imei>/<action>")
@security.needs("devices:write")
def device_action(imei: str, action: str) -> ResponseReturnValue:
    """Unlock, lock or remove the override: check, then confirm, then do."""
    if action not in _ACTIONS:
        abort(404)
    imei = _canonical(imei)
    form, errors = _read_form(action)
    user = security.current_user()
    assert user is not None
    if errors:
        return render_device(imei, forms={action: form}, errors={action: errors}, status=422)

    if action == "unlock":
        scope = unlock_scope(imei, user.role, _document(imei))
        if scope["refused"]:
            errors = {"scope": _scope_message(scope)}
            return render_device(imei, forms={action: form}, errors={action: errors}, status=403)
    if request.form.get("step") != "confirm":
        document = _document(imei)
        if action == "remove" and (document is None or document.get("override") is None):
            flash("This device has no override to remove.", "warning")
            return redirect(url_for("console.device", imei=imei))
        return render_template(
            "console/device_confirm.html",
            imei=imei,
            action=action,
            form=form,
            doc=document,
            scope=unlock_scope(imei, user.role, document) if action == "unlock" else None,
            expiry_label=present.expiry_label(form["expires"]),
            summary=present.verdict_summary(document) if document else None,
            place_name=present.place_name,
            operation=secrets.token_urlsafe(18),
        )
    try:
        return _perform(imei, action, form)
    except OutcomeUnknown as exc:
        if exc.__cause__ is not None:
            redis_failure(exc.__cause__)
        return error_answer(503, OUTCOME_UNKNOWN_TEXT, headers=retry_after_headers())
    except IdempotencyConflict:
        # A confirm form names one action; another form never carries its name.
        abort(400, description="This form was already used for another action: start again.")
    except OverviewConflict:
        # Nothing was written: check-ins kept changing the device under the change (as the
        # API's 409).
        return error_answer(
            409,
            "The phone kept checking in while this was being saved, so nothing was changed: "
            "try again.",
        )


def _operation(user_name: str, form: dict[str, str]) -> Operation:
    """The action the confirm form names (its hidden random key), so sending the form again
    after an error applies it at most once."""
    key = request.form.get("operation", "")
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        return anonymous_operation()
    fields = {**form, "etag": request.form.get("etag", "")}
    return named_operation(user_name, key, request_fingerprint("POST", request.path, fields))


def _scope_message(scope: dict[str, Any]) -> str:
    rules = ", ".join(
        f"“{r['rule']}”"
        + (f" ({r['region']}, {present.place_name(r['region'])})" if r.get("region") else "")
        for r in scope["kept"]
    )
    return (
        f"You cannot lift this lock: the device is locked by sanctions rule {rules}. Only a "
        "compliance officer can lift a sanctioned-region lock: escalate the ticket to "
        "compliance. Nothing was changed."
    )


def _perform(imei: str, action: str, form: dict[str, str]) -> ResponseReturnValue:
    user = security.current_user()
    assert user is not None
    service = _service()
    ticket = form["ticket"] or None
    operation = _operation(user.name, form)
    if action == "unlock":
        expires = int(form["expires"]) if form["expires"] else None
        try:
            outcome = service.unlock(
                imei, user, form["reason"], ticket, expires, operation=operation
            )
        except SanctionsScopeError:
            # The device's state changed between the two steps (a new check-in): say why.
            scope = unlock_scope(imei, user.role, _document(imei))
            return render_device(
                imei,
                forms={action: form},
                errors={action: {"scope": _scope_message(scope)}},
                status=403,
            )
        until = f" until {present.when(outcome.override.expires_at)}" if expires else ""
        if outcome.still_locked_by:
            rules = ", ".join(f"“{r['rule']}”" for r in outcome.still_locked_by)
            flash(
                f"Unlock recorded{until}, but the phone stays locked by sanctions rule {rules}: "
                "only a compliance officer can lift a sanctioned-region lock.",
                "warning",
            )
        else:
            flash(f"Unlocked{until}: the phone is allowed from its next check-in.", "success")
    elif action == "lock":
        service.lock(
            imei, user, form["reason"], ticket, operation=operation, message=form["message"] or None
        )
        flash("Locked: the phone locks at its next check-in, whatever the policy says.", "success")
    else:
        # Remove the override the confirm page showed, not whatever replaced it meanwhile.
        shown = request.form.get("etag") or None
        removed = service.remove(imei, user, if_match=shown, operation=operation)
        if removed.status == "removed":
            flash("Override removed: the next check-in follows the policy again.", "success")
        elif removed.status == "mismatch" and service.devices.override_raw(imei) is not None:
            flash(
                "The override changed since you looked at it (someone replaced it), so it was "
                "not removed: check the new one below.",
                "warning",
            )
        else:
            flash("This device had no override to remove.", "warning")
    # Post/redirect/get: reloading the device page never repeats the action.
    return redirect(url_for("console.device", imei=imei))
