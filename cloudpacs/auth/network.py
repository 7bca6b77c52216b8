"""Client addresses: X-Forwarded-For believed only from trusted proxies; CIDR allowlist."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(texts: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def _in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class NetworkPolicy:
    def __init__(self, allowed: Iterable[str], trusted_proxies: Iterable[str]) -> None:
        self.allowed = _networks(allowed)
        self.proxies = _networks(trusted_proxies)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The peer, unless it is a trusted proxy: then the right-most X-Forwarded-For entry
        not itself a trusted proxy (entries further left are the client's own claims)."""
        address = peer or ""
        if not forwarded_for or not _in(address, self.proxies):
            return address
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            address = hop
            if not _in(hop, self.proxies):
                break
        return address

    def allows(self, address: str) -> bool:
        return not self.allowed or _in(address, self.allowed)
