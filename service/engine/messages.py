"""What the user sees: lock-screen messages and the offline lock (SPEC §10, §11).

Bundle fields::

    messages:                       # keyed by reason code, or "default"
      sanctioned_region:
        text: {en: "...", es: "..."}          # BCP 47 tag -> 1-500 characters; "en" required
        support: {phone: "+85230001234", email: "unlock@example.com",
                  url: "https://example.com/unlock"}                      # each part optional
    rules:
      - id: sanctions
        message: {text: {en: "..."}}          # wins over messages.<its reason code>
    offline: {lock_after_days: 30, warn_days: 3}

Checks are done by well-kept libraries rather than patterns of our own: ``langcodes`` parses a
tag by the RFC 5646 grammar (well-formedness only: a tag need not be registered, so a fleet can
name a language the registry learnt after our release), ``phonenumbers`` (libphonenumber) judges
an E.164 number *possible* for its country calling code (not *valid*: the numbering plans it
ships go stale, and SPEC's own example ``+85230001234`` is not an allocated HK number),
``email-validator`` checks an address's syntax (never its deliverability: validation stays
offline and pure). A URL must be ``https`` with a host, judged by :mod:`urllib.parse`.

The message for a verdict (:meth:`MessageBook.choose`): none for ``allow``; else the reason that
decided the verdict (a manual lock first, else the first enforced reason whose action is the
verdict, in rule order), its rule's own ``message``, else ``messages.<code>``, else
``messages.default``, else none (null: the firmware keeps its own screen; docs/decisions.md).
Its text is chosen by RFC 4647 *lookup* on the device's ``locale``, case-insensitively, then
``en``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from langcodes.tag_parser import LanguageTagError, parse_tag
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from service.engine.model import DAY_S, Decision

#: Keys of the bundle's ``messages``: the reason codes a locked or warned device can show, and
#: ``default`` for any of them without its own.
MESSAGE_KEYS: tuple[str, ...] = (
    "sanctioned_region",
    "outside_territory",
    "grace_period",
    "manual_lock",
    "foreign_sim",
    "default",
)
MANUAL_LOCK = "manual_lock"
#: The language every message must have, and the one used when no other fits.
FALLBACK_LANG = "en"

# Bounds (docs/decisions.md, "Bundle bounds" and "Lock-screen messages").
MAX_TEXT_CHARS = 500
#: Languages of one message (more than any phone maker ships).
MAX_LANGUAGES = 200
#: A language tag: RFC 5646 asks implementations to take at least 35 characters; a check-in
#: ``locale`` longer than this is ignored like a malformed one.
MAX_TAG_CHARS = 64
MAX_EMAIL_CHARS = 254
MAX_URL_CHARS = 2000
MAX_OFFLINE_DAYS = 365


def _quote(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_language_tag(value: Any) -> bool:
    """True for a well-formed BCP 47 language tag (``es``, ``es-CU``, ``zh-Hant-TW``).

    ``langcodes`` parses by the RFC 5646 grammar; on top of it we refuse what it kindly
    repairs or lets through: ``_`` (it reads ``en_US`` as ``en-US``) and a primary subtag that
    is not letters (``123``)."""
    if not isinstance(value, str) or not value or len(value) > MAX_TAG_CHARS or "_" in value:
        return False
    try:
        parse_tag(value)
    except LanguageTagError:
        return False
    return value.split("-", 1)[0].isalpha()


def validate_lock_message(value: str) -> None:
    """A manual lock's own lock-screen text: the same rules as a bundle message's text."""
    _check_text(value)


def _check_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError("must be a string")
    if not 1 <= len(value) <= MAX_TEXT_CHARS:
        raise ValidationError(f"must be 1-{MAX_TEXT_CHARS} characters")
    # New lines are fine on a lock screen; other control characters and lone surrogates (which
    # no UTF-8 encoder accepts, so the verdict could not be signed) are not.
    if any(c != "\n" and unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise ValidationError("must not hold control characters (other than new lines)")
    return value


class LanguageTexts(fields.Field):
    """``{tag: text}``: well-formed BCP 47 tags (each once, case-insensitively), texts of
    1-500 characters, ``en`` among them. Errors are keyed by the tag as written, so a bad tag
    is reported at ``...text.xx-!!``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        if not isinstance(value, Mapping):
            raise ValidationError("must map language tags to texts")
        if len(value) > MAX_LANGUAGES:
            raise ValidationError(f"at most {MAX_LANGUAGES} languages")
        errors: dict[str, list[str]] = {}
        seen: dict[str, str] = {}
        out: dict[str, str] = {}
        for tag, text in value.items():
            key = str(tag)
            if not is_language_tag(tag):
                errors[key] = [f"not a well-formed BCP 47 language tag: {_quote(tag)}"]
                continue
            if tag.lower() in seen:
                errors[key] = [f"same language as {seen[tag.lower()]!r} (tags ignore case)"]
                continue
            seen[tag.lower()] = tag
            try:
                out[tag] = _check_text(text)
            except ValidationError as exc:
                errors[key] = list(exc.messages)
        if FALLBACK_LANG not in seen:
            # "_schema": the message lands on the text itself (validation.flatten_messages).
            errors["_schema"] = [f"must hold an {FALLBACK_LANG!r} text (the fallback)"]
        if errors:
            raise ValidationError(errors)
        return out


def _check_phone(value: str) -> None:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValidationError("must be an E.164 number such as +85230001234") from None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if e164 != value or not phonenumbers.is_possible_number(number):
        raise ValidationError("must be an E.164 number such as +85230001234")


def _check_email(value: str) -> None:
    if len(value) > MAX_EMAIL_CHARS:
        raise ValidationError(f"at most {MAX_EMAIL_CHARS} characters")
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        raise ValidationError("must be an e-mail address such as unlock@example.com") from None


def _check_url(value: str) -> None:
    if len(value) > MAX_URL_CHARS:
        raise ValidationError(f"at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme != "https" or not host or any(c.isspace() for c in value):
        raise ValidationError("must be an https URL such as https://example.com/unlock")


class SupportSchema(Schema):
    """Whom the user can call: each part optional."""

    class Meta:
        unknown = RAISE

    phone = fields.String(validate=_check_phone, metadata={"description": "E.164"})
    email = fields.String(validate=_check_email)
    url = fields.String(validate=_check_url, metadata={"description": "https only"})


class MessageSchema(Schema):
    """One lock-screen message: texts by language and an optional support contact."""

    class Meta:
        unknown = RAISE

    text = LanguageTexts(required=True)
    support = fields.Nested(SupportSchema)

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"text": data["text"]}
        if data.get("support"):
            out["support"] = {
                k: data["support"][k] for k in ("phone", "email", "url") if k in data["support"]
            }
        return out


_MESSAGE_SCHEMA = MessageSchema()


class MessagesField(fields.Field):
    """The bundle's ``messages``: reason code (or ``default``) -> message."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        if not isinstance(value, Mapping):
            raise ValidationError("must map reason codes to messages")
        errors: dict[str, Any] = {}
        out: dict[str, Any] = {}
        for key, message in value.items():
            if key not in MESSAGE_KEYS:
                errors[str(key)] = [f"unknown key {_quote(key)}; expected one of {MESSAGE_KEYS}"]
                continue
            if not isinstance(message, Mapping):
                errors[key] = ["must be an object with text (and support)"]
                continue
            try:
                out[key] = _MESSAGE_SCHEMA.load(message)
            except ValidationError as exc:
                errors[key] = exc.messages
        if errors:
            raise ValidationError(errors)
        # Stable order (the normalised bundle is hashed and diffed).
        return {key: out[key] for key in MESSAGE_KEYS if key in out}


class OfflineSchema(Schema):
    """``offline``: lock after this many days without a verified verdict, warn before."""

    class Meta:
        unknown = RAISE

    lock_after_days = fields.Integer(
        strict=True,
        required=True,
        validate=validate.Range(1, MAX_OFFLINE_DAYS, error=f"must be 1-{MAX_OFFLINE_DAYS} (days)"),
    )
    warn_days = fields.Integer(
        strict=True,
        load_default=0,
        validate=validate.Range(0, MAX_OFFLINE_DAYS, error=f"must be 0-{MAX_OFFLINE_DAYS} (days)"),
    )

    @validates_schema
    def _warn_within(self, data: dict[str, Any], **kwargs: Any) -> None:
        lock, warn = data.get("lock_after_days"), data.get("warn_days")
        if isinstance(lock, int) and isinstance(warn, int) and warn > lock:
            raise ValidationError(f"must be 0-{lock} (at most lock_after_days)", "warn_days")

    @post_load
    def _normalise(self, data: dict[str, Any], **kwargs: Any) -> dict[str, int]:
        return {"lock_after_days": data["lock_after_days"], "warn_days": data["warn_days"]}


def check_offline_after_checkin(data: Mapping[str, Any]) -> None:
    """``offline.lock_after_days`` must be longer than the check-in interval, or a phone that
    does everything right would lock itself between two check-ins. Raises ValidationError at
    ``offline.lock_after_days``."""
    offline = data.get("offline")
    interval = data.get("next_checkin_s")
    if not isinstance(offline, Mapping) or not isinstance(interval, int):
        return
    days = offline.get("lock_after_days")
    if isinstance(days, int) and days * DAY_S <= interval:
        raise ValidationError(
            {
                "offline": {
                    "lock_after_days": [
                        f"must be larger than next_checkin_s in days ({interval / DAY_S:g})"
                    ]
                }
            }
        )


def offline_terms(offline: Mapping[str, int] | None) -> dict[str, int] | None:
    """The response's ``offline``: ``{"lock_after_s", "warn_after_s"}``, None without one."""
    if not offline:
        return None
    lock_after_s = offline["lock_after_days"] * DAY_S
    return {
        "lock_after_s": lock_after_s,
        "warn_after_s": lock_after_s - offline["warn_days"] * DAY_S,
    }


def lookup_language(texts: Mapping[str, str], locale: str | None) -> str:
    """The key of ``texts`` that RFC 4647 *lookup* picks for ``locale``, case-insensitively:
    ``zh-Hant-TW``, then ``zh-Hant``, then ``zh`` (a single-letter subtag left at the end is
    dropped with the one after it), then ``en``. A malformed ``locale`` counts as none."""
    by_lower = {key.lower(): key for key in texts}
    if locale is not None and is_language_tag(locale):
        subtags = locale.lower().split("-")
        while subtags:
            found = by_lower.get("-".join(subtags))
            if found is not None:
                return found
            subtags.pop()
            if subtags and len(subtags[-1]) == 1:
                subtags.pop()
    return by_lower[FALLBACK_LANG]


@dataclass(frozen=True, slots=True)
class Cause:
    """What a message is chosen from: one reason of the decision (code, rule, action)."""

    code: str
    rule: str | None
    action: str


def deciding_cause(verdict: str, causes: Iterable[Cause]) -> Cause | None:
    """The reason that decided ``verdict``: a manual lock first, else the first reason whose
    action is the verdict (in rule order); None for ``allow``."""
    if verdict == "allow":
        return None
    first: Cause | None = None
    for cause in causes:
        if cause.code == MANUAL_LOCK:
            return cause
        if first is None and cause.action == verdict:
            first = cause
    return first


class MessageBook:
    """A bundle's messages, ready to answer "what does the phone show?"."""

    __slots__ = ("_by_code", "_by_rule")

    def __init__(self, by_code: Mapping[str, Mapping], by_rule: Mapping[str, Mapping]):
        self._by_code = dict(by_code)
        self._by_rule = dict(by_rule)

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any]) -> MessageBook:
        """The messages of a normalised bundle (``messages`` and the rules' ``message``)."""
        by_rule = {r["id"]: r["message"] for r in bundle.get("rules", ()) if r.get("message")}
        return cls(bundle.get("messages") or {}, by_rule)

    def __bool__(self) -> bool:
        return bool(self._by_code or self._by_rule)

    def source(self, cause: Cause) -> Mapping | None:
        """The bundle message for a cause: its rule's, else its code's, else ``default``."""
        if cause.rule is not None and cause.rule in self._by_rule:
            return self._by_rule[cause.rule]
        return self._by_code.get(cause.code) or self._by_code.get("default")

    def choose(
        self,
        verdict: str,
        causes: Iterable[Cause],
        locale: str | None,
        manual_text: str | None = None,
    ) -> dict[str, Any] | None:
        """The response's ``message``, or None (``allow``, or no message applies).

        ``manual_text`` is a manual lock's own text: shown as given (``lang`` null), with the
        support contact of the bundle message that would otherwise apply."""
        cause = deciding_cause(verdict, causes)
        if cause is None:
            return None
        source = self.source(cause)
        support = dict(source["support"]) if source and source.get("support") else None
        if cause.code == MANUAL_LOCK and manual_text:
            return {"reason": cause.code, "lang": None, "text": manual_text, "support": support}
        if source is None:
            return None
        lang = lookup_language(source["text"], locale)
        return {
            "reason": cause.code,
            "lang": lang,
            "text": source["text"][lang],
            "support": support,
        }

    def for_decision(self, decision: Decision, locale: str | None) -> dict[str, Any] | None:
        """The message for an engine decision (override included)."""
        override = decision.override
        manual = override.message if override is not None and override.kind == "lock" else None
        causes = (Cause(r.code, r.rule, r.action) for r in decision.reasons)
        return self.choose(decision.verdict, causes, locale, manual)
