"""Who the client is: the TCP peer, or what a trusted proxy says (SPEC §4)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from service.evidence.geoip import parse_address


def client_ip(
    peer: str | None,
    forwarded_for: str | None,
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str | None:
    """The client address: the TCP peer, or, when the peer is a trusted proxy, the right-most
    X-Forwarded-For address that is not itself trusted (SPEC §4)."""
    if not peer or not trusted or not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    # Every hop is a proxy of ours: the left-most is the closest we have to a client.
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted) -> bool:
    ip = parse_address(address)
    return ip is not None and any(ip in network for network in trusted)
