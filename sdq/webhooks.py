"""Webhook targets and signatures, shared by the producer (checks at submit) and workers (delivery).

Signature format (what a receiver verifies)::

    X-Sdq-Timestamp: <unix seconds>
    X-Sdq-Signature: sha256=<hex HMAC-SHA256(tenant secret, "<timestamp>." + raw body)>

The tenant secret is ``hex HMAC-SHA256(SDQ_WEBHOOK_SECRET, "sdq-webhook:" + owner)``: each tenant
(token owner) has its own, fetched with ``GET /v1/webhook-secret``, so one tenant cannot forge
another's webhooks. The operator's SDQ_WEBHOOK_SECRET itself is never shown.

A receiver recomputes the HMAC over the timestamp, a dot and the raw request body, compares in
constant time, and rejects timestamps too far from its clock (replays).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from sdq.exceptions import InvalidInput, UnresolvedHost

SIGNATURE_HEADER = "X-Sdq-Signature"
TIMESTAMP_HEADER = "X-Sdq-Timestamp"
EVENT_HEADER = "X-Sdq-Event"
URL_MAX_CHARS = 2000
"""Longest webhook URL."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` HMAC of `<timestamp>.<body>` with the webhook secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether `signature` is the HMAC of this timestamp and body (constant-time compare)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature or "")


def tenant_secret(master: str, owner: str) -> str:
    """The signing secret of one tenant, derived from the operator's SDQ_WEBHOOK_SECRET."""
    return hmac.new(master.encode(), b"sdq-webhook:" + owner.encode(), hashlib.sha256).hexdigest()


NAT64 = ipaddress.ip_network("64:ff9b::/96")
"""The well-known NAT64 prefix: its last 32 bits are an IPv4 address."""


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo), or None."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    return None


def _is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    inner = embedded_ipv4(ip)
    if inner is not None and _is_private(inner):
        return True
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True)
class Target:
    """A checked webhook target: connect to `ip`, send `host` as Host and TLS server name."""

    scheme: str
    host: str
    port: int
    ip: str
    path: str


def check_webhook_url(url: str, allow_private: bool, field: str = "webhook_url") -> str:
    """Refuse a webhook target that is not http(s) or resolves to a loopback/private address.

    With `allow_private` (SDQ_WEBHOOK_ALLOW_PRIVATE=1) any http(s) host is accepted.
    Raises InvalidInput naming `field`; returns the URL unchanged.
    """
    try:
        resolve_target(url, allow_private, field, resolve=not allow_private)
    except UnresolvedHost:
        host = urlsplit(url).hostname
        raise InvalidInput(field, f"{field} host {host!r} does not resolve", code="invalid_url") from None
    return url


def resolve_target(url: str, allow_private: bool, field: str = "webhook_url", resolve: bool = True) -> Target | None:
    """Check `url` and resolve its host once; the Target holds the checked address to connect to.

    Raises InvalidInput for a target that is refused for good, UnresolvedHost when DNS fails now."""
    if len(url) > URL_MAX_CHARS:
        raise InvalidInput(field, f"{field} is longer than {URL_MAX_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(field, f"{field} must be an http(s) URL with a host, got {url!r}", code="invalid_url")
    if parts.username or parts.password:
        raise InvalidInput(field, f"{field} must not carry credentials, got {url!r}", code="invalid_url")
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput(field, f"{field} has an invalid port: {url!r}", code="invalid_url") from None
    if not resolve:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise UnresolvedHost(f"{parts.hostname!r} does not resolve ({type(exc).__name__})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for ip in addresses:
        if _is_private(ip) and not allow_private:
            raise InvalidInput(field, f"{field} {url!r} points at a loopback/private address ({ip}); the operator "
                               "must set SDQ_WEBHOOK_ALLOW_PRIVATE=1 to allow that", code="forbidden_target")
    if not addresses:
        raise UnresolvedHost(f"{parts.hostname!r} has no address")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, str(addresses[0]), path)
