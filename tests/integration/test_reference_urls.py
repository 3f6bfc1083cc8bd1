"""References given by URL: fetched by the gateway from public addresses only, then checked like uploads.

No request leaves the machine: the gateway's fetcher gets a client on httpx.MockTransport (it records
every request that would have connected) and a fake DNS answer per host name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from infra.objects import ObjectStore, image_key
from infra.stack import StackEndpoints
from services.gateway.app import create_app
from services.gateway.reference_urls import ReferenceFetcher
from services.gateway.settings import GatewaySettings
from tests.integration.test_provider_webhooks import infra_settings

pytestmark = pytest.mark.integration

DNS = {
    "photos.example": ["93.184.215.14"],  # public
    "intranet.example": ["10.20.30.40"],  # private
    "rebind.example": ["93.184.215.15", "127.0.0.1"],  # one public, one loopback: refused
}


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (seed % 256, 80, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Gateway:
    client: httpx.AsyncClient
    store: ObjectStore
    requested: list[str]
    served: dict[str, httpx.Response]


@pytest.fixture
async def gateway(stack_endpoints: StackEndpoints) -> AsyncIterator[Gateway]:
    key = secrets.token_hex(12)
    app = create_app(infra_settings(stack_endpoints), GatewaySettings(api_keys=SecretStr(f"studio:{key}")))
    requested: list[str] = []
    served: dict[str, httpx.Response] = {}

    def remote(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return served.get(str(request.url), httpx.Response(404))

    async def resolve(host: str, port: int) -> list[str]:
        return DNS[host]

    async with app.router.lifespan_context(app):
        fetch_client = httpx.AsyncClient(transport=httpx.MockTransport(remote))
        state = app.state.gateway
        app.state.gateway = dataclasses.replace(state, references=ReferenceFetcher(fetch_client, resolve=resolve))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers={"X-API-Key": key}) as c:
            yield Gateway(c, state.store, requested, served)
        await fetch_client.aclose()


async def create(gateway: Gateway, urls: list[str], files: list[tuple[str, bytes]] | None = None) -> httpx.Response:
    return await gateway.client.post(
        "/v1/characters",
        data={"name": "Sarah", "reference_urls": urls},
        files=[("references", (name, data, "image/png")) for name, data in files or []] or None,
    )


async def test_a_public_url_is_fetched_and_stored_like_an_upload(gateway: Gateway) -> None:
    image = png(secrets.randbelow(10_000))
    gateway.served["https://photos.example/sarah.png"] = httpx.Response(200, content=image)

    response = await create(gateway, ["https://photos.example/sarah.png"])

    assert response.status_code == 202, response.text
    assert await gateway.store.get(image_key("studio", hashlib.sha256(image).hexdigest())) == image


@pytest.mark.parametrize(
    "url",
    [
        "http://intranet.example/secret.png",
        "http://rebind.example/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8080/x.png",
        "http://[::1]/x.png",
        "file:///etc/passwd",
        "ftp://photos.example/x.png",
    ],
)
async def test_urls_that_reach_private_addresses_are_refused_before_anything_connects(
    gateway: Gateway, url: str
) -> None:
    upload = png(secrets.randbelow(10_000))
    response = await create(gateway, [url], files=[("ok.png", upload)])

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["reason"] == "url_refused"
    assert "upload the file instead" in detail["message"]
    assert gateway.requested == []  # nothing connected anywhere
    # nothing else of the request was stored either: the valid upload beside the bad URL is not kept
    assert not await gateway.store.exists(image_key("studio", hashlib.sha256(upload).hexdigest()))


async def test_a_redirect_to_a_private_address_is_refused_without_following_it(gateway: Gateway) -> None:
    gateway.served["https://photos.example/moved.png"] = httpx.Response(
        302, headers={"Location": "http://intranet.example/secret.png"}
    )
    response = await create(gateway, ["https://photos.example/moved.png"])
    assert response.status_code == 422
    assert "intranet.example" in response.json()["detail"]["message"]
    assert gateway.requested == ["https://photos.example/moved.png"]


async def test_an_unreachable_url_and_a_url_that_is_no_image_say_what_to_do(gateway: Gateway) -> None:
    gateway.served["https://photos.example/down.png"] = httpx.Response(503)
    gateway.served["https://photos.example/page.html"] = httpx.Response(200, content=b"<html>not a photo</html>")

    down = await create(gateway, ["https://photos.example/down.png"])
    page = await create(gateway, ["https://photos.example/page.html"])

    assert down.status_code == 502
    assert down.json()["detail"]["reason"] == "url_unreachable"
    assert "try again later" in down.json()["detail"]["message"]
    assert page.status_code == 415  # checked exactly like an upload
    assert page.json()["detail"]["file"] == "https://photos.example/page.html"


async def test_more_than_twenty_references_counting_urls_and_files_is_refused(gateway: Gateway) -> None:
    urls = [f"https://photos.example/{i}.png" for i in range(15)]
    files = [(f"{i}.png", png(i)) for i in range(6)]
    response = await create(gateway, urls, files)
    assert response.status_code == 422
    assert "files and URLs together" in response.json()["detail"]
    assert gateway.requested == []
