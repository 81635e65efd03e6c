"""Evidence: GeoIP, GPS reverse geocoding, MCC tables and Evidence.gather, against real data."""

from __future__ import annotations

import csv
from pathlib import Path

import geoip2.database
import pycountry
import pytest

from service.engine.model import Place
from service.evidence import Evidence, GeoIP, GpsGeocoder
from service.evidence.geoip import bundled_database_path, subdivision_codes
from service.evidence.mcc import (
    MCC_TABLE,
    country_of_mcc,
    imsi_place,
    mcc_mnc_of_imsi,
    network_place,
    operator_name,
)
from tests.geodb import build_mmdb, default_test_networks

DEFAULT_NETWORKS, IPS = default_test_networks()

# Non-global address space, each put *in* the test database as Cuba: if the filter in
# GeoIP.place() were missing, these lookups would answer CU instead of None.
NON_GLOBAL_NETWORKS = {
    "0.0.0.0/8": {"country": "CU"},
    "10.0.0.0/8": {"country": "CU"},
    "100.64.0.0/10": {"country": "CU"},
    "127.0.0.0/8": {"country": "CU"},
    "169.254.0.0/16": {"country": "CU"},
    "172.16.0.0/12": {"country": "CU"},
    "192.0.2.0/24": {"country": "CU"},
    "192.168.0.0/16": {"country": "CU"},
    "198.51.100.0/24": {"country": "CU"},
    "224.0.0.0/4": {"country": "CU"},
    "240.0.0.0/4": {"country": "CU"},
    "2001:db8::/32": {"country": "CU"},
    "fc00::/7": {"country": "CU"},
    "fe80::/10": {"country": "CU"},
    "ff00::/8": {"country": "CU"},
}
EXTRA_NETWORKS = {
    # MaxMind-style code that is not ISO 3166-2: the country stays, the subdivision goes.
    "31.43.0.0/19": {"country": "UA", "subdivision": "99"},
    # Only where the block is registered, not where it is used: no location evidence.
    "91.207.56.0/24": {"registered_country": "ES"},
    # A raw record (not shorthand) passes through build_mmdb unchanged.
    "5.160.0.0/22": {"country": {"iso_code": "IR", "names": {"en": "Iran"}}},
}


@pytest.fixture(scope="module")
def test_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A City database: the shared default networks plus this module's edge cases."""
    networks = {**DEFAULT_NETWORKS, **NON_GLOBAL_NETWORKS, **EXTRA_NETWORKS}
    return build_mmdb(tmp_path_factory.mktemp("geo") / "city.mmdb", networks)


@pytest.fixture(scope="module")
def geoip(test_db: str):
    reader = GeoIP(test_db)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def bundled():
    reader = GeoIP(bundled_database_path())
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def geocoder() -> GpsGeocoder:
    geocoder = GpsGeocoder()
    geocoder.warm()
    return geocoder


# --------------------------------------------------------------------------- GeoIP, test DB


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("cuba", Place("CU", "CU-03")),
        ("iran", Place("IR", "IR-23")),
        ("crimea", Place("UA", "UA-43")),
        ("sevastopol", Place("UA", "UA-40")),
        ("kyiv", Place("UA", "UA-30")),
        ("hong_kong", Place("HK")),
        ("us", Place("US", "US-NY")),
        ("france", Place("FR", "FR-75C")),  # the last (most specific) subdivision
        ("continent_only", None),
        ("ipv6", Place("CU", "CU-03")),
    ],
)
def test_geoip_default_networks(geoip: GeoIP, label: str, expected: Place | None) -> None:
    assert geoip.place(IPS[label]) == expected


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("31.43.1.1", Place("UA")),  # "UA-99" is not ISO 3166-2
        ("91.207.56.1", None),  # registered_country only
        ("5.160.0.1", Place("IR")),  # raw record
        ("::ffff:152.206.12.34", Place("CU", "CU-03")),  # IPv4-mapped IPv6 -> IPv4 tree
        ("::FFFF:24.24.24.24", Place("US", "US-NY")),
        ("8.8.8.8", None),  # public but not in the database
        ("2a00:1450::1", None),
    ],
)
def test_geoip_edge_records(geoip: GeoIP, ip: str, expected: Place | None) -> None:
    assert geoip.place(ip) == expected


@pytest.mark.parametrize(
    "ip",
    [
        "0.0.0.0",
        "10.1.2.3",
        "100.64.0.1",  # carrier-grade NAT
        "127.0.0.1",
        "169.254.10.10",
        "172.16.5.4",
        "192.0.2.1",  # documentation
        "192.168.1.1",
        "198.51.100.7",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "2001:db8::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:192.168.0.1",
    ],
)
def test_geoip_non_global_addresses_give_no_place(geoip: GeoIP, ip: str) -> None:
    assert geoip.place(ip) is None


@pytest.mark.parametrize(
    "ip", ["", "bogus", "1.2.3", "256.1.1.1", " 152.206.12.34", "152.206.12.34 ", "::ffff::1"]
)
def test_geoip_invalid_strings_give_no_place(geoip: GeoIP, ip: str) -> None:
    assert geoip.place(ip) is None


def test_geoip_repeated_lookups_agree(geoip: GeoIP) -> None:
    # The second call is served from the cache and must be the same answer.
    assert geoip.place(IPS["crimea"]) == geoip.place(IPS["crimea"]) == Place("UA", "UA-43")
    assert geoip.place(IPS["continent_only"]) is None
    assert geoip.place(IPS["continent_only"]) is None


def test_geoip_database_info(geoip: GeoIP) -> None:
    info = geoip.database_info()
    assert info["type"] == "GeoIP2-City"
    assert info["ip_version"] == 6
    assert isinstance(info["built_at"], str) and info["built_at"].endswith("Z")
    assert int(info["built_at"][:4]) >= 2024


def test_geoip_country_database(tmp_path: Path) -> None:
    path = build_mmdb(
        tmp_path / "country.mmdb", {"152.206.0.0/16": {"country": "CU"}}, "GeoIP2-Country"
    )
    with GeoIP(path) as reader:
        assert reader.place("152.206.1.1") == Place("CU")
        assert reader.database_info()["type"] == "GeoIP2-Country"


def test_geoip_rejects_database_without_countries(tmp_path: Path) -> None:
    path = build_mmdb(tmp_path / "asn.mmdb", {"152.206.0.0/16": {"country": "CU"}}, "GeoLite2-ASN")
    with pytest.raises(ValueError, match="GeoLite2-ASN"):
        GeoIP(path)


def test_helper_database_reads_with_geoip2_city_reader(test_db: str) -> None:
    with geoip2.database.Reader(test_db) as reader:
        city = reader.city(IPS["crimea"])
        assert city.country.iso_code == "UA"
        assert city.subdivisions.most_specific.iso_code == "43"
        assert city.continent.code == "EU"
        assert reader.city(IPS["ipv6"]).country.iso_code == "CU"
        assert reader.city(IPS["france"]).subdivisions.most_specific.iso_code == "75C"


def test_default_networks_are_public_and_inside_their_ranges() -> None:
    import ipaddress

    for label, ip in IPS.items():
        address = ipaddress.ip_address(ip)
        assert address.is_global, label
        assert any(address in ipaddress.ip_network(cidr) for cidr in DEFAULT_NETWORKS), label


# --------------------------------------------------------------------- GeoIP, bundled GeoLite2


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("8.8.8.8", Place("US")),
        ("::ffff:8.8.8.8", Place("US")),
        ("2001:4860:4860::8888", Place("US", "US-CA")),
        ("24.24.24.24", Place("US", "US-NY")),
        ("81.2.69.142", Place("GB", "GB-BEN")),  # England, Brent: the last subdivision
        ("152.206.0.1", Place("CU", "CU-09")),  # 2018 MaxMind code for Havana, see data/README
        ("175.45.176.1", Place("KP")),
        ("2.176.0.1", Place("IR")),
        ("41.95.0.1", Place("SD")),
        ("203.186.0.1", Place("HK")),  # MaxMind's "HCW" is no ISO 3166-2 code
        ("2.16.0.1", None),  # continent-only record in the 2018 database
        ("10.0.0.1", None),
    ],
)
def test_bundled_geolite2(bundled: GeoIP, ip: str, expected: Place | None) -> None:
    assert bundled.place(ip) == expected


def test_bundled_geolite2_info(bundled: GeoIP) -> None:
    info = bundled.database_info()
    assert info["type"] == "GeoLite2-City"
    assert str(info["built_at"]).startswith("2018-07")


def test_subdivision_codes_cover_sanctioned_regions() -> None:
    codes = subdivision_codes()
    assert {"UA-43", "UA-40", "UA-30", "CU-03", "IR-23"} <= codes
    assert "UA-99" not in codes


# GPS: tests/test_gps.py


# -------------------------------------------------------------------------------------- MCC


@pytest.mark.parametrize(
    ("mcc", "country"),
    [
        ("310", "US"), ("311", "US"), ("312", "US"), ("313", "US"), ("314", "US"), ("315", "US"),
        ("316", "US"), ("302", "CA"), ("334", "MX"), ("368", "CU"), ("432", "IR"), ("417", "SY"),
        ("467", "KP"), ("634", "SD"), ("255", "UA"), ("250", "RU"), ("208", "FR"), ("234", "GB"),
        ("235", "GB"), ("454", "HK"), ("455", "MO"), ("460", "CN"), ("461", "CN"), ("466", "TW"),
        ("262", "DE"), ("440", "JP"), ("441", "JP"), ("450", "KR"), ("404", "IN"), ("405", "IN"),
        ("406", "IN"), ("505", "AU"), ("340", "GP"), ("742", "GF"),
        ("001", None), ("901", None), ("999", None), ("000", None),
        ("31", None), ("3100", None), ("abc", None), ("", None), ("３１０", None),
    ],
)  # fmt: skip
def test_country_of_mcc(mcc: str, country: str | None) -> None:
    assert country_of_mcc(mcc) == country


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ("310260", Place("US")),  # stdnum files this one under the US Virgin Islands
        ("36801", Place("CU")),
        ("43235", Place("IR")),
        ("25001", Place("RU")),
        ("99999", None),
        ("3680", None),
        ("3680123", None),
        ("3680x", None),
        (None, None),
    ],
)
def test_network_place(network: str | None, expected: Place | None) -> None:
    assert network_place(network) == expected


@pytest.mark.parametrize(
    ("imsi", "expected"),
    [
        ("368010123456789", Place("CU")),
        ("310260123456789", Place("US")),
        ("467050000000001", Place("KP")),
        ("255010000000000", Place("UA")),
        ("001010123456789", None),  # test network
        ("36801", None),  # too short
        ("3680101234567890", None),  # too long
        ("36801012345678a", None),
        (None, None),
    ],
)
def test_imsi_place(imsi: str | None, expected: Place | None) -> None:
    assert imsi_place(imsi) == expected


@pytest.mark.parametrize(
    ("mcc_mnc", "expected"),
    [
        ("310260", "T-Mobile US"),
        ("36801", "Empresa de Telecomunicaciones de Cuba, SA"),
        ("43235", "MTN Irancell Telecommunications Services Company"),
        ("368010", None),  # MNC 010 is not 01
        ("36899", None),
        ("3680", None),
        ("abcde", None),
    ],
)
def test_operator_name(mcc_mnc: str, expected: str | None) -> None:
    assert operator_name(mcc_mnc) == expected


@pytest.mark.parametrize(
    ("imsi", "expected"),
    [
        ("310260123456789", "310260"),  # 3-digit MNC
        ("368010123456789", "36801"),  # 2-digit MNC
        ("432350123456789", "43235"),
        ("405854000000000", "405854"),
        ("310999123456789", "310999"),  # unknown MNC in a 3-digit-MNC country
        ("234990000000000", "23499"),  # unknown MNC elsewhere: 2 digits
        ("12345", None),
        ("36801012345678x", None),
    ],
)
def test_mcc_mnc_of_imsi(imsi: str, expected: str | None) -> None:
    assert mcc_mnc_of_imsi(imsi) == expected


def test_mcc_table_is_well_formed() -> None:
    with MCC_TABLE.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["mcc", "country", "name"]
    mccs = [row["mcc"] for row in rows]
    assert len(mccs) == len(set(mccs)) >= 230
    for row in rows:
        country = pycountry.countries.get(alpha_2=row["country"])
        if row["country"] == "XK":  # Kosovo: user-assigned code, no ISO entry
            assert row["name"] == "Kosovo"
        else:
            assert country is not None and country.name == row["name"], row


# --------------------------------------------------------------------------------- Evidence


def test_gather_all_signals(geoip: GeoIP, geocoder: GpsGeocoder) -> None:
    evidence = Evidence(geoip, geocoder)
    places = evidence.gather(
        ip=IPS["crimea"],
        gps=(44.9521, 34.1024),
        network="25001",
        imsi="255010123456789",
    )
    assert places == {
        "ip": Place("UA", "UA-43"),
        "gps": Place("UA", "UA-43"),
        "network": Place("RU"),
        "sim": Place("UA"),
    }


def test_gather_leaves_out_silent_signals(geoip: GeoIP, geocoder: GpsGeocoder) -> None:
    evidence = Evidence(geoip, geocoder)
    assert evidence.gather(ip=None, gps=None, network=None, imsi=None) == {}
    assert evidence.gather(ip="", gps=None, network="", imsi="") == {}
    silent = evidence.gather(
        ip="10.0.0.1", gps=(30.0, -40.0), network="99999", imsi="001010123456789"
    )
    assert silent == {}
    assert evidence.gather(ip=IPS["cuba"], gps=None, network=None, imsi="368010123456789") == {
        "ip": Place("CU", "CU-03"),
        "sim": Place("CU"),
    }
