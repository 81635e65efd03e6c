"""`regionlock unlock-codes ...`: the factory export of device keys (SPEC §11, §13).

Only the CLI hands out per-device keys, never the HTTP API. `unlock-codes verify` is the
reference verifier of offline unlock codes firmware teams test against (docs/unlock-codes.md).
"""

from __future__ import annotations

import os
import sys

import click

from service.cli.common import ACTOR_OPTION, actor_name, fail, redis_client


@click.group("unlock-codes")
def unlock_codes() -> None:
    """Per-device keys for the factory and the reference verifier of offline unlock codes."""


@unlock_codes.command("device-keys")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="CSV or text file: one primary IMEI per line (first column); a header 'imei' is fine",
)
@ACTOR_OPTION
def device_keys_command(path, actor) -> None:
    """Print `imei,device_key_hex,auth_key_hex` for every IMEI in FILE on standard output, for
    the factory to put in each phone; audited (count, file name, actor). Nothing is printed when
    a line is not an IMEI (each bad line is named) or the master key is not the deployment's."""
    from service.config import ConfigError, load_settings
    from service.crypto.device_keys import MASTER_KEY_NAME, auth_key, device_key
    from service.crypto.secrets import SecretError, ensure_shared, load_shared_secret
    from service.devices.overrides import InvalidImei, normalise_imei
    from service.store.audit import AuditStore
    from service.store.secret_ids import SecretIdStore

    try:
        settings = load_settings()
        master = load_shared_secret(
            MASTER_KEY_NAME,
            settings.key_ring_dir / MASTER_KEY_NAME,
            settings.unlock_master_key_file,
        )
    except (ConfigError, SecretError) as exc:
        fail(str(exc))
    imeis, problems = _read_imeis(path, normalise_imei, InvalidImei)
    if problems:
        for line, value, problem in problems:
            click.echo(f"line {line}: {value!r}: {problem}", err=True)
        fail(f"{len(problems)} line(s) of {path} are not IMEIs: nothing exported")
    with redis_client() as client:
        try:
            # Keys made from another master key would open nothing: same check as at start-up.
            ensure_shared(master, SecretIdStore(client))
        except SecretError as exc:
            fail(str(exc))
        # Audited before anything is printed: no key leaves without its entry.
        AuditStore(client).append(
            actor_name(actor),
            "admin",
            "unlock_codes.device_keys_exported",
            None,
            {"count": len(imeis), "file": os.path.basename(path), "master_key_id": master.id},
        )
    out = sys.stdout
    out.write("imei,device_key_hex,auth_key_hex\n")
    for imei in imeis:
        out.write(
            f"{imei},{device_key(master.value, imei).hex()},{auth_key(master.value, imei).hex()}\n"
        )
    out.flush()
    click.echo(f"{len(imeis)} device key(s) exported", err=True)


def _read_imeis(path, normalise, invalid) -> tuple[list[str], list[tuple[int, str, str]]]:
    """The IMEIs of PATH's first column (blank lines and a header 'imei' skipped, repeats once)
    and the lines that are not IMEIs (line number, value, problem)."""
    imeis: dict[str, None] = {}
    problems = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            value = line.split(",", 1)[0].strip().strip('"')
            if not value or (number == 1 and value.lower() == "imei"):
                continue
            try:
                imeis[normalise(value)] = None
            except invalid as exc:
                problems.append((number, value, exc.problem))
    return list(imeis), problems


#: What each scope lifts, in the verifier's words (SPEC §11).
SCOPE_LIFTS = {
    "gray": "gray-market locks (distributor_territory, foreign_sim) and the offline self-lock",
    "all": "every lock, sanctioned_region included, and the offline self-lock",
}


@unlock_codes.command("verify")
@click.option("--device-key", "key_hex", required=True, help="the device's key, 64 hex digits")
@click.option("--challenge", required=True, help="the 10 digits the locked phone shows")
@click.option("--code", required=True, help="the 12-digit code to check")
def verify_command(key_hex, challenge, code) -> None:
    """Print the scope and validity CODE grants for CHALLENGE on the device with DEVICE_KEY,
    or exit 1 when it grants nothing: the reference verifier firmware teams test against (it
    tries both scopes and every valid_days 0-90, as the phone does). Exit 2: bad arguments."""
    from service.crypto.device_keys import verify_code

    key_text = key_hex.strip().lower()
    if len(key_text) != 64 or any(c not in "0123456789abcdef" for c in key_text):
        fail("--device-key must be 64 hex digits (the device_key_hex of the factory export)")
    challenge, code = challenge.strip(), code.strip().replace(" ", "").replace("-", "")
    if len(challenge) != 10 or not challenge.isascii() or not challenge.isdigit():
        fail("--challenge must be 10 digits")
    if len(code) != 12 or not code.isascii() or not code.isdigit():
        click.echo("invalid: a code is 12 digits", err=True)
        sys.exit(1)
    granted = verify_code(bytes.fromhex(key_text), challenge, code)
    if granted is None:
        click.echo("invalid: not a code of this device key and challenge", err=True)
        sys.exit(1)
    scope, days = granted
    click.echo(f"scope: {scope}")
    click.echo(f"valid_days: {days}")
    click.echo(f"lifts: {SCOPE_LIFTS[scope]}")
    if days == 0:
        click.echo("validity: until the phone's next successful check-in, whose verdict rules")
    else:
        click.echo(f"validity: {days} day(s) ({days * 86400} s) on the phone's monotonic clock")
