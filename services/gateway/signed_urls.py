"""Short-lived signed image URLs: an `<img src>` or a download link that works without the API key.

`GET /v1/characters/{id}` and `GET /v1/shots/{id}` give each image a `url`:
`/v1/signed/images/<tenant>/<sha256>?expires=<unix s>&signature=<hex>`, where the signature is
HMAC-SHA256 over `tenant:sha256:expires` under the gateway's URL-signing key. It is refused (403) once
`expires` has passed or if any part was changed, so a leaked link opens one image for minutes, never
another image or another tenant's. Replicas must share `URL_SIGNING_KEY`; unset, each gateway process
draws its own at start and its links die with it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from infra.objects import image_key

if TYPE_CHECKING:
    from services.gateway.deps import Gateway

router = APIRouter(prefix="/v1/signed", tags=["images"])


class UrlSigner:
    def __init__(self, key: bytes, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("the URL-signing key must be at least 16 bytes")
        self._key = key
        self.ttl_s = ttl_s
        self._clock = clock

    def __repr__(self) -> str:
        return f"UrlSigner(ttl_s={self.ttl_s})"

    def _signature(self, tenant: str, sha256: str, expires: int) -> str:
        return hmac.new(self._key, f"{tenant}:{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()

    def image_url(self, tenant: str, sha256: str) -> str:
        expires = int(self._clock() + self.ttl_s)
        signature = self._signature(tenant, sha256, expires)
        return f"/v1/signed/images/{quote(tenant, safe='')}/{sha256}?expires={expires}&signature={signature}"

    def check(self, tenant: str, sha256: str, expires: int, signature: str) -> str | None:
        """None when the link is good, else why it is refused."""
        expected = self._signature(tenant, sha256, expires).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            return "the link's signature does not match: it was changed, or signed by another gateway"
        if expires < self._clock():
            return "the link has expired: fetch the character or shot again for a fresh one"
        return None

    def add_urls(self, tenant: str, document: Any) -> Any:
        """Every image dict (one with `sha256` and `content_type` image/*) in `document` gets its `url`."""
        if isinstance(document, list):
            return [self.add_urls(tenant, item) for item in document]
        if not isinstance(document, dict):
            return document
        result = {key: self.add_urls(tenant, value) for key, value in document.items()}
        content_type = result.get("content_type")
        if (
            isinstance(result.get("sha256"), str)
            and isinstance(content_type, str)
            and content_type.startswith("image/")
        ):
            result["url"] = self.image_url(tenant, result["sha256"])
        return result


@router.get("/images/{tenant}/{sha256}", response_class=Response)
async def signed_image(
    request: Request,
    tenant: Annotated[str, Path(max_length=64)],
    sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")],
    expires: Annotated[int, Query(ge=0, le=2**62, description="Unix seconds after which the link is refused.")],
    signature: Annotated[str, Query(pattern=r"^[0-9a-f]{64}$")],
) -> Response:
    """An image by a signed link (no API key): see `url` on each image in character and shot responses."""
    gateway: Gateway = request.app.state.gateway
    refused = gateway.signer.check(tenant, sha256, expires, signature)
    if refused is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, refused)
    found = await gateway.store.get_with_type(image_key(tenant, sha256))
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image {sha256}")
    data, content_type = found
    max_age = max(0, int(expires - time.time()))
    return Response(data, media_type=content_type, headers={"Cache-Control": f"private, max-age={max_age}"})
