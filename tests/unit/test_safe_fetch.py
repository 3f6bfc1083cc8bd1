"""infra.safe_fetch: only public addresses (or a trusted origin), size limits, every redirect checked.

No request leaves the process: the client runs on httpx.MockTransport, which records what would have
connected, and names resolve through a fake resolver.
"""

from __future__ import annotations

import hashlib
import io

import httpx
import pytest

from infra.safe_fetch import FetchFailed, FetchRefused, Resolve, fetch_to_file, is_public

WEIGHTS = b"weights " * 1000


def fake_dns(answers: dict[str, list[str]]) -> Resolve:
    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return resolve


class Recorder:
    def __init__(self, routes: dict[str, httpx.Response]) -> None:
        self.routes = routes
        self.requested: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requested.append(str(request.url))
        return self.routes[str(request.url)]


def client_for(recorder: Recorder) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(recorder))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # the cloud metadata address
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),  # noqa: S104 - an address checked, not bound
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:10.0.0.1", False),  # IPv4-mapped private
        ("224.0.0.1", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


async def test_a_public_file_is_streamed_with_its_digest() -> None:
    recorder = Recorder({"https://cdn.example/w.safetensors": httpx.Response(200, content=WEIGHTS)})
    sink = io.BytesIO()
    async with client_for(recorder) as client:
        fetched = await fetch_to_file(
            client,
            "https://cdn.example/w.safetensors",
            sink,
            max_bytes=len(WEIGHTS),
            resolve=fake_dns({"cdn.example": ["93.184.215.14"]}),
        )
    assert sink.getvalue() == WEIGHTS
    assert fetched.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert fetched.size_bytes == len(WEIGHTS)


@pytest.mark.parametrize(
    "answer", [["10.0.0.7"], ["169.254.169.254"], ["127.0.0.1"], ["93.184.215.14", "192.168.0.2"], ["::1"]]
)
async def test_a_name_that_resolves_to_a_private_address_is_never_connected_to(answer: list[str]) -> None:
    recorder = Recorder({})
    async with client_for(recorder) as client:
        with pytest.raises(FetchRefused, match="non-public address"):
            await fetch_to_file(
                client, "https://cdn.example/w", io.BytesIO(), max_bytes=10, resolve=fake_dns({"cdn.example": answer})
            )
    assert recorder.requested == []


async def test_literal_private_ips_and_other_schemes_are_refused_without_connecting() -> None:
    recorder = Recorder({})
    async with client_for(recorder) as client:
        for url in ("http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/x", "file:///etc/passwd"):
            with pytest.raises(FetchRefused):
                await fetch_to_file(client, url, io.BytesIO(), max_bytes=10, resolve=fake_dns({}))
    assert recorder.requested == []


async def test_the_trusted_origin_may_be_loopback_but_nothing_else_is() -> None:
    recorder = Recorder({"http://127.0.0.1:9000/files/w": httpx.Response(200, content=b"lora")})
    async with client_for(recorder) as client:
        fetched = await fetch_to_file(
            client,
            "http://127.0.0.1:9000/files/w",
            io.BytesIO(),
            max_bytes=10,
            resolve=fake_dns({}),
            trusted_origins=["http://127.0.0.1:9000/"],
        )
        assert fetched.size_bytes == 4
        with pytest.raises(FetchRefused):  # another port of the same host is not the provider
            await fetch_to_file(
                client,
                "http://127.0.0.1:9001/files/w",
                io.BytesIO(),
                max_bytes=10,
                resolve=fake_dns({}),
                trusted_origins=["http://127.0.0.1:9000"],
            )
    assert recorder.requested == ["http://127.0.0.1:9000/files/w"]


async def test_a_redirect_to_a_private_address_is_refused_before_it_is_followed() -> None:
    recorder = Recorder(
        {"https://cdn.example/w": httpx.Response(302, headers={"Location": "http://internal.example/secret"})}
    )
    dns = fake_dns({"cdn.example": ["93.184.215.14"], "internal.example": ["10.0.0.5"]})
    async with client_for(recorder) as client:
        with pytest.raises(FetchRefused, match=r"internal\.example"):
            await fetch_to_file(client, "https://cdn.example/w", io.BytesIO(), max_bytes=10, resolve=dns)
    assert recorder.requested == ["https://cdn.example/w"]


async def test_too_many_redirects_are_refused() -> None:
    loop = {"https://cdn.example/a": httpx.Response(302, headers={"Location": "/a"})}
    recorder = Recorder(loop)
    async with client_for(recorder) as client:
        with pytest.raises(FetchRefused, match="redirects"):
            await fetch_to_file(
                client,
                "https://cdn.example/a",
                io.BytesIO(),
                max_bytes=10,
                resolve=fake_dns({"cdn.example": ["93.184.215.14"]}),
                max_redirects=2,
            )
    assert len(recorder.requested) == 3


async def test_size_limits_hold_whether_or_not_the_length_is_declared() -> None:
    dns = fake_dns({"cdn.example": ["93.184.215.14"]})
    declared = Recorder({"https://cdn.example/w": httpx.Response(200, content=WEIGHTS)})
    async with client_for(declared) as client:
        with pytest.raises(FetchRefused, match="over the 100-byte limit"):
            await fetch_to_file(client, "https://cdn.example/w", io.BytesIO(), max_bytes=100, resolve=dns)

    def undeclared(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(WEIGHTS))  # no Content-Length

    sink = io.BytesIO()
    async with httpx.AsyncClient(transport=httpx.MockTransport(undeclared)) as client:
        with pytest.raises(FetchRefused, match="over the 100-byte limit"):
            await fetch_to_file(client, "https://cdn.example/w", sink, max_bytes=100, resolve=dns)


@pytest.mark.parametrize(
    ("status", "error"), [(404, FetchRefused), (403, FetchRefused), (429, FetchFailed), (503, FetchFailed)]
)
async def test_statuses_say_whether_to_try_again(status: int, error: type[Exception]) -> None:
    recorder = Recorder({"https://cdn.example/w": httpx.Response(status, headers={"Retry-After": "7"})})
    async with client_for(recorder) as client:
        with pytest.raises(error) as raised:
            await fetch_to_file(
                client,
                "https://cdn.example/w",
                io.BytesIO(),
                max_bytes=10,
                resolve=fake_dns({"cdn.example": ["93.184.215.14"]}),
            )
    if isinstance(raised.value, FetchFailed):
        assert raised.value.retry_after_s == 7.0


@pytest.mark.parametrize("url", ["\x18http://x", "http://[::1", "", "http:///nohost", "http://exa\nmple.com/"])
async def test_a_malformed_url_is_refused_with_a_reason_not_an_exception(url: str) -> None:
    recorder = Recorder({})
    async with client_for(recorder) as client:
        with pytest.raises(FetchRefused):
            await fetch_to_file(client, url, io.BytesIO(), max_bytes=10, resolve=fake_dns({}))
    assert recorder.requested == []
