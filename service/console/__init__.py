"""The web console (SPEC §8): server-rendered pages for agents, editors and auditors.

``create_app`` registers :data:`bp`; registering it also configures the session (secret key,
cookie flags), so the console needs no other line in the app factory.
"""

from __future__ import annotations

# Importing the view modules attaches their routes to ``bp``.
# approvals: four eyes on sanctions (SPEC §12.4); overview: the fleet overview (SPEC §14);
# simulations: simulation jobs (SPEC §12.5).
from service.console import (  # noqa: F401
    approvals,
    audit,
    devices,
    errors,
    overview,
    policy,
    session,
    simulations,
)
from service.console.blueprint import bp

__all__ = ["bp"]
