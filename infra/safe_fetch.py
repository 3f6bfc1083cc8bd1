"""Fetching a URL someone else gave us (a provider's output file), without letting it reach our own network.

A URL is fetched only if it is http(s) and every address its host resolves to is public (not loopback,
private, link-local, the cloud metadata address, multicast or reserved), checked again on every redirect
(at most `max_redirects`), unless its origin is one the caller trusts (a provider's own API origin, which
is a loopback fake in tests). The body is streamed into a file with a size limit while its sha256 is
computed. No credentials are sent: the client given here carries none.

The check resolves the name and then connects by name, so a resolver that answers differently the second
time (DNS rebinding) is not stopped here; a deployment that needs that guarantee fetches through an
egress proxy.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import BinaryIO

import httpx

Resolve = Callable[[str, int], Awaitable[list[str]]]
Progress = Callable[[int], Awaitable[None]]

_CHUNK = 1024 * 1024


class FetchRefused(Exception):
    """Fetching cannot succeed as asked (a private address, a 4xx, too large): do not retry."""


class FetchFailed(Exception):
    """A failure that may pass (a 5xx, a 429, a time-out, a dropped connection): try again later."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Fetched:
    sha256: str
    size_bytes: int
    content_type: str
    url: str  # after redirects


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def parse_url(url: str, *, base: httpx.URL | None = None) -> httpx.URL:
    """The URL (relative to `base`, for a redirect's Location), or FetchRefused naming what is wrong with it."""
    try:
        return base.join(url) if base is not None else httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as error:
        raise FetchRefused(f"not a usable URL: {error}") from None


def origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}".lower()


async def check_url(url: httpx.URL, *, resolve: Resolve, trusted_origins: Collection[str] = ()) -> None:
    """Raise FetchRefused unless `url` is http(s) and public, or at a trusted origin."""
    if url.scheme not in ("http", "https"):
        raise FetchRefused(f"only http and https URLs are fetched, not {url.scheme!r}")
    if not url.host:
        raise FetchRefused("the URL has no host")
    if origin(url) in {entry.rstrip("/").lower() for entry in trusted_origins}:
        return
    try:
        addresses = [url.host] if _is_ip(url.host) else await resolve(url.host, url.port or _default_port(url))
    except OSError as error:
        raise FetchFailed(f"cannot resolve {url.host}: {error}") from None
    if not addresses:
        raise FetchFailed(f"{url.host} resolves to no address")
    private = [address for address in addresses if not is_public(address)]
    if private:
        raise FetchRefused(
            f"{url.host} resolves to a non-public address ({', '.join(private)}); only public addresses are fetched"
        )


async def fetch_to_file(
    client: httpx.AsyncClient,
    url: str,
    sink: BinaryIO,
    *,
    max_bytes: int,
    resolve: Resolve = system_resolve,
    trusted_origins: Collection[str] = (),
    max_redirects: int = 3,
    progress: Progress | None = None,
) -> Fetched:
    """Stream `url` into `sink`; every hop is checked by `check_url`. Raises FetchRefused or FetchFailed."""
    current = parse_url(url)
    for _ in range(max_redirects + 1):
        await check_url(current, resolve=resolve, trusted_origins=trusted_origins)
        try:
            async with client.stream("GET", current, follow_redirects=False) as response:
                if response.is_redirect and "location" in response.headers:
                    current = parse_url(response.headers["location"], base=current)
                    continue
                _raise_for(response, current)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise FetchRefused(f"{current.host} offers {int(declared)} bytes, over the {max_bytes}-byte limit")
                digest, size = hashlib.sha256(), 0
                async for chunk in response.aiter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchRefused(f"the file from {current.host} is over the {max_bytes}-byte limit")
                    digest.update(chunk)
                    await asyncio.to_thread(sink.write, chunk)
                    if progress is not None:
                        await progress(size)
                if size == 0:
                    raise FetchFailed(f"{current.host} sent an empty file")
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                return Fetched(digest.hexdigest(), size, content_type or "application/octet-stream", str(current))
        except httpx.TimeoutException:
            raise FetchFailed(f"timed out fetching from {current.host}") from None
        except httpx.TransportError as error:
            raise FetchFailed(f"could not fetch from {current.host}: {type(error).__name__}") from None
    raise FetchRefused(f"more than {max_redirects} redirects")


def _raise_for(response: httpx.Response, url: httpx.URL) -> None:
    if response.status_code == 200:
        return
    where = f"{url.host} answered {response.status_code}"
    if response.status_code == 429 or response.status_code >= 500:
        after = response.headers.get("retry-after", "")
        raise FetchFailed(where, retry_after_s=float(after) if after.isdigit() else None)
    raise FetchRefused(f"{where} (an expired or wrong link?)")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80
