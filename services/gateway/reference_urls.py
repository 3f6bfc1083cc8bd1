"""References given by URL: fetched by the gateway, then checked exactly like uploads.

Only http(s) URLs whose host resolves to public addresses are fetched, and every redirect is checked again
(`infra.safe_fetch`): a URL naming loopback, a private network, a link-local or the cloud metadata
address is refused before anything connects. Each fetch is bounded in bytes (the upload limit) and in
time; nothing is stored unless every reference, fetched or uploaded, is valid.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Literal

import httpx

from infra.safe_fetch import FetchFailed, FetchRefused, Resolve, fetch_to_file, system_resolve

MAX_URL_LENGTH = 2048


class ReferenceUrlProblem(ValueError):
    """A reference URL that could not be used; `status` is the HTTP status the gateway answers with."""

    def __init__(self, url: str, reason: Literal["url_refused", "url_unreachable"], message: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason
        self.status = 422 if reason == "url_refused" else 502


@dataclass
class ReferenceFetcher:
    client: httpx.AsyncClient
    timeout_s: float = 20.0
    resolve: Resolve = system_resolve

    async def fetch(self, url: str, max_bytes: int) -> bytes:
        shown = url if len(url) <= 200 else url[:197] + "..."
        if len(url) > MAX_URL_LENGTH:
            raise ReferenceUrlProblem(shown, "url_refused", f"reference URL is over {MAX_URL_LENGTH} characters")
        sink = io.BytesIO()
        try:
            async with asyncio.timeout(self.timeout_s):
                await fetch_to_file(self.client, url, sink, max_bytes=max_bytes, resolve=self.resolve)
        except FetchRefused as refused:
            raise ReferenceUrlProblem(
                shown, "url_refused", f"reference URL {shown} cannot be used: {refused}; upload the file instead"
            ) from None
        except FetchFailed as failed:
            raise ReferenceUrlProblem(
                shown, "url_unreachable", f"reference URL {shown} could not be fetched: {failed}; try again later"
            ) from None
        except TimeoutError:
            raise ReferenceUrlProblem(
                shown, "url_unreachable", f"reference URL {shown} took over {self.timeout_s:.0f} s to fetch"
            ) from None
        return sink.getvalue()


def reference_fetch_client() -> httpx.AsyncClient:
    """No credentials, no cookies kept between fetches, redirects followed by `fetch_to_file` (each checked)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        follow_redirects=False,
        headers={"User-Agent": "likeness-reference-fetch/0.1", "Accept": "image/*"},
    )
