"""Outbound targets: the URLs the platform calls on a tenant's behalf (webhook receivers,
a fulfilment saga's steps) and the addresses those calls may reach.

A tenant must not be able to point the platform at its own network: a host that is, or
resolves to, a loopback, private, link-local, shared or otherwise non-global address is
refused unless the platform allows it (``MERIDIAN_WEBHOOK_ALLOW_PRIVATE_TARGETS``, for
development and tests whose receivers listen on 127.0.0.1). The URL is checked when it is
configured (``check_url``: its form, and the host when it is an address or a local name;
``check_resolved``: the addresses its name has then), and at each call the addresses the
call connects to are the ones checked: ``outbound_session``'s resolver refuses a name
that resolves to a non-public address, so a name cannot pass a check and then be
re-pointed at a private address before the connection (DNS rebinding). Redirects are not
followed, so a public host cannot bounce a call to a private one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

SCHEMES = ("http", "https")
MAX_URL_LENGTH = 2048
# The form ``check_url`` accepts, for the request schemas (webhook targets, fulfilment
# steps), so the OpenAPI document promises no more than the API takes: http(s), a host
# name or IPv4 address, a port in range, no credentials, printable ASCII after the
# host. Whether the host is private is checked when the URL is set and before each call.
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
URL_PATTERN = rf"^(http|https)://{_LABEL}(\.{_LABEL})*(:{_PORT})?([/?#][!-~]*)?$"
# Names that always mean this machine, whatever a resolver says (RFC 6761).
_LOCAL_NAMES = ("localhost", "localhost.localdomain")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValueError):
    """The URL cannot be a target; the message says why (shown to API callers)."""


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is a global unicast address (an IPv4-mapped IPv6 address is
    judged by the IPv4 address it maps)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_url(url: str, *, allow_private: bool) -> str:
    """``url`` if it can be a target: absolute http(s), a host, no credentials, and, unless
    ``allow_private``, no local name or non-global address as its host. Raises
    ``TargetRefused``."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL ({exc})") from exc
    if parts.scheme.lower() not in SCHEMES or not parts.netloc:
        raise TargetRefused("must be an absolute http:// or https:// URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise TargetRefused("must name a host")
    if parts.username is not None or parts.password is not None:
        # Credentials would sit in the configuration in clear; receivers authenticate
        # calls by other means (a signature, an Idempotency-Key they recognise).
        raise TargetRefused("must not carry credentials (user:password@)")
    if port == 0:
        raise TargetRefused("port 0 is not a port")
    if allow_private:
        return url
    address = _literal(host)
    if address is not None and not is_public(address):
        raise TargetRefused(f"{host} is not a public address")
    if host.rstrip(".") in _LOCAL_NAMES or host.rstrip(".").endswith(".localhost"):
        raise TargetRefused(f"{host} is a local name")
    return url


async def check_resolved(url: str, *, allow_private: bool) -> None:
    """Right before a call: every address ``url``'s host resolves to is public (unless
    ``allow_private``). Raises ``TargetRefused``, also when the host does not resolve."""
    check_url(url, allow_private=allow_private)
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _literal(host) is not None:
        return  # checked by check_url
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"{host} does not resolve ({exc})") from exc
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not is_public(address):
            raise TargetRefused(f"{host} resolves to {address}, which is not a public address")


# -- the calls ------------------------------------------------------------------------
class RefusedAddress(OSError):
    """A resolved address a call must not connect to (aiohttp reports it as a DNS error
    of the connection, with this as its cause)."""


class CheckedResolver(AbstractResolver):
    """The system resolver, refusing a name any of whose addresses is not public (unless
    private targets are allowed): the check and the connection use one resolution."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if not self.allow_private:
            for result in found:
                address = ipaddress.ip_address(str(result["host"]).split("%", 1)[0])
                if not is_public(address):
                    raise RefusedAddress(
                        f"{host} resolves to {address}, which is not a public address"
                    )
        return found

    async def close(self) -> None:
        await self._inner.close()


def outbound_session(*, allow_private: bool, connections: int = 100) -> aiohttp.ClientSession:
    """The HTTP client of calls to targets: every name resolved afresh (no DNS cache)
    through ``CheckedResolver``; callers pass ``allow_redirects=False`` and a timeout."""
    connector = aiohttp.TCPConnector(
        resolver=CheckedResolver(allow_private=allow_private),
        use_dns_cache=False,
        limit=connections,
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60, connect=5)
    )


def failure(exc: aiohttp.ClientError) -> str:
    """What a failed call says: a refused address as such, anything else by its type."""
    cause = getattr(exc, "os_error", None)
    if isinstance(cause, RefusedAddress):
        return f"target refused: {cause}"
    return f"{type(exc).__name__}: {exc}"


async def read_start(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of an answer's body: the rest is never read."""
    kept = b""
    while len(kept) < limit:
        chunk = await response.content.read(limit - len(kept))
        if not chunk:
            break
        kept += chunk
    return kept
