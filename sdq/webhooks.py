"""Webhook targets and signatures, shared by the producer (checks at submit) and workers (delivery).

Signature format (what a receiver verifies)::

    X-Sdq-Timestamp: <unix seconds>
    X-Sdq-Signature: sha256=<hex HMAC-SHA256(SDQ_WEBHOOK_SECRET, "<timestamp>." + raw body)>

A receiver recomputes the HMAC over the timestamp, a dot and the raw request body, compares in
constant time, and rejects timestamps too far from its clock (replays).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

from sdq.exceptions import InvalidInput

SIGNATURE_HEADER = "X-Sdq-Signature"
TIMESTAMP_HEADER = "X-Sdq-Timestamp"
EVENT_HEADER = "X-Sdq-Event"
URL_MAX_CHARS = 2000


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` HMAC of `<timestamp>.<body>` with the webhook secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether `signature` is the HMAC of this timestamp and body (constant-time compare)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature or "")


def _is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_webhook_url(url: str, allow_private: bool, field: str = "webhook_url") -> str:
    """Refuse a webhook target that is not http(s) or resolves to a loopback/private address.

    With `allow_private` (SDQ_WEBHOOK_ALLOW_PRIVATE=1) any http(s) host is accepted.
    Raises InvalidInput naming `field`; returns the URL unchanged.
    """
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
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise InvalidInput(field, f"{field} host {parts.hostname!r} does not resolve", code="invalid_url") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if _is_private(ip):
            raise InvalidInput(field, f"{field} {url!r} points at a loopback/private address ({ip}); the operator "
                               "must set SDQ_WEBHOOK_ALLOW_PRIVATE=1 to allow that", code="forbidden_target")
    return url
