"""Schemas of the simulation jobs (SPEC §12.5), and the sampled fields of a simulation report."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from service.api.policy.schemas import SimulationSchema

#: Largest sample a job may ask for (the fleets of SPEC §12.5 are 100 million phones).
MAX_SAMPLE = 100_000_000


class SimulationJobBodySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    bundle = fields.Dict(
        required=True, metadata={"description": "a policy bundle (the schema of SPEC §6)"}
    )
    sample = fields.Integer(
        strict=True,
        validate=validate.Range(min=1, max=MAX_SAMPLE),
        metadata={
            "description": "replay a uniform random sample of this many recorded devices "
            "(default: every device up to 1,000,000, a sample of 1,000,000 above)"
        },
    )
    seed = fields.Integer(
        strict=True,
        validate=validate.Range(min=0, max=2**63 - 1),
        metadata={
            "description": "seed of the draw (default: from the bundle's digest, so the same "
            "bundle draws the same devices)"
        },
    )


class CountIntervalSchema(Schema):
    estimate = fields.Integer(metadata={"description": "the sample's count scaled to the fleet"})
    low = fields.Integer(metadata={"description": "95 % Wilson score interval, with the FPC"})
    high = fields.Integer()


class SampledSimulationSchema(SimulationSchema):
    fleet = fields.Integer(metadata={"description": "recorded devices (the sampling index)"})
    sample = fields.Dict(metadata={"description": "{size: devices drawn, seed}"})
    allow_to_lock_upper_ratio = fields.Float(
        metadata={"description": "the brake's figure: upper bound of the allow->lock share"}
    )
    intervals = fields.Dict(
        metadata={
            "description": "each count scaled to the fleet with its 95 % interval: "
            "{changes: {kind: interval}, verdicts: {active|candidate: {verdict: interval}}}",
            "example": {"changes": {"allow->lock": {"estimate": 1200, "low": 1100, "high": 1310}}},
        }
    )


class ProgressSchema(Schema):
    evaluated = fields.Integer(metadata={"description": "devices replayed so far"})
    total = fields.Integer(allow_none=True, metadata={"description": "devices to replay"})


class SimulationJobSchema(Schema):
    id = fields.String()
    state = fields.String(metadata={"enum": ["queued", "running", "done", "failed", "cancelled"]})
    created_at = fields.String(metadata={"description": "ISO-8601 UTC"})
    created_by = fields.String()
    finished_at = fields.String()
    active_version = fields.Integer(
        allow_none=True, metadata={"description": "the active version it is compared with"}
    )
    sample = fields.Integer(allow_none=True, metadata={"description": "the requested sample"})
    seed = fields.Integer()
    digest = fields.String(metadata={"description": "SHA-256 of the normalised bundle"})
    progress = fields.Nested(ProgressSchema)
    attempts = fields.Integer(metadata={"description": "workers that took it (resumptions + 1)"})
    error = fields.String(metadata={"description": "why it failed"})
    report = fields.Nested(SampledSimulationSchema, metadata={"description": "when done"})


class SimulationJobListSchema(Schema):
    simulations = fields.List(
        fields.Nested(SimulationJobSchema),
        metadata={"description": "jobs of the last 7 days, newest first, without reports"},
    )


class SimulationJobCreatedSchema(Schema):
    id = fields.String()
