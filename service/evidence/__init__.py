"""Signals -> places: GeoIP for the client address, offline reverse geocoding for GPS, and the
MCC of the serving network and of the SIM (SPEC §4 "Evidence")."""

from __future__ import annotations

from service.engine.model import Place
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
        network: str | None,
        imsi: str | None,
    ) -> dict[str, Place]:
        """Places by signal (``ip``, ``gps``, ``network``, ``sim``); silent signals are absent."""
        found = {
            "ip": self.geoip.place(ip) if ip else None,
            "gps": self.gps.place(gps[0], gps[1]) if gps is not None else None,
            "network": network_place(network) if network else None,
            "sim": imsi_place(imsi) if imsi else None,
        }
        return {signal: place for signal, place in found.items() if place is not None}
