"""fal's webhook check (Ed25519 over request id, user id, timestamp and the body's sha256) and its JWKS cache."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from Crypto.PublicKey.ECC import EccKey
from Crypto.Signature import eddsa

from infra.webhooks.fal import (
    MAX_JWKS_TTL_S,
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    USER_ID_HEADER,
    FalJwksInvalid,
    FalKeys,
    FalKeysUnavailable,
    FalWebhookRejected,
    jwks_document,
    parse_jwks,
    sign_fal_webhook,
    signed_message,
    verify_fal_webhook,
)

NOW = 1_790_000_000
JWKS = "https://jwks.test.invalid/.well-known/jwks.json"  # never reached: every client here is a MockTransport
KEY = eddsa.import_private_key(bytes(range(32)))
OTHER = eddsa.import_private_key(bytes(range(100, 132)))
REQUEST_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
BODY = json.dumps(
    {
        "request_id": REQUEST_ID,
        "gateway_request_id": REQUEST_ID,
        "status": "OK",
        "payload": {"images": [{"url": "https://v3.fal.media/files/x.png", "width": 1024, "height": 1024}], "seed": 7},
    }
).encode()


def signed(body: bytes = BODY, *, key: EccKey = KEY, request_id: str = REQUEST_ID, at: int = NOW) -> dict[str, str]:
    return sign_fal_webhook(key, request_id=request_id, user_id="user-1", timestamp=at, body=body)


def public(key: EccKey) -> EccKey:
    return key.public_key()


def secrets_of(*keys: EccKey) -> list[str]:
    """Every form of key material an error message must never show."""
    forms = []
    for key in keys:
        seed = key.seed if key.has_private() else b""
        raw = key.public_key().export_key(format="raw")
        for data in (seed, raw):
            if data:
                forms += [
                    data.hex(),
                    base64.urlsafe_b64encode(data).rstrip(b"=").decode(),
                    base64.b64encode(data).decode(),
                ]
    return forms


# --- verify_fal_webhook -----------------------------------------------------------------------------


def test_a_good_signature_gives_the_delivery() -> None:
    delivery = verify_fal_webhook(signed(), BODY, [public(KEY)], now=NOW + 5)
    assert (delivery.request_id, delivery.user_id, delivery.timestamp, delivery.status) == (
        REQUEST_ID,
        "user-1",
        NOW,
        "OK",
    )
    assert delivery.payload is not None
    assert delivery.payload["seed"] == 7
    assert delivery.error is None
    assert delivery.gateway_request_id == REQUEST_ID
    assert delivery.body == json.loads(BODY)


def test_headers_are_read_in_any_case_and_any_listed_key_may_match() -> None:
    headers = {name.lower(): value for name, value in signed().items()}
    assert verify_fal_webhook(headers, BODY, [public(OTHER), public(KEY)], now=NOW).request_id == REQUEST_ID
    upper = {name.upper(): value for name, value in signed().items()}
    assert verify_fal_webhook(upper, BODY, [public(KEY)], now=NOW).status == "OK"


def test_an_error_delivery_carries_fals_error_and_the_error_body() -> None:
    body = json.dumps(
        {
            "request_id": REQUEST_ID,
            "gateway_request_id": REQUEST_ID,
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {
                "detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]
            },
        }
    ).encode()
    delivery = verify_fal_webhook(signed(body), body, [public(KEY)], now=NOW)
    assert (delivery.status, delivery.error) == ("ERROR", "Invalid status code: 422")
    assert delivery.payload is not None
    assert delivery.payload["detail"][0]["msg"] == "field required"
    unserializable = json.dumps(
        {"request_id": REQUEST_ID, "status": "OK", "payload": None, "payload_error": "not JSON serializable"}
    ).encode()
    delivery = verify_fal_webhook(signed(unserializable), unserializable, [public(KEY)], now=NOW)
    assert (delivery.payload, delivery.payload_error) == (None, "not JSON serializable")


def test_a_signature_by_another_key_is_refused() -> None:
    with pytest.raises(FalWebhookRejected, match="matches none of fal's 1 public key") as refused:
        verify_fal_webhook(signed(key=OTHER), BODY, [public(KEY)], now=NOW)
    assert refused.value.reason == "no_key_matched"


@pytest.mark.parametrize(
    "tampered",
    [
        BODY.replace(b'"OK"', b'"ERROR"'),
        BODY + b" ",
        BODY.replace(b"x.png", b"y.png"),
    ],
)
def test_a_changed_body_is_refused(tampered: bytes) -> None:
    with pytest.raises(FalWebhookRejected, match="the body or a signed header changed"):
        verify_fal_webhook(signed(), tampered, [public(KEY)], now=NOW)


@pytest.mark.parametrize("header", [REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER])
def test_a_changed_signed_header_is_refused(header: str) -> None:
    headers = {**signed(), header: "1790000001" if header == TIMESTAMP_HEADER else "someone-else"}
    with pytest.raises(FalWebhookRejected, match="matches none"):
        verify_fal_webhook(headers, BODY, [public(KEY)], now=NOW)


@pytest.mark.parametrize("header", [REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_each_missing_header_is_named(header: str) -> None:
    headers = {name: value for name, value in signed().items() if name != header}
    with pytest.raises(FalWebhookRejected, match=f"missing {header} header") as refused:
        verify_fal_webhook(headers, BODY, [public(KEY)], now=NOW)
    assert refused.value.reason == "missing_header"
    blank = {**signed(), header: "  "}
    with pytest.raises(FalWebhookRejected, match=f"missing {header}"):
        verify_fal_webhook(blank, BODY, [public(KEY)], now=NOW)


def test_no_header_at_all_names_all_four() -> None:
    with pytest.raises(
        FalWebhookRejected, match=r"missing X-Fal-Webhook-Request-Id, .*-User-Id, .*-Timestamp, .*-Signature header"
    ):
        verify_fal_webhook({"content-type": "application/json"}, BODY, [public(KEY)], now=NOW)


@pytest.mark.parametrize(("sent_at", "words"), [(NOW - 301, "301 s from now"), (NOW + 301, "-301 s from now")])
def test_a_stale_or_future_timestamp_is_refused_even_when_well_signed(sent_at: int, words: str) -> None:
    with pytest.raises(FalWebhookRejected, match=f"{words}, outside the 300 s tolerance") as refused:
        verify_fal_webhook(signed(at=sent_at), BODY, [public(KEY)], now=NOW)
    assert refused.value.reason == "stale"
    assert verify_fal_webhook(signed(at=NOW - 300), BODY, [public(KEY)], now=NOW).timestamp == NOW - 300
    assert verify_fal_webhook(signed(at=sent_at), BODY, [public(KEY)], now=NOW, tolerance_s=400).timestamp == sent_at


def test_a_timestamp_that_is_not_unix_seconds_is_refused() -> None:
    with pytest.raises(FalWebhookRejected, match="is not unix seconds"):
        verify_fal_webhook({**signed(), TIMESTAMP_HEADER: "2026-11-24T12:00:00Z"}, BODY, [public(KEY)], now=NOW)


@pytest.mark.parametrize(("signature", "words"), [("zz" * 64, "is not hex"), ("ab" * 32, "is 32 bytes")])
def test_a_signature_that_is_not_64_hex_bytes_is_refused(signature: str, words: str) -> None:
    with pytest.raises(FalWebhookRejected, match=words) as refused:
        verify_fal_webhook({**signed(), SIGNATURE_HEADER: signature}, BODY, [public(KEY)], now=NOW)
    assert refused.value.reason == "bad_signature"


def test_no_keys_at_all_refuses() -> None:
    with pytest.raises(FalWebhookRejected, match="no fal public key"):
        verify_fal_webhook(signed(), BODY, [], now=NOW)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "is not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"request_id": "another", "status": "OK", "payload": {}}).encode(), "request_id is not the signed"),
        (json.dumps({"status": "OK", "payload": {}}).encode(), "request_id is not the signed"),
        (json.dumps({"request_id": REQUEST_ID, "status": "DONE"}).encode(), "neither 'OK' nor 'ERROR'"),
        (json.dumps({"request_id": REQUEST_ID, "status": "OK", "payload": [1]}).encode(), "payload is neither"),
    ],
)
def test_a_signed_body_fal_does_not_send_is_refused(body: bytes, words: str) -> None:
    with pytest.raises(FalWebhookRejected, match=words) as refused:
        verify_fal_webhook(signed(body), body, [public(KEY)], now=NOW)
    assert refused.value.reason == "bad_body"


def test_the_signed_message_is_the_documented_one() -> None:
    message = signed_message("req", "user", "1700000000", b"{}")
    assert message == b"req\nuser\n1700000000\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    headers = signed()
    signature = bytes.fromhex(headers[SIGNATURE_HEADER])
    eddsa.new(public(KEY), "rfc8032").verify(signed_message(REQUEST_ID, "user-1", str(NOW), BODY), signature)


# --- JWKS --------------------------------------------------------------------------------------------


def test_a_jwks_keeps_only_its_ed25519_keys() -> None:
    document = {
        "keys": [
            {"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": "rsa"},
            {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9"},
            {"kty": "OKP", "crv": "X25519", "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"},
            {"kty": "OKP", "crv": "Ed25519", "x": "short"},
            "not a key",
            *jwks_document(KEY)["keys"],
        ]
    }
    keys = parse_jwks(document)
    assert len(keys) == 1
    assert verify_fal_webhook(signed(), BODY, keys, now=NOW).request_id == REQUEST_ID


@pytest.mark.parametrize(
    "document",
    [
        {"keys": [{"kty": "RSA", "n": "sXch", "e": "AQAB"}]},
        {"keys": []},
        {"not": "a jwks"},
        ["keys"],
        None,
    ],
)
def test_a_jwks_without_an_ed25519_key_is_refused_clearly(document: object) -> None:
    with pytest.raises(FalJwksInvalid, match="fal's JWKS"):
        parse_jwks(document)


def test_a_jwks_document_publishes_public_halves_only() -> None:
    document = jwks_document(KEY, OTHER)
    text = json.dumps(document)
    assert all(entry["kty"] == "OKP" and entry["crv"] == "Ed25519" for entry in document["keys"])
    assert KEY.seed.hex() not in text
    assert base64.urlsafe_b64encode(KEY.seed).rstrip(b"=").decode() not in text
    assert len(parse_jwks(document)) == 2


# --- FalKeys -----------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Jwks:
    """fal's JWKS endpoint, scripted: what it publishes now, or how it fails; counts its fetches."""

    def __init__(self, *keys: EccKey) -> None:
        self.keys = list(keys)
        self.failure: int | Exception | bytes | None = None
        self.fetches = 0
        self.redirected = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url == httpx.URL(JWKS)
        self.fetches += 1
        if isinstance(self.failure, Exception):
            raise self.failure
        if isinstance(self.failure, int):
            headers = {"location": "https://elsewhere.invalid/jwks.json"} if self.failure in (301, 302) else None
            return httpx.Response(self.failure, headers=headers, text="no")
        if isinstance(self.failure, bytes):
            return httpx.Response(200, content=self.failure)
        return httpx.Response(200, json=jwks_document(*self.keys))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


async def test_fal_keys_fetch_once_and_verify_from_the_cache() -> None:
    jwks, clock = Jwks(KEY), Clock()
    async with jwks.client() as client:
        keys = FalKeys(client, url=JWKS, clock=clock)
        for _ in range(3):
            assert (await keys.verify(signed(), BODY, now=NOW)).request_id == REQUEST_ID
        assert jwks.fetches == 1
        assert "FalKeys(url=" in repr(keys)
        assert "1 key(s)" in repr(keys)


async def test_fal_keys_fetch_again_when_the_ttl_runs_out_and_never_cache_past_a_day() -> None:
    jwks, clock = Jwks(KEY), Clock()
    async with jwks.client() as client:
        keys = FalKeys(client, url=JWKS, ttl_s=600, clock=clock)
        await keys.keys()
        clock.now += 599
        await keys.keys()
        assert jwks.fetches == 1
        clock.now += 2
        await keys.keys()
        assert jwks.fetches == 2
        assert FalKeys(client, url=JWKS, ttl_s=7 * 86_400).ttl_s == MAX_JWKS_TTL_S


async def test_a_rotated_key_is_fetched_once_and_not_again_within_a_minute() -> None:
    jwks, clock = Jwks(KEY), Clock()
    async with jwks.client() as client:
        keys = FalKeys(client, url=JWKS, clock=clock)
        await keys.keys()
        clock.now += 120
        jwks.keys = [KEY, OTHER]  # fal rotates: the new key signs from now on
        assert (await keys.verify(signed(key=OTHER), BODY, now=NOW)).request_id == REQUEST_ID
        assert jwks.fetches == 2
        assert (await keys.verify(signed(key=OTHER), BODY, now=NOW)).request_id == REQUEST_ID
        assert jwks.fetches == 2  # the new key is cached now

        forged = eddsa.import_private_key(bytes(range(200, 232)))
        clock.now += 120
        with pytest.raises(FalWebhookRejected, match="matches none of fal's 2 public key"):
            await keys.verify(signed(key=forged), BODY, now=NOW)
        assert jwks.fetches == 3  # one refetch: the signature matched no key
        for _ in range(5):
            clock.now += 10
            with pytest.raises(FalWebhookRejected, match="matches none"):
                await keys.verify(signed(key=forged), BODY, now=NOW)
        assert jwks.fetches == 3  # not again within 60 s, however many forgeries arrive
        clock.now += 11
        with pytest.raises(FalWebhookRejected, match="matches none"):
            await keys.verify(signed(key=forged), BODY, now=NOW)
        assert jwks.fetches == 4


async def test_other_refusals_never_refetch() -> None:
    jwks, clock = Jwks(KEY), Clock()
    async with jwks.client() as client:
        keys = FalKeys(client, url=JWKS, clock=clock)
        clock.now += 3600
        with pytest.raises(FalWebhookRejected, match="tolerance"):
            await keys.verify(signed(at=NOW - 3600), BODY, now=NOW)
        with pytest.raises(FalWebhookRejected, match="missing"):
            await keys.verify({}, BODY, now=NOW)
        body = json.dumps({"request_id": "x", "status": "OK", "payload": None}).encode()
        with pytest.raises(FalWebhookRejected, match="request_id"):
            await keys.verify(signed(body), body, now=NOW)
        assert jwks.fetches == 1


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (httpx.ConnectError("connection refused"), "could not be fetched .*ConnectError"),
        (httpx.ReadTimeout("timed out"), "could not be fetched .*ReadTimeout"),
        (503, "answered HTTP 503, not 200"),
        (302, "answered HTTP 302, not 200"),  # a redirect is never followed
        (b"<html>not json</html>", "not usable: not JSON"),
        (json.dumps({"keys": [{"kty": "RSA"}]}).encode(), "not usable: fal's JWKS holds no usable Ed25519"),
        (b"{" + b" " * 70_000 + b"}", "over 65536 bytes"),
    ],
)
async def test_a_failed_fetch_is_fal_keys_unavailable(failure: int | Exception | bytes, words: str) -> None:
    jwks, clock = Jwks(KEY), Clock()
    jwks.failure = failure
    async with jwks.client() as client:
        keys = FalKeys(client, url=JWKS, clock=clock)
        with pytest.raises(FalKeysUnavailable, match=words):
            await keys.verify(signed(), BODY, now=NOW)
        with pytest.raises(FalKeysUnavailable):  # nothing cached: the next delivery tries again
            await keys.keys()
        assert jwks.fetches == 2
        jwks.failure = None
        assert (await keys.verify(signed(), BODY, now=NOW)).request_id == REQUEST_ID


async def test_expired_keys_are_not_used_when_the_fetch_fails() -> None:
    jwks, clock = Jwks(KEY), Clock()
    async with jwks.client() as client:
        keys = FalKeys(client, url=JWKS, ttl_s=60, clock=clock)
        await keys.verify(signed(), BODY, now=NOW)
        clock.now += 61
        jwks.failure = 500
        with pytest.raises(FalKeysUnavailable, match="HTTP 500"):
            await keys.verify(signed(), BODY, now=NOW)


async def test_a_failed_rotation_fetch_is_unavailable_not_a_refusal() -> None:
    jwks, clock = Jwks(KEY), Clock()
    async with jwks.client() as client:
        keys = FalKeys(client, url=JWKS, clock=clock)
        await keys.keys()
        clock.now += 61
        jwks.failure = httpx.ConnectError("down")
        with pytest.raises(FalKeysUnavailable):  # perhaps a rotated key: let fal deliver again later
            await keys.verify(signed(key=OTHER), BODY, now=NOW)
        clock.now += 1
        with pytest.raises(FalWebhookRejected, match="matches none"):  # tried a second ago: no fetch now
            await keys.verify(signed(key=OTHER), BODY, now=NOW)
        assert jwks.fetches == 2


async def test_no_key_material_in_any_error_message() -> None:
    messages: list[str] = []
    for call in (
        lambda: verify_fal_webhook(signed(key=OTHER), BODY, [public(KEY)], now=NOW),
        lambda: verify_fal_webhook(signed(), BODY + b"x", [public(KEY), public(OTHER)], now=NOW),
        lambda: verify_fal_webhook(signed(at=NOW - 999), BODY, [public(KEY)], now=NOW),
        lambda: verify_fal_webhook({**signed(), SIGNATURE_HEADER: "00"}, BODY, [public(KEY)], now=NOW),
        lambda: parse_jwks({"keys": [{"kty": "OKP", "crv": "X25519", "x": jwks_document(KEY)["keys"][0]["x"]}]}),
    ):
        with pytest.raises(ValueError, match=r"(?i)fal") as raised:  # FalWebhookRejected or FalJwksInvalid
            call()
        messages.append(str(raised.value) + repr(raised.value))
    jwks = Jwks(KEY)
    jwks.failure = json.dumps({"keys": [{**jwks_document(KEY)["keys"][0], "crv": "X25519"}]}).encode()
    async with jwks.client() as client:
        with pytest.raises(FalKeysUnavailable) as unavailable:
            await FalKeys(client, url=JWKS).keys()
        messages.append(str(unavailable.value) + repr(unavailable.value))
        jwks.failure = None
        keys = FalKeys(client, url=JWKS)
        await keys.keys()
        messages.append(repr(keys))
    assert len(messages) == 7
    for message in messages:
        for secret in secrets_of(KEY, OTHER):
            assert secret not in message


async def test_a_delivery_that_cannot_be_fals_never_makes_us_fetch_fals_keys() -> None:
    jwks = Jwks(KEY)
    async with jwks.client() as client:
        keys = FalKeys(client, url=JWKS, clock=Clock())
        unsigned = {name: value for name, value in signed().items() if "signature" not in name.lower()}
        for headers, now in ((unsigned, NOW), ({}, NOW), (signed(), NOW + 3600)):
            with pytest.raises(FalWebhookRejected):
                await keys.verify(headers, BODY, now=now)
    assert jwks.fetches == 0
