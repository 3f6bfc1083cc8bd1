"""Providers' webhooks: `POST /v1/webhooks/{provider}`, checked by each provider's own scheme, then published.

Not authenticated by our API keys (a provider cannot send them): fal signs with Ed25519 (checked against
the keys fal publishes as a JWKS, cached), Replicate signs (Standard Webhooks HMAC, with a timestamp),
Astria's callback URL carries an HMAC token we put there, Leonardo sends the callback key as a bearer
token. A verified delivery becomes one `ProviderWebhookReceived` event whose `Nats-Msg-Id` is
`<provider>:<delivery id>`: JetStream drops a redelivery inside its duplicate window, and the provider
adapter's handling is idempotent beyond it.

The checks are pure functions in infra/webhooks (one module per provider), shared with the provider
adapter, which builds the callback URLs: services never import each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, SecretStr

from contracts import ProviderWebhookReceived
from contracts.envelope import EVENT_ID_NAMESPACE
from contracts.events import WEBHOOK_PAYLOAD_MAX_BYTES, WEBHOOK_TENANT
from infra.bus import relay_publisher
from infra.webhooks import astria, fal, leonardo, replicate
from services.gateway.deps import Gateway
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["webhooks"])

MAX_WEBHOOK_BYTES = 1024 * 1024


class WebhookAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    provider: str
    delivery_id: str
    job_id: str | None


class WebhookRefused(Exception):
    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    job_id: str | None
    job_kind: str | None
    job_status: str | None
    payload: dict[str, Any]


def _secret(settings: GatewaySettings, name: str, provider: str, env: str) -> SecretStr:
    value: SecretStr | None = getattr(settings, name)
    if value is None:
        raise WebhookRefused(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"{provider} webhooks are not enabled here: set {env} on the gateway"
        )
    return value


def _body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:200]


def verify_replicate(request: Request, body: bytes, settings: GatewaySettings) -> Delivery:
    secret = _secret(settings, "replicate_webhook_secret", replicate.PROVIDER_NAME, "REPLICATE_WEBHOOK_SECRET")
    try:
        payload = replicate.verify_webhook(
            secret, dict(request.headers), body, now=time.time(), tolerance_s=settings.webhook_tolerance_s
        )
    except replicate.WebhookVerificationError as refused:
        raise WebhookRefused(status.HTTP_401_UNAUTHORIZED, str(refused)) from None
    kind = "training" if "destination" in payload or "/trainings/" in str(payload.get("urls", "")) else "prediction"
    return Delivery(
        delivery_id=request.headers["webhook-id"].strip(),
        job_id=_text(payload.get("id")),
        job_kind=kind,
        job_status=_text(payload.get("status")),
        payload=payload,
    )


def verify_astria(request: Request, body: bytes, settings: GatewaySettings) -> Delivery:
    secret = _secret(settings, "astria_callback_secret", astria.PROVIDER_NAME, "ASTRIA_CALLBACK_SECRET")
    try:
        callback = astria.verify_callback(secret, request.url.query, body)
    except astria.CallbackRejected as refused:
        raise WebhookRefused(refused.status, str(refused)) from None
    payload = json.loads(body)
    if callback.tune is not None:
        job_id, state = str(callback.tune.id), "trained" if callback.tune.trained_at else "training"
    else:
        assert callback.prompt is not None
        job_id, state = str(callback.prompt.id), "done" if callback.prompt.images else "processing"
    return Delivery(_body_sha256(body), job_id, callback.kind, state, payload)


def verify_leonardo(request: Request, body: bytes, settings: GatewaySettings) -> Delivery:
    key = _secret(settings, "leonardo_webhook_key", leonardo.PROVIDER_NAME, "LEONARDO_WEBHOOK_KEY")
    if not leonardo.verify_webhook(request.headers.get("authorization"), key):
        raise WebhookRefused(status.HTTP_401_UNAUTHORIZED, "missing or wrong 'Authorization: Bearer <callback key>'")
    try:
        payload = json.loads(body)
    except ValueError:
        raise WebhookRefused(status.HTTP_400_BAD_REQUEST, "the webhook body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookRefused(status.HTTP_400_BAD_REQUEST, "the webhook body is not a JSON object")
    data = payload.get("data")
    generation = data.get("object") if isinstance(data, dict) else None
    generation = generation if isinstance(generation, dict) else {}
    return Delivery(
        _body_sha256(body),
        _text(generation.get("id")),
        _text(payload.get("object")),
        _text(generation.get("status")),
        payload,
    )


async def verify_fal(request: Request, body: bytes, keys: fal.FalKeys, settings: GatewaySettings) -> Delivery:
    """fal's Ed25519 signature over request id, user id, timestamp and the body's sha256, with fal's published keys."""
    try:
        delivery = await keys.verify(request.headers, body, now=time.time(), tolerance_s=settings.webhook_tolerance_s)
    except fal.FalKeysUnavailable as down:  # fal retries a failed delivery (10 times over 2 hours)
        raise WebhookRefused(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"fal's webhook keys are unavailable: {down}"
        ) from None
    except fal.FalWebhookRejected as refused:
        raise WebhookRefused(status.HTTP_401_UNAUTHORIZED, str(refused)) from None
    payload = delivery.payload or {}
    kind = "training" if "diffusers_lora_file" in payload else "request"
    # fal sends one webhook per request and its retries keep the request id: it is the delivery id too
    return Delivery(delivery.request_id, delivery.request_id, kind, delivery.status, delivery.body)


Verifier = Callable[[Request, bytes, GatewaySettings], Delivery]

VERIFIERS: dict[str, Verifier] = {
    replicate.PROVIDER_NAME: verify_replicate,
    astria.PROVIDER_NAME: verify_astria,
    leonardo.PROVIDER_NAME: verify_leonardo,
}


def bounded(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload if it fits the event's bound; else without its largest fields (logs, outputs) until it does."""
    kept = dict(payload)
    while kept and len(json.dumps(kept, default=str)) > WEBHOOK_PAYLOAD_MAX_BYTES:
        largest = max(kept, key=lambda name: len(json.dumps(kept[name], default=str)))
        kept.pop(largest)
        kept["_dropped"] = [*kept.get("_dropped", []), largest] if largest != "_dropped" else []
    return kept


async def read_bounded(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_WEBHOOK_BYTES:
        raise WebhookRefused(status.HTTP_413_CONTENT_TOO_LARGE, f"webhook body over {MAX_WEBHOOK_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_WEBHOOK_BYTES:
            raise WebhookRefused(status.HTTP_413_CONTENT_TOO_LARGE, f"webhook body over {MAX_WEBHOOK_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def webhook_event(provider: str, delivery: Delivery) -> ProviderWebhookReceived:
    return ProviderWebhookReceived(
        event_id=uuid.uuid5(EVENT_ID_NAMESPACE, f"webhook:{provider}:{delivery.delivery_id}"),
        correlation_id=uuid.uuid5(EVENT_ID_NAMESPACE, f"job:{provider}:{delivery.job_id or delivery.delivery_id}"),
        tenant_id=WEBHOOK_TENANT,
        provider=provider,
        delivery_id=delivery.delivery_id[:200],
        job_id=delivery.job_id,
        job_kind=delivery.job_kind,
        status=delivery.job_status,
        payload=bounded(delivery.payload),
    )


@router.post(
    "/webhooks/{provider}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookAccepted,
    responses={
        401: {"description": "Bad or missing signature, token or key, or a stale timestamp."},
        404: {"description": "No such provider."},
        413: {"description": "Body over 1 MB."},
        503: {
            "description": "The provider's webhook check is not configured (the message names the setting), "
            "or fal's keys could not be fetched (fal retries)."
        },
    },
)
async def receive_webhook(request: Request, provider: str) -> WebhookAccepted:
    """A provider's webhook. Not authenticated by Likeness API keys but by the provider's own check: the fal
    providers (Ed25519 signature, keys from fal's JWKS), `replicate-flux-lora` (Standard Webhooks signature,
    REPLICATE_WEBHOOK_SECRET), `astria-tune` (HMAC token in the callback URL's query, ASTRIA_CALLBACK_SECRET),
    `leonardo-character-reference` (bearer callback key, LEONARDO_WEBHOOK_KEY). A verified delivery is
    published once (deduplicated on the provider's delivery id) and the provider adapter checks the job it
    names at once, instead of at its next poll.
    """
    gateway: Gateway = request.app.state.gateway
    try:
        verifier = VERIFIERS.get(provider)
        if verifier is None and provider not in fal.PROVIDER_NAMES:
            known = ", ".join(sorted([*VERIFIERS, *fal.PROVIDER_NAMES]))
            raise WebhookRefused(status.HTTP_404_NOT_FOUND, f"no webhooks for {provider!r}: known are {known}")
        body = await read_bounded(request)
        if verifier is None:
            delivery = await verify_fal(request, body, gateway.fal_keys, gateway.settings)
        else:
            delivery = verifier(request, body, gateway.settings)
    except WebhookRefused as refused:
        log.warning("webhook refused: provider=%s status=%d reason=%s", provider, refused.status_code, refused.reason)
        raise HTTPException(refused.status_code, refused.reason) from None
    event = webhook_event(provider, delivery)
    headers = {"Nats-Msg-Id": f"{provider}:{event.delivery_id}"}
    await relay_publisher(gateway.broker)(event.subject, event.model_dump_json().encode(), headers)
    log.info(
        "webhook accepted: provider=%s delivery=%s job=%s status=%s",
        provider,
        event.delivery_id,
        event.job_id,
        event.status,
    )
    return WebhookAccepted(provider=provider, delivery_id=event.delivery_id, job_id=event.job_id)
