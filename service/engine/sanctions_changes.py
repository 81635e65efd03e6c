"""Four eyes on sanctions (SPEC §12.4): which changes of a candidate bundle weaken a
``sanctioned_region`` rule of the active one.

Pure: two normalised bundles in, a list of changes out. A publish or rollback whose list is not
empty is not published but sent for approval (``service/policy/approvals.py``).

Every change is one dict with the same keys (the API's ``SanctionsChangeSchema``):

``rule``    the id of the active bundle's sanctions rule it concerns;
``kind``    one of :data:`WEAKENING_KINDS`;
``value``   the region or signal removed (``region_removed``, ``signal_removed``), else None;
``before``, ``after``  the field's old and new value for a changed field (``min_signals``,
            ``action``, ``mode``, ``rollout_percent``, ``grace_days``); for ``rule_removed`` the
            old type and the new one (None when the id is gone).

A rule is matched by its id: a renamed rule is a removal (weakening) plus an addition (not), and
a rule whose ``type`` changes away from ``sanctioned_region`` is a removal. Everything else that
can only make a sanctions rule stricter (a region or signal added, ``min_signals`` lowered,
``warn`` -> ``lock``, ``observe`` -> ``enforce``, rollout raised, a new sanctions rule) needs no
approval, nor does any change to other rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.engine.model import ACTION_RANK, SANCTIONED_REGION

RULE_REMOVED = "rule_removed"
REGION_REMOVED = "region_removed"
SIGNAL_REMOVED = "signal_removed"
MIN_SIGNALS_RAISED = "min_signals_raised"
ACTION_WEAKENED = "action_weakened"
MODE_OBSERVE = "mode_observe"
ROLLOUT_LOWERED = "rollout_lowered"
GRACE_DAYS_RAISED = "grace_days_raised"

#: Every kind of weakening, in the order they are listed for one rule.
WEAKENING_KINDS: tuple[str, ...] = (
    RULE_REMOVED,
    REGION_REMOVED,
    SIGNAL_REMOVED,
    MIN_SIGNALS_RAISED,
    ACTION_WEAKENED,
    MODE_OBSERVE,
    ROLLOUT_LOWERED,
    GRACE_DAYS_RAISED,
)

#: A rule without ``rollout_percent`` reaches every device (SPEC §12.1).
FULL_ROLLOUT = 100


def _change(
    rule: str, kind: str, value: str | None = None, before: Any = None, after: Any = None
) -> dict[str, Any]:
    return {"rule": rule, "kind": kind, "value": value, "before": before, "after": after}


def _sanctions_rules(bundle: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        rule["id"]: rule
        for rule in bundle.get("rules") or ()
        if rule.get("type") == SANCTIONED_REGION
    }


def _rule_weakenings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """How NEW (a sanctions rule) is weaker than OLD, the same rule in the active bundle."""
    rule = old["id"]
    found: list[dict[str, Any]] = []
    kept_regions = set(new.get("regions") or ())
    for region in old.get("regions") or ():
        if region not in kept_regions:
            found.append(_change(rule, REGION_REMOVED, value=region))
    kept_signals = set(new.get("signals") or ())
    for signal in old.get("signals") or ():
        if signal not in kept_signals:
            found.append(_change(rule, SIGNAL_REMOVED, value=signal))
    low_before, low_after = old.get("min_signals", 1), new.get("min_signals", 1)
    if low_after > low_before:
        found.append(_change(rule, MIN_SIGNALS_RAISED, before=low_before, after=low_after))
    action_before, action_after = old.get("action", "lock"), new.get("action", "lock")
    if action_before != action_after and ACTION_RANK[action_after] < ACTION_RANK["lock"]:
        # Away from lock; warn -> allow-like weakenings cannot happen (lock and warn only), but
        # any action below the old one's strength is caught by the rank as well.
        found.append(_change(rule, ACTION_WEAKENED, before=action_before, after=action_after))
    mode_before, mode_after = old.get("mode", "enforce"), new.get("mode", "enforce")
    if mode_after == "observe" and mode_before != "observe":
        found.append(_change(rule, MODE_OBSERVE, before=mode_before, after=mode_after))
    rollout_before = old.get("rollout_percent", FULL_ROLLOUT)
    rollout_after = new.get("rollout_percent", FULL_ROLLOUT)
    rollout_before = FULL_ROLLOUT if rollout_before is None else rollout_before
    rollout_after = FULL_ROLLOUT if rollout_after is None else rollout_after
    if rollout_after < rollout_before:
        found.append(_change(rule, ROLLOUT_LOWERED, before=rollout_before, after=rollout_after))
    grace_before, grace_after = old.get("grace_days", 0), new.get("grace_days", 0)
    if grace_after > grace_before:
        found.append(_change(rule, GRACE_DAYS_RAISED, before=grace_before, after=grace_after))
    return found


def sanctions_weakenings(
    active: Mapping[str, Any] | None, candidate: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every way CANDIDATE weakens a ``sanctioned_region`` rule of ACTIVE (both normalised
    bundles), rule by rule in ACTIVE's order; [] when it weakens none (or nothing is active)."""
    if active is None:
        return []
    after_by_id = {rule["id"]: rule for rule in candidate.get("rules") or ()}
    found: list[dict[str, Any]] = []
    for rule_id, old in _sanctions_rules(active).items():
        new = after_by_id.get(rule_id)
        if new is None or new.get("type") != SANCTIONED_REGION:
            found.append(
                _change(
                    rule_id,
                    RULE_REMOVED,
                    before=SANCTIONED_REGION,
                    after=None if new is None else new.get("type"),
                )
            )
            continue
        found.extend(_rule_weakenings(old, new))
    return found


def describe(change: Mapping[str, Any]) -> str:
    """One change in words, for the CLI, the console and audit readers."""
    rule, kind = change["rule"], change["kind"]
    before, after = change.get("before"), change.get("after")
    if kind == RULE_REMOVED:
        if after is None:
            return f"sanctions rule {rule} removed"
        return f"sanctions rule {rule} removed (its type becomes {after})"
    if kind == REGION_REMOVED:
        return f"{rule}: region {change['value']} removed"
    if kind == SIGNAL_REMOVED:
        return f"{rule}: signal {change['value']} removed"
    what = {
        MIN_SIGNALS_RAISED: "min_signals raised",
        ACTION_WEAKENED: "action changed",
        MODE_OBSERVE: "mode set",
        ROLLOUT_LOWERED: "rollout_percent lowered",
        GRACE_DAYS_RAISED: "grace_days raised",
    }.get(kind, kind)
    return f"{rule}: {what} {before} -> {after}"
