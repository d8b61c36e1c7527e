"""Where a webhook may be sent: an http(s) URL whose host is a public address (by default).

The job's submitter chooses the URL and the server makes the request. Unchecked, anyone could make
the server call what only it can reach (its own Redis or metrics, a cloud metadata address, the
private network): server-side request forgery. So a URL is accepted only if every address its host
resolves to is global, unless ``ATELIER_WEBHOOK_ALLOW_PRIVATE`` allows the others. At delivery the
host is resolved and checked again, and the request goes to the very address that was checked (the
Host header and the TLS server name stay the URL's), so a DNS answer that changes in between
(rebinding) cannot steer it elsewhere. Redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import httpx

MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTarget(ValueError):
    """A URL the server will not call; the message says why, for a 422 naming ``webhook_url``."""


class UnresolvableTarget(UnsafeTarget):
    """The host has no address (now): at submission a 422, at delivery a failed attempt to retry."""


@dataclass(frozen=True)
class WebhookTarget:
    """A parsed webhook URL."""

    url: httpx.URL

    @property
    def host(self) -> str:
        """The host as DNS knows it (IDNA-encoded), without IPv6 brackets."""
        return self.url.raw_host.decode("ascii")

    @property
    def port(self) -> int:
        return self.url.port or (443 if self.url.scheme == "https" else 80)

    def pinned(self, address: IPAddress) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
        """URL, headers and httpx extensions that send the request to ``address`` while the server
        still sees (Host header) and TLS still verifies (server name) the URL's own host."""
        url = self.url.copy_with(host=str(address), fragment=None)
        headers = {"Host": self.url.netloc.decode("ascii")}
        extensions = {"sni_hostname": self.host} if self.url.scheme == "https" else {}
        return url, headers, extensions


def parse_target(raw: str) -> WebhookTarget:
    """Syntax only: an absolute http(s) URL with a host and no credentials."""
    if len(raw) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"is longer than {MAX_URL_LENGTH} characters")
    try:
        url = httpx.URL(raw.strip())
        host = url.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError) as exc:  # IDNA errors are ValueErrors (UnicodeError)
        raise UnsafeTarget(f"is not a valid URL ({exc})") from None
    if url.scheme not in SCHEMES:
        raise UnsafeTarget("must be an absolute http:// or https:// URL")
    if not host:
        raise UnsafeTarget("has no host")
    if url.port is not None and not 0 < url.port < 65536:
        raise UnsafeTarget(f"has port {url.port}, which is not a TCP port (1 to 65535)")
    if url.userinfo:
        raise UnsafeTarget("must not contain a user name or password (put a token in the path or query)")
    return WebhookTarget(url.copy_with(fragment=None))


def _address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone ("%eth0") is not part of it
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def resolve(target: WebhookTarget) -> list[IPAddress]:
    """Every address the host resolves to (blocking: DNS; run it in a thread)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableTarget(f"has a host that does not resolve ({target.host}: {exc})") from None
    addresses = list(dict.fromkeys(_address(str(info[4][0])) for info in infos))
    if not addresses:
        raise UnresolvableTarget(f"has a host with no address ({target.host})")
    return addresses


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 one leads to (NAT64, 6to4, Teredo): a route to them is a route inward."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)] if address in NAT64 else []
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.append(address.teredo[1])
    return found


def allowed(address: IPAddress, allow_private: bool) -> bool:
    """A public unicast address; any other (loopback, private, link-local, ...) only if allowed."""
    if address.is_multicast or address.is_unspecified:
        return False
    if allow_private:
        return True
    return address.is_global and all(allowed(inner, False) for inner in _embedded_ipv4(address))


def checked_addresses(target: WebhookTarget, allow_private: bool) -> list[IPAddress]:
    """The addresses to call, in the resolver's order, once every one is allowed (blocking: DNS).

    Every one, not just the first: a host with a public and a private address is refused, since
    which one gets called is not settled until delivery."""
    addresses = resolve(target)
    refused = [a for a in addresses if not allowed(a, allow_private)]
    if refused:
        raise UnsafeTarget(
            f"resolves to {refused[0]}, which is not a public address; this server only sends "
            "webhooks to public addresses (ATELIER_WEBHOOK_ALLOW_PRIVATE)"
        )
    return addresses
