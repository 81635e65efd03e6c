"""The `regionlock` command: one module per group, registered here (they never import this)."""

from __future__ import annotations

import click

from service.cli.approvals import approvals_group, policy_rollback
from service.cli.devices import devices
from service.cli.facts import facts
from service.cli.geoip import geoip_group
from service.cli.keys import keys_group
from service.cli.policy import distributors, policy
from service.cli.serve import serve
from service.cli.stats import stats
from service.cli.tokens import token
from service.cli.unlock_codes import unlock_codes
from service.cli.worker import worker


@click.group()
def main() -> None:
    """regionlock: decides at every check-in whether a phone may be used where it is."""


for command in (
    serve,
    token,
    devices,
    policy,
    distributors,
    keys_group,
    facts,
    geoip_group,
    unlock_codes,
    stats,
    worker,
):
    main.add_command(command)

# Four eyes on sanctions (SPEC §12.4): `policy rollback` and `policy approvals ...`.
policy.add_command(policy_rollback)
policy.add_command(approvals_group)


if __name__ == "__main__":  # pragma: no cover
    main()
