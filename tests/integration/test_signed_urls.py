"""Signed image links: work without the API key until they expire, for that one image of that one tenant."""

from __future__ import annotations

import hashlib

import pytest

from infra.sample import sample_reference_png
from infra.stack import StackEndpoints
from services.gateway.signed_urls import UrlSigner
from tests.integration.test_api_keys import running_gateway

pytestmark = pytest.mark.integration


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_link_names_one_image_of_one_tenant_until_it_expires() -> None:
    clock = Clock()
    signer = UrlSigner(b"k" * 32, ttl_s=60, clock=clock)
    sha = "a" * 64
    url = signer.image_url("studio", sha)
    path, query = url.split("?")
    params = dict(item.split("=") for item in query.split("&"))
    expires, signature = int(params["expires"]), params["signature"]
    assert path == f"/v1/signed/images/studio/{sha}"
    assert signer.check("studio", sha, expires, signature) is None
    assert "does not match" in (signer.check("other", sha, expires, signature) or "")
    assert "does not match" in (signer.check("studio", "b" * 64, expires, signature) or "")
    assert "does not match" in (signer.check("studio", sha, expires + 3600, signature) or "")  # a longer life
    assert "does not match" in (UrlSigner(b"x" * 32, 60, clock).check("studio", sha, expires, signature) or "")
    clock.now += 61
    assert "expired" in (signer.check("studio", sha, expires, signature) or "")
    with pytest.raises(ValueError, match="16 bytes"):
        UrlSigner(b"short", 60)


def test_add_urls_marks_images_only() -> None:
    signer = UrlSigner(b"k" * 32, ttl_s=60)
    document = {
        "references": [{"sha256": "a" * 64, "content_type": "image/png"}],
        "identity": {"weights": {"sha256": "b" * 64, "content_type": "application/octet-stream"}},
    }
    marked = signer.add_urls("studio", document)
    assert marked["references"][0]["url"].startswith("/v1/signed/images/studio/" + "a" * 64)
    assert "url" not in marked["identity"]["weights"]


async def test_a_signed_link_serves_the_image_without_a_key_and_refuses_changes(
    stack_endpoints: StackEndpoints,
) -> None:
    image = sample_reference_png()
    async with running_gateway(stack_endpoints, url_signing_key="s" * 32) as gateway:
        stored = await gateway.store.put_image("studio", image, "image/png")
        assert stored.sha256 == hashlib.sha256(image).hexdigest()
        signer = UrlSigner(b"s" * 32, ttl_s=60)  # the same key as the gateway's: replicas share it
        url = signer.image_url("studio", stored.sha256)
        anonymous = gateway.client  # sends no API key
        served = await anonymous.get(url)
        changed = await anonymous.get(url.replace("/studio/", "/intruder/"))
        unsigned = await anonymous.get(f"/v1/images/{stored.sha256}")
    assert served.status_code == 200
    assert served.content == image
    assert served.headers["content-type"] == "image/png"
    assert changed.status_code == 403
    assert unsigned.status_code == 401  # the plain route still needs a key
