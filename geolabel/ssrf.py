"""Label Studio's SSRF protection with an allow-list: every reserved network banned but the ML backend.

Label Studio 1.23.2 refuses to call reserved addresses (private networks, loopback, link-local...) when
``SSRF_PROTECTION_ENABLED`` (webhooks, exports) and ``ML_BLOCK_LOCAL_IP`` (ML backends: the URL check when
one is saved *and* the connection adapter used to call it) are true. A deployment's backend always sits
on such an address (a Docker network, loopback), and Label Studio has no allow-list setting. The
allow-list is built from the settings it does have: ``USE_DEFAULT_BANNED_SUBNETS=false`` and
``USER_ADDITIONAL_BANNED_SUBNETS`` = Label Studio's own default list with only the backend's address(es)
carved out. Label Studio then reaches the backend and still refuses every other reserved address: its
database, itself, the cloud metadata service at 169.254.169.254, the rest of the Docker network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from geolabel.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``default_banned_subnets`` of Label Studio 1.23.2 (``core/utils/io.py``, ``validate_ip``); a test
#: reads Label Studio's source and checks this copy is the same.
LABEL_STUDIO_DEFAULT_BANNED_SUBNETS: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "233.252.0.0/24",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "::ffff:0:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:0000::/32",
    "2001:20::/28",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)

#: The Label Studio settings that keep SSRF protection on with :func:`banned_subnets_except`'s list.
SSRF_SETTINGS = {
    "SSRF_PROTECTION_ENABLED": "true",
    "ML_BLOCK_LOCAL_IP": "true",
    "USE_DEFAULT_BANNED_SUBNETS": "false",
}


def banned_subnets_except(addresses: Iterable[str]) -> list[str]:
    """Label Studio's default banned subnets with exactly ``addresses`` (single IPs) carved out.

    Args:
        addresses: the ML backend's IP addresses, as Label Studio resolves its URL.

    Returns:
        Subnets for ``USER_ADDITIONAL_BANNED_SUBNETS``: together they ban every address the default
        list bans, except ``addresses``.

    Raises:
        ConfigError: if an address is not an IP address, or is one Label Studio does not ban anyway
            (a public address needs no allow-listing; say so rather than widen nothing silently).
    """
    allowed = [_address(text) for text in addresses]
    subnets: list[IPNetwork] = [ipaddress.ip_network(s) for s in LABEL_STUDIO_DEFAULT_BANNED_SUBNETS]
    for address in allowed:
        host = ipaddress.ip_network(address)
        if not any(host.subnet_of(s) for s in subnets if s.version == host.version):  # type: ignore[arg-type]
            raise ConfigError(
                f"{address} is not in a network Label Studio bans: it needs no allow-listing "
                "(give the ML backend's private or loopback address)"
            )
        subnets = [part for subnet in subnets for part in _without(subnet, host)]
    return [str(subnet) for subnet in subnets]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ConfigError(
            f"{text!r} is not an IP address; give the ML backend's address as Label Studio resolves it, "
            "e.g. 172.30.0.10 (a fixed address on the Docker network) or 127.0.0.2"
        ) from None


def _without(subnet: IPNetwork, host: IPNetwork) -> list[IPNetwork]:
    """``subnet`` minus ``host`` as a sorted list of networks (``subnet`` itself when disjoint)."""
    if subnet.version != host.version or not host.subnet_of(subnet):  # type: ignore[arg-type]
        return [subnet]
    return sorted(subnet.address_exclude(host))  # type: ignore[arg-type]


def is_banned(address: str, banned: Iterable[str]) -> bool:
    """Whether Label Studio, given ``banned`` as its subnets, refuses to connect to ``address``."""
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(subnet) for subnet in banned)
