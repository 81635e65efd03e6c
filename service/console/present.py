"""Plain words for what the engine decided: verdicts, reasons, places and signals."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

import pycountry

from service.engine.model import SIGNALS

ROLE_LABELS = {
    "device": "Device",
    "agent": "Support agent",
    "compliance": "Compliance officer",
    "editor": "Policy editor",
    "auditor": "Auditor",
    "admin": "Administrator",
}

SIGNAL_LABELS = {
    "ip": ("IP address", "where the client IP is, by the GeoIP database"),
    "gps": ("GPS", "the phone's reported position, reverse-geocoded"),
    "network": ("Mobile network", "the country of the network the phone is attached to"),
    "sim": ("SIM card", "the SIM's home country (from its IMSI)"),
}

VERDICTS = {
    "lock": ("Locked", "The phone may not be used where it is."),
    "warn": ("Warning", "The phone works for now, but will lock unless the situation changes."),
    "allow": ("Allowed", "The phone may be used where it is."),
}

# Expiry choices of the unlock form: (value in seconds or "", label).
EXPIRY_CHOICES: tuple[tuple[str, str], ...] = (
    ("", "No expiry (until removed)"),
    ("86400", "1 day"),
    ("604800", "7 days"),
    ("2592000", "30 days"),
)


@cache
def place_name(label: str | None) -> str:
    """'CU' -> 'Cuba', 'UA-43' -> 'Avtonomna Respublika Krym (Ukraine)'; the code if unknown."""
    if not label:
        return ""
    if "-" in label:
        subdivision = pycountry.subdivisions.get(code=label)
        country = pycountry.countries.get(alpha_2=label.split("-", 1)[0])
        if subdivision is None:
            return label
        return f"{subdivision.name} ({_country_name(country) if country else label[:2]})"
    country = pycountry.countries.get(alpha_2=label)
    return _country_name(country) if country else label


def _country_name(country: Any) -> str:
    # "Iran, Islamic Republic of" reads worse than the common name where there is one.
    return getattr(country, "common_name", None) or country.name


def places_text(labels: list[str] | tuple[str, ...]) -> str:
    """'HK (Hong Kong), MO (Macao)'."""
    return ", ".join(f"{code} ({place_name(code)})" for code in labels)


def when(value: str | float | None) -> str:
    """An ISO-8601 UTC time or epoch seconds as '2026-11-21 10:00 UTC'."""
    if value in (None, ""):
        return ""
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(float(value), UTC)
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _labels(value: str | list[str]) -> str:
    """A signal's place, or its several places (SPEC §9) joined."""
    return value if isinstance(value, str) else ", ".join(value)


def _signals_text(signals: dict[str, str | list[str]]) -> str:
    if not signals:
        return "no signal"
    return ", ".join(
        f"{SIGNAL_LABELS.get(s, (s,))[0]} ({_labels(place)})" for s, place in signals.items()
    )


def explain_reason(reason: dict[str, Any], document: dict[str, Any] | None = None) -> str:
    """One sentence saying why this reason applies (and, for an observed hit, why it did not
    count: held back by a staged rollout, lifted by a bundle exception; SPEC §12.1, §12.2)."""
    text = _explain_hit(reason, document)
    if reason.get("held_back"):
        text += " Not enforced on this phone yet: it is outside the rule's staged rollout."
    if "exception" in (reason.get("lifted") or []) and reason.get("code") != "override_unlock":
        text += " Not enforced on this phone: the policy's exceptions list it."
    return text


def _explain_hit(reason: dict[str, Any], document: dict[str, Any] | None) -> str:
    code = reason.get("code")
    rule = reason.get("rule")
    region = reason.get("region")
    signals = reason.get("signals") or {}
    if code == "sanctioned_region":
        return (
            f"Rule “{rule}”: {region} ({place_name(region)}) is a sanctioned region, and "
            f"{_signals_text(signals)} put the phone there."
        )
    if code == "foreign_sim" or (code == "grace_period" and reason.get("sim_operator")):
        # SPEC §12.3: a carrier channel's phone with another operator's SIM.
        name = _distributor_name(document, reason.get("distributor") or "")
        text = (
            f"Rule “{rule}”: sold through {name} for use with its own SIM cards, and it carries "
            f"a SIM of network {reason.get('sim_operator')}."
        )
        if code == "grace_period" and reason.get("lock_at"):
            text += f" Grace period: it locks on {when(reason['lock_at'])}."
        return text
    if code in ("outside_territory", "grace_period"):
        distributor = reason.get("distributor")
        territories = reason.get("territories") or []
        if distributor is None:
            text = (
                f"Rule “{rule}”: no authorised distributor holds this IMEI, and the rule "
                "treats unknown devices this way."
            )
        else:
            name = _distributor_name(document, distributor)
            text = (
                f"Rule “{rule}”: sold through {name}, which may sell only in "
                f"{', '.join(territories) or 'no territory'}; "
            )
            if reason.get("bound"):
                text += (
                    "it was activated outside those territories, and that answer is fixed for "
                    f"good (it now reports {_signals_text(signals)})."
                )
            else:
                text += f"{_signals_text(signals)} put it outside them."
        if code == "grace_period" and reason.get("lock_at"):
            text += f" Grace period: it locks on {when(reason['lock_at'])}."
        return text
    if code == "manual_lock":
        override = (document or {}).get("override") or {}
        who = override.get("actor") or "support"
        why = override.get("reason")
        return f"Locked by hand by {who}" + (f": “{why}”." if why else ".")
    if code == "override_unlock":
        override = (document or {}).get("override") or {}
        who = override.get("actor") or "support"
        lifted = reason.get("lifted") or []
        text = f"Unlocked by {who}"
        text += f", setting aside rule {', '.join(f'“{r}”' for r in lifted)}." if lifted else "."
        return text
    return f"{code} ({rule})" if rule else str(code)


def _distributor_name(document: dict[str, Any] | None, distributor_id: str) -> str:
    info = (document or {}).get("distributor") or {}
    if info.get("id") == distributor_id and info.get("name"):
        return f"{info['name']} ({distributor_id})"
    return distributor_id


def verdict_summary(document: dict[str, Any]) -> dict[str, str]:
    """Headline and sentence for the device's current verdict."""
    verdict = document.get("verdict")
    if verdict is None:
        override = document.get("override") or {}
        if override.get("kind") == "lock":
            return {
                "verdict": "lock",
                "title": "Locked at next check-in",
                "text": "The phone has not checked in yet; a manual lock is waiting for it.",
            }
        return {
            "verdict": "unknown",
            "title": "Never checked in",
            "text": "No verdict yet: the phone has not checked in.",
        }
    title, text = VERDICTS.get(verdict, (verdict, ""))
    if verdict == "warn" and document.get("lock_at"):
        text = f"The phone works for now, but locks on {when(document['lock_at'])}."
    return {"verdict": verdict, "title": title, "text": text}


def evidence_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per signal of the last check-in: where it put the phone, which rules cited it."""
    last = document.get("last_checkin") or {}
    places = last.get("places") or {}
    cited: dict[str, list[str]] = {s: [] for s in SIGNALS}
    for group, suffix in (("reasons", ""), ("observed", " (observe only)")):
        for reason in document.get(group) or []:
            for signal in reason.get("signals") or {}:
                if signal in cited and reason.get("rule"):
                    cited[signal].append(f"{reason['rule']}{suffix}")
    rows = []
    for signal in SIGNALS:
        label, help_text = SIGNAL_LABELS[signal]
        place = places.get(signal)
        rows.append(
            {
                "signal": signal,
                "label": label,
                "help": help_text,
                "place": _labels(place) if place else place,
                "place_name": (
                    "; ".join(place_name(p) for p in ([place] if isinstance(place, str) else place))
                    if place
                    else ""
                ),
                "rules": cited[signal],
            }
        )
    return rows


def history_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The decision history, newest first, with short reason labels."""
    rows = []
    for decision in document.get("decisions") or []:
        rows.append(
            {
                "at": when(decision.get("at")),
                # Repeated identical outcomes are stored as one entry with a count.
                "count": decision.get("count", 1),
                "since": when(decision.get("since")) if decision.get("count", 1) > 1 else None,
                "verdict": decision.get("verdict"),
                "reasons": [
                    r.get("rule") or r.get("code", "").replace("_", " ")
                    for r in decision.get("reasons") or []
                ],
                "places": decision.get("places") or {},
                "policy_version": decision.get("policy_version"),
            }
        )
    return rows


def expiry_label(seconds: str | None) -> str:
    """The label of an expiry choice."""
    return dict(EXPIRY_CHOICES).get(seconds or "", "")


def duration_text(seconds: float) -> str:
    """A time left as people say it: '29 days 4 hours', '3 hours 5 minutes', 'under a minute'."""
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)

    def unit(n: int, name: str) -> str:
        return f"{n} {name}{'' if n == 1 else 's'}"

    if days:
        return unit(days, "day") + (f" {unit(hours, 'hour')}" if hours else "")
    if hours:
        return unit(hours, "hour") + (f" {unit(mins, 'minute')}" if mins else "")
    return unit(mins, "minute") if mins else "under a minute"
