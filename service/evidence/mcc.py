"""Mobile country codes (ITU-T E.212) -> countries; operator names from python-stdnum.

The serving network's MCC says where the device is attached *now*; the IMSI's MCC says which
country issued the SIM. Both only ever give a country, never a subdivision: Crimean operators
use Russia's MCC 250, so MCC evidence alone can never place a device in UA-43.

Country per MCC comes from ``data/mcc_countries.csv`` (see ``data/README.md``), not from
python-stdnum's per-operator ``cc``: that one follows an operator's footprint (310-260, T-Mobile
US, is filed under the US Virgin Islands there), while an MCC is assigned to one country.
"""

from __future__ import annotations

import csv
import functools
from collections import Counter
from pathlib import Path

from stdnum import numdb

from service.engine.model import Place

#: Shipped data folder at the repository root (the service runs from a checkout).
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
MCC_TABLE = DATA_DIR / "mcc_countries.csv"


@functools.cache
def _country_by_mcc() -> dict[str, str]:
    """The MCC table, read once; a malformed row fails loudly (it is shipped data)."""
    table: dict[str, str] = {}
    with MCC_TABLE.open(encoding="utf-8", newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            mcc, country = row["mcc"], row["country"]
            if not (len(mcc) == 3 and mcc.isdigit() and len(country) == 2 and country.isupper()):
                raise ValueError(f"{MCC_TABLE}:{line}: bad row {row!r}")
            table[mcc] = country
    return table


def _is_digits(value: str | None, low: int, high: int) -> bool:
    """True for an ASCII-digit string of length low..high."""
    return (
        isinstance(value, str) and low <= len(value) <= high and value.isascii() and value.isdigit()
    )


def country_of_mcc(mcc: str) -> str | None:
    """ISO 3166-1 alpha-2 country of a 3-digit MCC; None when unassigned or malformed."""
    if not _is_digits(mcc, 3, 3):
        return None
    return _country_by_mcc().get(mcc)


def _place_of_mcc(mcc: str) -> Place | None:
    """Country-only place for an MCC."""
    country = country_of_mcc(mcc)
    return Place(country) if country is not None else None


def network_place(mcc_mnc: str | None) -> Place | None:
    """Place of the serving network (MCC+MNC, 5-6 digits), from its MCC."""
    if not _is_digits(mcc_mnc, 5, 6):
        return None
    assert mcc_mnc is not None
    return _place_of_mcc(mcc_mnc[:3])


def imsi_place(imsi: str | None) -> Place | None:
    """Home country of a SIM (IMSI, 6-15 digits), from its MCC."""
    if not _is_digits(imsi, 6, 15):
        return None
    assert imsi is not None
    return _place_of_mcc(imsi[:3])


def _imsi_db() -> numdb.NumDB:
    """python-stdnum's MCC/MNC database (parsed once by stdnum itself)."""
    return numdb.get("imsi")


def operator_name(mcc_mnc: str) -> str | None:
    """Operator of an MCC+MNC per python-stdnum; None when unknown."""
    if not _is_digits(mcc_mnc, 5, 6):
        return None
    return _operator_name(mcc_mnc)


@functools.lru_cache(maxsize=4096)
def _operator_name(mcc_mnc: str) -> str | None:
    """Cached lookup behind :func:`operator_name`."""
    parts = _imsi_db().info(mcc_mnc)
    # Exactly MCC + MNC: "368010" splits as 368/01/0 and is not Cubacel's "36801".
    if len(parts) != 2:
        return None
    props = parts[1][1]
    return props.get("operator") or props.get("brand") or None


@functools.cache
def _three_digit_mnc_mccs() -> frozenset[str]:
    """MCCs whose known MNCs mostly have three digits (North America, India's 405, ...)."""
    counts: dict[str, Counter[int]] = {}
    for length, low, high, _props, children in _imsi_db().prefixes:
        if length == 3 and low == high:
            # Majority, not unanimity: stdnum files one stray two-digit MNC under 310.
            counts.setdefault(low, Counter()).update(child[0] for child in children if child[3])
    return frozenset(mcc for mcc, seen in counts.items() if seen[3] > seen[2])


def mcc_mnc_of_imsi(imsi: str) -> str | None:
    """MCC+MNC of an IMSI (2- or 3-digit MNC as python-stdnum knows it); None if malformed."""
    if not _is_digits(imsi, 6, 15):
        return None
    # Only the first six digits matter, so the cache stays small and hits often.
    return _mcc_mnc_of_prefix(imsi[:6])


@functools.lru_cache(maxsize=4096)
def _mcc_mnc_of_prefix(prefix: str) -> str:
    """Cached lookup behind :func:`mcc_mnc_of_imsi` (``prefix`` is 6 digits)."""
    parts = _imsi_db().info(prefix)
    if len(parts) >= 2 and parts[1][1]:  # an MNC stdnum knows, with its real length
        return parts[0][0] + parts[1][0]
    # Unknown MNC: three digits where every known MNC of the MCC has three, else two (the
    # E.212 default outside North America).
    return prefix if prefix[:3] in _three_digit_mnc_mccs() else prefix[:5]
