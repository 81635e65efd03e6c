"""Schemas of the policy editors' API (SPEC §6).

The bundle itself is a plain ``Dict`` here: the engine validates it (every error with its
path), so its schema is written once, in ``service/engine/schema.py``.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from service.policy import MAX_NOTE_CHARS


class _Body(Schema):
    class Meta:
        unknown = EXCLUDE


class BundleBodySchema(_Body):
    bundle = fields.Dict(
        required=True,
        metadata={
            "description": "a policy bundle (the schema of SPEC §6, with §10 messages, §11 "
            "offline, §12.1 rules' rollout_percent, §12.2 exceptions, §12.3 distributors' "
            "networks and carrier_network rules: see the fields of Policy)"
        },
    )


class PublishSchema(BundleBodySchema):
    note = fields.String(required=True, validate=validate.Length(min=1, max=MAX_NOTE_CHARS))
    expected_version = fields.Integer(
        strict=True,
        required=True,
        validate=validate.Range(min=1),
        metadata={"description": "the active version the bundle was edited from"},
    )
    force = fields.Boolean(
        load_default=False, metadata={"description": "publish even if the safety brake trips"}
    )
    simulation_id = fields.String(
        validate=validate.Length(min=1, max=64),
        metadata={
            "description": "a finished simulation job of this same bundle against the active "
            "version (SPEC §12.5): the brake reads its report; without one the brake samples "
            "at most 100,000 devices in the request"
        },
    )


class RollbackSchema(_Body):
    version = fields.Integer(strict=True, required=True, validate=validate.Range(min=1))
    note = fields.String(required=True, validate=validate.Length(min=1, max=MAX_NOTE_CHARS))


class VersionMetaSchema(Schema):
    version = fields.Integer()
    published_at = fields.String(metadata={"description": "ISO-8601 UTC"})
    published_by = fields.String()
    note = fields.String()
    approval = fields.String(
        metadata={"description": "the approval request it carries out (SPEC §12.4); else absent"}
    )
    approved_by = fields.String(metadata={"description": "who approved it; else absent"})


class PolicySchema(VersionMetaSchema):
    """A version's metadata and, alongside it, every field of its (normalised) bundle."""

    name = fields.String()
    next_checkin_s = fields.Integer()
    max_new_lock_ratio = fields.Float()
    rules = fields.List(
        fields.Dict(),
        metadata={
            "description": "rules in order: {id, type: sanctioned_region | "
            "distributor_territory | carrier_network, mode, action, grace_days, ...} (SPEC §6); "
            "any rule may carry rollout_percent (1-100, absent: 100; SPEC §12.1); "
            "carrier_network rules (SPEC §12.3) take action lock|warn, distributors, mode, "
            "rollout_percent, grace_days and no signals"
        },
    )
    distributors = fields.List(
        fields.Dict(),
        metadata={
            "description": "{id, name, territories, allocations, networks?}; networks: the "
            "home networks (MCC+MNC, 5-6 digits) of a carrier channel's SIMs (SPEC §12.3)"
        },
    )
    messages = fields.Dict(
        metadata={
            "description": "lock-screen messages by reason code or default (SPEC §10): "
            "{text: {BCP 47 tag: text}, support: {phone, email, url}}; absent when none"
        }
    )
    offline = fields.Dict(
        metadata={
            "description": "offline self-lock (SPEC §11): {lock_after_days, warn_days}; "
            "absent when none"
        }
    )
    exceptions = fields.List(
        fields.Dict(),
        metadata={
            "description": "devices some rule kinds never lock (SPEC §12.2): {imei | tac | "
            "from, to; lifts: [distributor_territory | carrier_network] (default "
            "[distributor_territory]); note}; absent when none"
        },
    )


class VersionListSchema(Schema):
    active_version = fields.Integer()
    versions = fields.List(
        fields.Nested(VersionMetaSchema), metadata={"description": "newest first"}
    )


class ValidSchema(Schema):
    valid = fields.Boolean()


class SimulationSchema(Schema):
    evaluated = fields.Integer(metadata={"description": "recorded devices replayed"})
    skipped = fields.Integer(metadata={"description": "device records without replayable facts"})
    changes = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"example": {"allow->lock": 12}}
    )
    samples = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    verdicts = fields.Dict(metadata={"description": "verdict counts under active and candidate"})
    allow_to_lock_ratio = fields.Float()
    max_new_lock_ratio = fields.Float()
    would_brake = fields.Boolean()
    active_version = fields.Integer(allow_none=True)


class PublishedSchema(VersionMetaSchema):
    forced = fields.Boolean()
    simulation = fields.Nested(SimulationSchema)


class RolledBackSchema(VersionMetaSchema):
    rolled_back_to = fields.Integer()


# --- Four eyes on sanctions (SPEC §12.4) ------------------------------------------------------


class SanctionsChangeSchema(Schema):
    """One way a candidate weakens a sanctioned_region rule of the active version."""

    rule = fields.String(metadata={"description": "the active version's sanctions rule id"})
    kind = fields.String(
        metadata={
            "description": "rule_removed (gone, renamed, or its type changed), region_removed, "
            "signal_removed, min_signals_raised, action_weakened (away from lock), "
            "mode_observe, rollout_lowered (a missing rollout_percent is 100), "
            "grace_days_raised"
        }
    )
    value = fields.String(
        allow_none=True,
        metadata={"description": "the region or signal removed; null for other kinds"},
    )
    before = fields.Raw(
        allow_none=True,
        metadata={"description": "the field's old value (rule_removed: sanctioned_region)"},
    )
    after = fields.Raw(
        allow_none=True,
        metadata={"description": "its new value (rule_removed: the new type, null if gone)"},
    )


class ApprovalSchema(Schema):
    """An approval request (its bundle only in GET /v1/policy/approvals/<id>)."""

    id = fields.String(metadata={"description": "16 hex digits"})
    state = fields.String(
        metadata={
            "description": "pending, approved, rejected, withdrawn, stale (the active version "
            "moved before approval), expired (7 days without a decision)"
        }
    )
    kind = fields.String(metadata={"description": "publish or rollback"})
    requested_by = fields.String()
    requested_role = fields.String()
    note = fields.String(metadata={"description": "the requester's note (the version's note)"})
    created_at = fields.String(metadata={"description": "ISO-8601 UTC"})
    expires_at = fields.String(metadata={"description": "ISO-8601 UTC: 7 days after created_at"})
    compared_version = fields.Integer(
        metadata={"description": "the active version the changes were found against"}
    )
    changes = fields.List(fields.Nested(SanctionsChangeSchema))
    force = fields.Boolean(metadata={"description": "publish past the safety brake once approved"})
    rolled_back_to = fields.Integer(allow_none=True)
    decided_by = fields.String(metadata={"description": "once closed"})
    decided_role = fields.String()
    decision_note = fields.String()
    closed_at = fields.String(metadata={"description": "ISO-8601 UTC, once closed"})
    published_version = fields.Integer(metadata={"description": "once approved"})
    active_version = fields.Integer(metadata={"description": "when closed as stale"})


class ApprovalRequestedSchema(Schema):
    approval = fields.Nested(ApprovalSchema)


class PendingApprovalSchema(ApprovalSchema):
    active_version = fields.Integer(metadata={"description": "the active version now"})
    stale = fields.Boolean(
        metadata={"description": "the active version moved since the request: approving is 409"}
    )
    diff = fields.Dict(
        metadata={
            "description": "the request's bundle against the active version now: settings, "
            "rules and distributors added, removed, changed (as `regionlock policy diff`)"
        }
    )
    diff_lines = fields.List(fields.String(), metadata={"description": "the diff in words"})


class ApprovalListSchema(Schema):
    approvals = fields.List(
        fields.Nested(PendingApprovalSchema), metadata={"description": "oldest first"}
    )


class ApprovalDetailSchema(ApprovalSchema):
    bundle = fields.Dict(metadata={"description": "the bundle to publish"})


class DecisionSchema(_Body):
    decision = fields.String(required=True, validate=validate.OneOf(("approve", "reject")))
    note = fields.String(load_default="", validate=validate.Length(max=MAX_NOTE_CHARS))


class ApprovedSchema(PublishedSchema):
    approval = fields.String(metadata={"description": "the request this version carries out"})
    approved_by = fields.String()
    rolled_back_to = fields.Integer(allow_none=True)


class DecidedSchema(Schema):
    approval = fields.Nested(ApprovalSchema)
