"""Differences between two normalised bundles: a structured summary and a unified text diff."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import yaml

#: Above this many allocations in a bundle the text diff shows allocation counts instead of the
#: lists (the summary still counts added and removed allocations exactly).
TEXT_ALLOCATIONS_MAX = 20_000

_LISTS = ("rules", "distributors")


def _by_id(items: Any) -> dict[str, dict]:
    return {item["id"]: item for item in items or ()}


def _allocation_key(item: Mapping[str, str]) -> tuple[str, ...]:
    return ("tac", item["tac"]) if "tac" in item else ("range", item["from"], item["to"])


def _changed_fields(old: Mapping[str, Any], new: Mapping[str, Any], skip=()) -> list[str]:
    names = list(dict.fromkeys([*old, *new]))
    return [n for n in names if n not in skip and old.get(n) != new.get(n)]


def diff_summary(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from OLD to NEW: settings, and rules and distributors by id; and, only when
    they differ, how many ``exceptions`` entries were added and removed (SPEC §12.2)."""
    settings = {
        name: [old.get(name), new.get(name)]
        for name in _changed_fields(old, new, skip=(*_LISTS, "exceptions"))
    }
    old_rules, new_rules = _by_id(old.get("rules")), _by_id(new.get("rules"))
    rules = {
        "added": [r for r in new_rules if r not in old_rules],
        "removed": [r for r in old_rules if r not in new_rules],
        "changed": {
            r: _changed_fields(old_rules[r], new_rules[r])
            for r in new_rules
            if r in old_rules and old_rules[r] != new_rules[r]
        },
    }
    old_dists, new_dists = _by_id(old.get("distributors")), _by_id(new.get("distributors"))
    changed: dict[str, dict[str, Any]] = {}
    for ident, dist in new_dists.items():
        before = old_dists.get(ident)
        if before is None or before == dist:
            continue
        entry: dict[str, Any] = {"fields": _changed_fields(before, dist, skip=("allocations",))}
        before_allocs = {_allocation_key(a) for a in before.get("allocations", ())}
        after_allocs = {_allocation_key(a) for a in dist.get("allocations", ())}
        if before_allocs != after_allocs:
            entry["allocations_added"] = len(after_allocs - before_allocs)
            entry["allocations_removed"] = len(before_allocs - after_allocs)
        changed[ident] = entry
    distributors = {
        "added": [d for d in new_dists if d not in old_dists],
        "removed": [d for d in old_dists if d not in new_dists],
        "changed": changed,
    }
    summary = {"settings": settings, "rules": rules, "distributors": distributors}
    exceptions = _exceptions_changed(old.get("exceptions"), new.get("exceptions"))
    if exceptions is not None:
        summary["exceptions"] = exceptions
    return summary


def _exception_key(entry: Mapping[str, Any]) -> tuple:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(entry.items()))


def _exceptions_changed(old: Any, new: Any) -> dict[str, int] | None:
    """Entries added and removed (an entry whose lifts or note changed counts as both), None
    when equal: a list may be long, so it is counted rather than shown as a setting."""
    if (old or []) == (new or []):
        return None
    before = {_exception_key(e) for e in old or ()}
    after = {_exception_key(e) for e in new or ()}
    return {"added": len(after - before), "removed": len(before - after)}


def summary_is_empty(summary: Mapping[str, Any]) -> bool:
    """True when DIFF_SUMMARY found no difference."""
    return (
        not summary["settings"]
        and all(not any(summary[part].values()) for part in _LISTS)
        and not summary.get("exceptions")
    )


def _for_text(bundle: Mapping[str, Any]) -> dict[str, Any]:
    total = sum(len(d.get("allocations", ())) for d in bundle.get("distributors", ()))
    if total <= TEXT_ALLOCATIONS_MAX:
        return dict(bundle)
    return {
        **bundle,
        "distributors": [
            {**d, "allocations": f"<{len(d.get('allocations', ()))} allocations>"}
            for d in bundle.get("distributors", ())
        ],
    }


def unified_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], old_label: str, new_label: str
) -> str:
    """A unified diff of the two bundles rendered as YAML ('' when they are equal)."""

    def render(bundle: Mapping[str, Any]) -> list[str]:
        text = yaml.safe_dump(_for_text(bundle), sort_keys=False, allow_unicode=True, width=100)
        return text.splitlines(keepends=True)

    return "".join(difflib.unified_diff(render(old), render(new), old_label, new_label))


def format_summary(summary: Mapping[str, Any]) -> list[str]:
    """The summary as readable lines."""
    lines: list[str] = []
    for name, (before, after) in summary["settings"].items():
        lines.append(f"setting {name}: {before!r} -> {after!r}")
    for part, noun in (("rules", "rule"), ("distributors", "distributor")):
        for ident in summary[part]["added"]:
            lines.append(f"+ {noun} {ident}")
        for ident in summary[part]["removed"]:
            lines.append(f"- {noun} {ident}")
        for ident, change in summary[part]["changed"].items():
            if isinstance(change, list):
                lines.append(f"~ {noun} {ident}: {', '.join(change)}")
                continue
            details = list(change["fields"])
            if "allocations_added" in change:
                details.append(
                    f"allocations +{change['allocations_added']} -{change['allocations_removed']}"
                )
            lines.append(f"~ {noun} {ident}: {', '.join(details)}")
    if summary.get("exceptions"):
        change = summary["exceptions"]
        lines.append(f"~ exceptions +{change['added']} -{change['removed']}")
    return lines
