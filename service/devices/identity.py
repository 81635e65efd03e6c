"""Which device an IMEI names (SPEC §9): its primary, or an alias of one or several devices."""

from __future__ import annotations

from service.store.identities import IdentityStore

#: The error code of a call on an IMEI that is only an alias of several devices.
AMBIGUOUS_CODE = "ambiguous_imei"


class AmbiguousImei(Exception):
    """The IMEI is no device's primary but an alias of several: ``primaries`` lists them."""

    def __init__(self, imei: str, primaries: tuple[str, ...]):
        super().__init__(f"{imei} is another IMEI of several devices")
        self.imei = imei
        self.primaries = primaries


def resolve_device(identities: IdentityStore | None, imei: str) -> str:
    """The primary IMEI of the device IMEI names: IMEI itself when it is a device's primary
    (or names no device at all), the one device that reports it as an alias, else
    AmbiguousImei listing every such device."""
    if identities is None:
        return imei
    found = identities.resolve(imei)
    if found.is_primary or not found.primaries:
        return imei
    if len(found.primaries) == 1:
        return found.primaries[0]
    raise AmbiguousImei(imei, found.primaries)
