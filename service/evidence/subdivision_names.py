"""English province names of IP databases -> ISO 3166-2 codes.

DB-IP's City Lite (in both the MaxMind and the flat ``@ip-location-db`` layout) names a
subdivision without an ISO code ("Gilan Province", "Kharkivs’ka Oblast’", "Sebastopol City"),
and old files carry codes that ISO has since renumbered (Iran, 2018). This module maps a name to
the code pycountry knows today, conservatively: a name that fits no single division gives None
(the place keeps its country only), never a guess.

Crimea and Sevastopol are answered as Ukraine's UA-43 and UA-40 whichever country a database
files them under (DB-IP files them under RU): see :func:`occupied_ukraine`.
"""

from __future__ import annotations

import difflib
import functools
import unicodedata

import pycountry

#: (country, name) -> ISO 3166-2 code where string matching is unreliable or where a wrong
#: answer matters most (the sanctioned countries and Ukraine). Keys are compared normalised
#: (see :func:`normalise`), so one entry covers "Gilan", "Gilan Province" and "Ostan-e Gilan".
#: None marks a name that has no single ISO equivalent.
OVERRIDES: dict[tuple[str, str], str | None] = {
    # Ukraine. In GeoNames-style English names (DB-IP, MaxMind) a bare "Kyiv" is the oblast
    # (UA-32) and "Kyiv City" the capital (UA-30); ISO's own name of UA-30 is "Kyiv".
    ("UA", "Kyiv City"): "UA-30",
    ("UA", "Kiev City"): "UA-30",
    ("UA", "Kyiv"): "UA-32",
    ("UA", "Kiev"): "UA-32",
    ("UA", "Vinnytsia"): "UA-05",
    ("UA", "Vinnytsya"): "UA-05",
    ("UA", "Vinnitsa"): "UA-05",
    ("UA", "Volyn"): "UA-07",
    ("UA", "Luhansk"): "UA-09",
    ("UA", "Lugansk"): "UA-09",
    ("UA", "Dnipropetrovsk"): "UA-12",
    ("UA", "Dnipro"): "UA-12",
    ("UA", "Donetsk"): "UA-14",
    ("UA", "Zhytomyr"): "UA-18",
    ("UA", "Zakarpattia"): "UA-21",
    ("UA", "Transcarpathia"): "UA-21",
    ("UA", "Zaporizhzhia"): "UA-23",
    ("UA", "Zaporizhzhya"): "UA-23",
    ("UA", "Zaporizhia"): "UA-23",
    ("UA", "Zaporozhye"): "UA-23",
    ("UA", "Ivano-Frankivsk"): "UA-26",
    ("UA", "Kirovohrad"): "UA-35",
    ("UA", "Lviv"): "UA-46",
    ("UA", "Mykolaiv"): "UA-48",
    ("UA", "Mykolayiv"): "UA-48",
    ("UA", "Odesa"): "UA-51",
    ("UA", "Odessa"): "UA-51",
    ("UA", "Poltava"): "UA-53",
    ("UA", "Rivne"): "UA-56",
    ("UA", "Sumy"): "UA-59",
    ("UA", "Ternopil"): "UA-61",
    ("UA", "Kharkiv"): "UA-63",
    ("UA", "Kherson"): "UA-65",
    ("UA", "Khmelnytskyi"): "UA-68",
    ("UA", "Khmelnytskyy"): "UA-68",
    ("UA", "Cherkasy"): "UA-71",
    ("UA", "Chernihiv"): "UA-74",
    ("UA", "Chernivtsi"): "UA-77",
    # Cuba
    ("CU", "Havana"): "CU-03",
    ("CU", "Ciudad de La Habana"): "CU-03",
    ("CU", "Camagueey"): "CU-09",  # MaxMind's transliteration of Camagüey
    # Iran: English exonyms of the ISO (Persian) names.
    ("IR", "Markazi"): "IR-00",
    ("IR", "Gilan"): "IR-01",
    ("IR", "Mazandaran"): "IR-02",
    ("IR", "East Azerbaijan"): "IR-03",
    ("IR", "Azarbayjan-e Sharqi"): "IR-03",
    ("IR", "West Azerbaijan"): "IR-04",
    ("IR", "Azarbayjan-e Gharbi"): "IR-04",
    ("IR", "Kermanshah"): "IR-05",
    ("IR", "Khuzestan"): "IR-06",
    ("IR", "Fars"): "IR-07",
    ("IR", "Kerman"): "IR-08",
    ("IR", "Razavi Khorasan"): "IR-09",
    ("IR", "Khorasan-e Razavi"): "IR-09",
    ("IR", "Isfahan"): "IR-10",
    ("IR", "Esfahan"): "IR-10",
    ("IR", "Sistan and Baluchestan"): "IR-11",
    ("IR", "Kurdistan"): "IR-12",
    ("IR", "Kordestan"): "IR-12",
    ("IR", "Hamadan"): "IR-13",
    ("IR", "Chaharmahal and Bakhtiari"): "IR-14",
    ("IR", "Lorestan"): "IR-15",
    ("IR", "Ilam"): "IR-16",
    ("IR", "Kohgiluyeh and Boyer-Ahmad"): "IR-17",
    ("IR", "Bushehr"): "IR-18",
    ("IR", "Zanjan"): "IR-19",
    ("IR", "Semnan"): "IR-20",
    ("IR", "Yazd"): "IR-21",
    ("IR", "Hormozgan"): "IR-22",
    ("IR", "Tehran"): "IR-23",
    ("IR", "Ardabil"): "IR-24",
    ("IR", "Qom"): "IR-25",
    ("IR", "Qazvin"): "IR-26",
    ("IR", "Golestan"): "IR-27",
    ("IR", "North Khorasan"): "IR-28",
    ("IR", "Khorasan-e Shomali"): "IR-28",
    ("IR", "South Khorasan"): "IR-29",
    ("IR", "Khorasan-e Jonubi"): "IR-29",
    ("IR", "Alborz"): "IR-30",
    # Syria
    ("SY", "Damascus"): "SY-DI",
    ("SY", "Rif-dimashq"): "SY-RD",
    ("SY", "Rif Dimashq"): "SY-RD",
    ("SY", "Aleppo"): "SY-HL",
    ("SY", "Homs"): "SY-HI",
    ("SY", "Hama"): "SY-HM",
    ("SY", "Latakia"): "SY-LA",
    ("SY", "Tartus"): "SY-TA",
    ("SY", "Daraa"): "SY-DR",
    ("SY", "Al-Hasakah"): "SY-HA",
    ("SY", "Deir ez-Zor"): "SY-DY",
    ("SY", "Suwayda"): "SY-SU",
    ("SY", "As-Suwayda"): "SY-SU",
    ("SY", "Raqqa"): "SY-RA",
    ("SY", "Ar-Raqqah"): "SY-RA",
    ("SY", "Quneitra"): "SY-QU",
    ("SY", "Idlib"): "SY-ID",
    # North Korea
    ("KP", "Pyongyang"): "KP-01",
    ("KP", "South Pyongan"): "KP-02",
    ("KP", "North Pyongan"): "KP-03",
    ("KP", "Chagang"): "KP-04",
    ("KP", "Chagang-do"): "KP-04",
    ("KP", "South Hwanghae"): "KP-05",
    ("KP", "North Hwanghae"): "KP-06",
    ("KP", "Kangwon"): "KP-07",
    ("KP", "South Hamgyong"): "KP-08",
    ("KP", "North Hamgyong"): "KP-09",
    ("KP", "Ryanggang"): "KP-10",
    ("KP", "Yanggang"): "KP-10",
    ("KP", "Rason"): "KP-13",
    ("KP", "Nampo"): "KP-14",
    ("KP", "Kaesong"): "KP-15",
    # Sudan
    ("SD", "Al Jazirah"): "SD-GZ",
    ("SD", "Gezira"): "SD-GZ",
    ("SD", "Al Qadarif"): "SD-GD",
    ("SD", "Gedaref"): "SD-GD",
    ("SD", "Sennar"): "SD-SI",
    ("SD", "Northern"): "SD-NO",
    ("SD", "Northern Darfur"): "SD-DN",
    ("SD", "Southern Darfur"): "SD-DS",
    ("SD", "Western Darfur"): "SD-DW",
    ("SD", "Eastern Darfur"): "SD-DE",
    ("SD", "Southern Kordofan"): "SD-KS",
    # The largest English names of DB-IP City Lite (2026-06) that ISO spells natively, and one
    # wrong automatic match ("Buenos Aires F.D." is the city, not the province AR-B).
    ("AR", "Buenos Aires F.D."): "AR-C",
    ("MX", "Mexico City"): "MX-CMX",
    ("RU", "Moscow"): "RU-MOW",
    ("RU", "Moscow Oblast"): "RU-MOS",
    ("NL", "North Holland"): "NL-NH",
    ("NL", "South Holland"): "NL-ZH",
    ("NL", "North Brabant"): "NL-NB",
    ("IT", "Lombardy"): "IT-25",
    ("IT", "Tuscany"): "IT-52",
    ("DE", "North Rhine-Westphalia"): "DE-NW",
    ("DE", "Bavaria"): "DE-BY",
    ("DE", "Lower Saxony"): "DE-NI",
    ("DE", "Saxony"): "DE-SN",
    ("SE", "Stockholm"): "SE-AB",
    ("SE", "Vastra Gotaland"): "SE-O",
    ("PL", "Mazovia"): "PL-14",
    ("TH", "Bangkok"): "TH-10",
    ("EG", "Cairo"): "EG-C",
    ("EG", "Giza"): "EG-GZ",
    ("BE", "Brussels Capital"): "BE-BRU",
    ("BE", "Flanders"): "BE-VLG",
    ("ES", "Catalonia"): "ES-CT",
    ("AT", "Vienna"): "AT-9",
    ("CZ", "Prague"): "CZ-10",
    ("CO", "Bogota D.C."): "CO-DC",
    ("CL", "Santiago Metropolitan"): "CL-RM",
    ("MY", "Kuala Lumpur"): "MY-14",
    ("DK", "Capital Region"): "DK-84",
    ("DK", "Central Jutland"): "DK-82",
    ("SA", "Riyadh Region"): "SA-01",
    ("AE", "Dubai"): "AE-DU",
    ("IL", "Tel Aviv"): "IL-TA",
    ("IL", "Central District"): "IL-M",
    ("GR", "Attica"): "GR-I",
    ("CH", "Geneva"): "CH-GE",
    ("PT", "Lisbon"): "PT-11",
    ("FR", "Brittany"): "FR-BRE",
    ("BR", "Federal District"): "BR-DF",
}

#: Names of Crimea and Sevastopol, under whichever country a database files them.
_CRIMEA = ("Crimea", "Republic of Crimea", "Autonomous Republic of Crimea", "Krym", "Qirim")
_SEVASTOPOL = ("Sevastopol", "Sebastopol", "Sevastopol City", "Sebastopol City", "Gorod Sevastopol")
#: Other parts of Ukraine a database may file under Russia (Russian-style names included).
_UKRAINE_UNDER_RU = {
    "UA-14": ("Donetsk", "Donetsk People's Republic", "Donetskaya"),
    "UA-09": ("Luhansk", "Lugansk", "Luhansk People's Republic", "Lugansk People's Republic"),
    "UA-23": ("Zaporizhzhia", "Zaporozhye", "Zaporozhskaya"),
    "UA-65": ("Kherson", "Khersonskaya"),
}
#: The codes some databases use for them under RU (Russian GOST 7.67, not ISO 3166-2).
_RU_CODES = {"CR": "UA-43", "SEV": "UA-40"}

# Words that name the kind of division rather than the division: "Gilan Province" meets
# "Gīlān", "Kharkivs’ka Oblast’" meets "Kharkivska oblast". "city" is not one of them: "Kyiv
# City" and "Kyiv" are different divisions.
_GENERIC_WORDS = frozenset(
    (
        "province provincia provinsi oblast oblasts governorate muhafazat region regione state"
        " estado krai kray republic respublika prefecture department departamento district"
        " municipality county autonomous avtonomna of the de del e ostan gorod do to"
        # Chinese: province, municipality, autonomous region, special administrative region.
        " sheng shi zizhiqu tebiexingzhengqu"
    ).split()
)
_ADJECTIVAL_SUFFIXES = ("skaya", "skiy", "skij", "ska", "skyi", "sky")
_FUZZY_CUTOFF = 0.85


def normalise(name: str) -> str:
    """Lower-case, accent- and punctuation-free form of NAME without generic words."""
    letters = []
    for ch in unicodedata.normalize("NFKD", name):
        if unicodedata.combining(ch) or ch in "'’ʼ`ʻ":
            continue
        letters.append(ch.lower() if ch.isalnum() else " ")
    return " ".join(w for w in "".join(letters).split() if w not in _GENERIC_WORDS)


@functools.cache
def _overrides() -> dict[tuple[str, str], str | None]:
    """OVERRIDES by exact (case-folded) name, then by normalised name where that is unambiguous
    ("Moscow" and "Moscow Oblast" both normalise to "moscow": only their exact forms count)."""
    table: dict[tuple[str, str], str | None] = {}
    clashes: set[tuple[str, str]] = set()
    for (country, name), code in OVERRIDES.items():
        key = (country, normalise(name))
        if key in table and table[key] != code:
            clashes.add(key)
        table[key] = code
    for key in clashes:
        del table[key]
    table.update({(c, "=" + name.casefold()): code for (c, name), code in OVERRIDES.items()})
    return table


@functools.cache
def _occupied() -> dict[str, str]:
    """Normalised name -> UA code, for names that mean Crimea, Sevastopol or an oblast."""
    table = {normalise(name): "UA-43" for name in _CRIMEA}
    table.update({normalise(name): "UA-40" for name in _SEVASTOPOL})
    for code, names in _UKRAINE_UNDER_RU.items():
        table.update({normalise(name): code for name in names})
    return table


@functools.cache
def _index(country: str) -> dict[str, str]:
    """Top-level divisions of COUNTRY by normalised ISO name (ambiguous names left out)."""
    by_key: dict[str, list[str]] = {}
    for sub in pycountry.subdivisions.get(country_code=country) or ():
        if sub.parent_code is None:
            by_key.setdefault(normalise(sub.name), []).append(sub.code)
    return {key: codes[0] for key, codes in by_key.items() if len(codes) == 1}


def _single(matches: list[str], index: dict[str, str]) -> str | None:
    return index[matches[0]] if len(matches) == 1 else None


@functools.lru_cache(maxsize=8192)
def code_for(country: str, name: str) -> str | None:
    """ISO 3166-2 code of the division of COUNTRY called NAME; None when no single one fits."""
    key = normalise(name)
    if not key:
        return None
    overrides = _overrides()
    exact = (country, "=" + name.strip().casefold())
    if exact in overrides:
        return overrides[exact]
    if (country, key) in overrides:
        return overrides[(country, key)]
    return match_division(country, key)


def match_division(country: str, key: str) -> str | None:
    """ISO 3166-2 code of the top-level division of COUNTRY whose normalised name is KEY (see
    ``normalise``): exactly, by its first words or Slavic adjectival form, or by a close
    spelling; None when no single division fits. Shared by the IP database's names and the
    GPS gazetteer's GeoNames admin1 names."""
    if not key:
        return None
    index = _index(country)
    if key in index:
        return index[key]
    # "tver" -> "tverskaya", "veracruz" -> "veracruz ignacio la llave" (never a bare prefix:
    # "sakha" must not meet "sakhalinskaya").
    stems = {key, key[:-1]} if key[-1] in "aeiouy" else {key}
    adjectives = {stem + suffix for stem in stems for suffix in _ADJECTIVAL_SUFFIXES}
    code = _single(
        [k for k in index if k.startswith(key + " ") or k.split(" ", 1)[0] in adjectives], index
    )
    if code is not None:
        return code
    # Spelling variants; two close candidates means we cannot tell.
    return _single(difflib.get_close_matches(key, list(index), n=2, cutoff=_FUZZY_CUTOFF), index)


def occupied_ukraine(country: str, name: str | None, code: str | None = None) -> str | None:
    """UA code for a Ukrainian division a database files under UA *or RU*, else None.

    Crimea (UA-43) and Sevastopol (UA-40) by any of their names, and under RU also the four
    oblasts Russia claims (by name or by the non-ISO codes ``RU-CR`` / ``RU-SEV``): places are
    ISO 3166 places within internationally recognised borders, so a sanctions rule on UA-43
    fires whatever country a database gives (docs/decisions.md).
    """
    if country == "RU" and code and code.upper() in _RU_CODES:
        return _RU_CODES[code.upper()]
    if country not in ("UA", "RU") or not name:
        return None
    found = _occupied().get(normalise(name))
    if found is None:
        return None
    if country == "UA" and found not in ("UA-43", "UA-40"):
        return None  # the ordinary oblasts of Ukraine are found by code_for
    return found
