"""Validate a bundle: the schema, the checks spanning several objects, the allocation overlaps.

:func:`validate_bundle` reports *every* problem at once as :class:`BundleError`, whose ``errors``
map a dotted path (``rules.0.regions.2``, ``distributors.1.allocations.3.from``) to messages.
:func:`flatten_messages` turns marshmallow's nested error tree into those paths; the web layer
uses it too, so a bad field is named the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import ValidationError

from service.engine.allocation_index import AllocationIndex, index_allocations
from service.engine.schema import BUNDLE_SCHEMA, is_id, quote


class BundleError(Exception):
    """An invalid bundle. ``errors`` maps dotted paths to lists of messages (all problems)."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        first = next(iter(errors.items()), ("", []))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"invalid bundle: {first[0]}: {'; '.join(first[1])}{more}")


def flatten_messages(
    messages: Any,
    out: dict[str, list[str]] | None = None,
    *,
    prefix: str = "",
    root: str = "bundle",
) -> dict[str, list[str]]:
    """Turn marshmallow's nested error tree into ``{"rules.0.regions.2": [...]}``.

    Nested dicts become dotted paths; a list of messages lands on its path; schema-level errors
    (``_schema``) belong to the object itself, and those of the top object to ``root``. Messages
    are added to ``out`` (a new dict when None), which is returned.
    """
    if out is None:
        out = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            if key == "_schema":
                path = prefix or root
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            flatten_messages(value, out, prefix=path, root=root)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out.setdefault(prefix or root, []).extend(messages)
    elif isinstance(messages, list):
        for item in messages:
            flatten_messages(item, out, prefix=prefix, root=root)
    else:
        out.setdefault(prefix or root, []).append(str(messages))
    return out


def _cross_checks(data: Mapping[str, Any], errors: dict[str, list[str]]) -> None:
    """Checks spanning several objects: duplicate ids and rules naming unknown distributors."""
    rules = data.get("rules")
    distributors = data.get("distributors")
    known: set[str] = set()
    if isinstance(distributors, list):
        for d, dist in enumerate(distributors):
            ident = dist.get("id") if isinstance(dist, Mapping) else None
            if isinstance(ident, str):
                if ident in known:
                    errors.setdefault(f"distributors.{d}.id", []).append(
                        f"duplicate distributor id {quote(ident)}"
                    )
                known.add(ident)
    if isinstance(rules, list):
        seen: set[str] = set()
        for r, rule in enumerate(rules):
            if not isinstance(rule, Mapping):
                continue
            ident = rule.get("id")
            if isinstance(ident, str):
                if ident in seen:
                    message = f"duplicate rule id {quote(ident)}"
                    errors.setdefault(f"rules.{r}.id", []).append(message)
                seen.add(ident)
            names = rule.get("distributors")
            if isinstance(names, list):
                for j, name in enumerate(names):
                    # A malformed name is reported by the schema; only a well-formed one can be
                    # unknown.
                    if is_id(name) and name not in known:
                        errors.setdefault(f"rules.{r}.distributors.{j}", []).append(
                            f"unknown distributor {name!r}"
                        )
    _check_proof_entries(data.get("device_proof"), known, errors)


def _check_proof_entries(device_proof: Any, known: set[str], errors: dict[str, list[str]]) -> None:
    """``device_proof.required_for``: each id that is not a TAC names a known distributor."""
    entries = device_proof.get("required_for") if isinstance(device_proof, Mapping) else None
    if not isinstance(entries, list):
        return
    for j, entry in enumerate(entries):
        # A malformed entry is reported by the schema; only a well-formed id can be unknown.
        if is_id(entry) and not entry.isdigit() and entry not in known:
            errors.setdefault(f"device_proof.required_for.{j}", []).append(
                f"unknown distributor {entry!r}"
            )


def validate_and_index(data: Any) -> tuple[dict[str, Any], AllocationIndex]:
    """Validate ``data`` and also return the allocation index built on the way (the compiler
    uses it so a million allocations are parsed and sorted once). Raises :class:`BundleError`."""
    if not isinstance(data, Mapping):
        raise BundleError({"bundle": ["must be an object"]})
    errors: dict[str, list[str]] = {}
    bundle: dict[str, Any] | None = None
    try:
        bundle = BUNDLE_SCHEMA.load(data)
    except ValidationError as exc:
        flatten_messages(exc.messages, errors)
    _cross_checks(data, errors)
    if bundle is not None:
        index = index_allocations(bundle["distributors"], errors, trusted=True)
    else:
        index = index_allocations(data.get("distributors"), errors, trusted=False)
    if errors or bundle is None:
        raise BundleError(dict(sorted(errors.items(), key=_path_key)))
    return bundle, index


def _path_key(item: tuple[str, list[str]]) -> tuple[Any, ...]:
    # Numeric parts sort numerically so rules.10 comes after rules.9.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in item[0].split("."))


def validate_bundle(data: Any) -> dict[str, Any]:
    """Validate a bundle and return its normalised form: a plain JSON-serialisable dict with
    defaults filled in and a stable key order. Raises :class:`BundleError` with every error."""
    return validate_and_index(data)[0]
