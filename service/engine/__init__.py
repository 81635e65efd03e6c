"""The pure decision engine: bundle validation, compilation and evaluation.

No Flask, Redis or geoip2 here, and no I/O beyond reading YAML in :func:`load_bundle_dir` and
:func:`load_cases`. Typical use::

    policy = compile_bundle(load_bundle_dir("policies"))
    decision = policy.decide(Facts(imei, {"ip": Place.parse("CU")}, now, state))
    decision = apply_override(decision, override, now)
"""

from service.engine.cases import Case, CaseError, CaseResult, load_cases, run_cases
from service.engine.compiler import CompiledPolicy, compile_bundle
from service.engine.loading import load_bundle_dir
from service.engine.model import (
    SIGNALS,
    Decision,
    DeviceState,
    Facts,
    Override,
    Place,
    Reason,
    apply_override,
    combine_actions,
)
from service.engine.validation import BundleError, validate_bundle

__all__ = [
    "SIGNALS",
    "BundleError",
    "Case",
    "CaseError",
    "CaseResult",
    "CompiledPolicy",
    "Decision",
    "DeviceState",
    "Facts",
    "Override",
    "Place",
    "Reason",
    "apply_override",
    "combine_actions",
    "compile_bundle",
    "load_bundle_dir",
    "load_cases",
    "run_cases",
    "validate_bundle",
]
