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


class RollbackSchema(_Body):
    version = fields.Integer(strict=True, required=True, validate=validate.Range(min=1))
    note = fields.String(required=True, validate=validate.Length(min=1, max=MAX_NOTE_CHARS))


class VersionMetaSchema(Schema):
    version = fields.Integer()
    published_at = fields.String(metadata={"description": "ISO-8601 UTC"})
    published_by = fields.String()
    note = fields.String()


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
