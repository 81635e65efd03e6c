"""Signals -> places: GeoIP for the client address, offline reverse geocoding for GPS, and the
MCC of the serving network and of the SIM (SPEC §4 "Evidence")."""

from __future__ import annotations

from collections.abc import Sequence

from service.engine.model import PlaceValue, place_value
from service.evidence.geoip import GeoIP
from service.evidence.gps import GpsGeocoder
from service.evidence.mcc import imsi_place, network_place

__all__ = ["Evidence", "GeoIP", "GpsGeocoder"]


class Evidence:
    """Turns the raw signals of one check-in into the place each of them gives."""

    def __init__(self, geoip: GeoIP, gps: GpsGeocoder) -> None:
        """Use these (process-wide, thread-safe) lookups."""
        self.geoip = geoip
        self.gps = gps

    def gather(
        self,
        *,
        ip: str | None,
        gps: tuple[float, float] | None,
        network: str | None = None,
        imsi: str | None = None,
        networks: Sequence[str] = (),
        imsis: Sequence[str] = (),
    ) -> dict[str, PlaceValue]:
        """Places by signal (``ip``, ``gps``, ``network``, ``sim``); silent signals are absent.

        ``networks`` / ``imsis`` are those of a device's several SIMs (SPEC §9), beside the one
        ``network`` / ``imsi``: the signal then holds every distinct place they give (a tuple
        when there are several, see :data:`~service.engine.model.PlaceValue`)."""
        found = {
            "ip": self.geoip.place(ip) if ip else None,
            "gps": self.gps.place(gps[0], gps[1]) if gps is not None else None,
            "network": (
                _several(network_place, network, networks)
                if networks
                else (network_place(network) if network else None)
            ),
            "sim": (
                _several(imsi_place, imsi, imsis) if imsis else (imsi_place(imsi) if imsi else None)
            ),
        }
        return {signal: place for signal, place in found.items() if place is not None}


def _several(lookup, first: str | None, more: Sequence[str]) -> PlaceValue | None:
    """The places LOOKUP gives for FIRST then each of MORE (silent ones skipped)."""
    codes = ([first] if first else []) + [code for code in more if code]
    return place_value(place for place in map(lookup, codes) if place is not None)
