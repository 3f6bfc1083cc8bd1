"""Callbacks: an app registers endpoints that Likeness calls, signed, when its shots are scored or its
characters complete (`outbound.py` sends them); each endpoint's delivery log shows every event's attempts.

Not to be confused with `/v1/webhooks/<provider>` (providers calling us).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from infra.safe_fetch import FetchFailed, FetchRefused
from infra.webhooks.standard import new_secret
from services.gateway.adapters.callbacks import CallbackEvent, Delivery, DeliveryStatus, Endpoint
from services.gateway.auth import Tenant, WriteTenant
from services.gateway.deps import Gateway
from services.gateway.outbound import MAX_URL_LENGTH

router = APIRouter(prefix="/v1", tags=["callbacks"])

MAX_ENDPOINTS_PER_TENANT = 20


class CallbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, description="https://... (public addresses only).")
    events: list[CallbackEvent] = Field(min_length=1, max_length=2, description="Which events to send.")


class CallbackOut(BaseModel):
    id: UUID
    url: str
    events: list[CallbackEvent]
    created_at: datetime
    links: dict[str, str]


class CallbackCreated(CallbackOut):
    secret: str = Field(description="whsec_...: verifies the webhook-signature header. Shown this once only.")


class CallbackList(BaseModel):
    callbacks: list[CallbackOut]


class DeliveryOut(BaseModel):
    id: UUID = Field(description="The webhook-id header: the same on every attempt.")
    event_id: UUID
    type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None = Field(description="The app's last HTTP status; null if it never answered.")
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="When it is tried again; null once delivered or failed.")
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]


def _out(endpoint: Endpoint) -> CallbackOut:
    return CallbackOut(
        id=endpoint.endpoint_id,
        url=endpoint.url,
        events=list(endpoint.events),
        created_at=endpoint.created_at,
        links={"deliveries": f"/v1/callbacks/{endpoint.endpoint_id}/deliveries"},
    )


def _delivery_out(delivery: Delivery) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.delivery_id,
        event_id=delivery.event_id,
        type=delivery.event_type,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        next_attempt_at=delivery.next_attempt_at,
        last_attempt_at=delivery.last_attempt_at,
        delivered_at=delivery.delivered_at,
        created_at=delivery.created_at,
    )


@router.post("/callbacks", status_code=status.HTTP_201_CREATED, response_model=CallbackCreated)
async def register_callback(request: Request, tenant: WriteTenant, callback: CallbackIn) -> CallbackCreated:
    """Register an endpoint for ShotScored and/or CharacterCompleted. The answer carries its signing secret,
    shown this once: keep it to verify deliveries (Standard Webhooks)."""
    gateway: Gateway = request.app.state.gateway
    url = callback.url.strip()
    try:
        await gateway.callbacks.check(url)
    except (FetchRefused, FetchFailed) as problem:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            {"reason": "url_refused", "url": url[:200], "message": f"callback URL cannot be used: {problem}"},
        ) from None
    if await gateway.callbacks.repo.count(tenant) >= MAX_ENDPOINTS_PER_TENANT:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"you have {MAX_ENDPOINTS_PER_TENANT} callback endpoints, the most allowed; delete one first",
        )
    secret = new_secret()
    events = sorted(set(callback.events), key=callback.events.index)
    endpoint = await gateway.callbacks.repo.create(tenant, url, events, secret)
    return CallbackCreated(**_out(endpoint).model_dump(), secret=secret)


@router.get("/callbacks", response_model=CallbackList)
async def list_callbacks(request: Request, tenant: Tenant) -> CallbackList:
    """Your endpoints (never their secrets)."""
    gateway: Gateway = request.app.state.gateway
    endpoints = await gateway.callbacks.repo.endpoints(tenant)
    return CallbackList(callbacks=[_out(endpoint) for endpoint in endpoints])


@router.delete("/callbacks/{callback_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_callback(request: Request, tenant: WriteTenant, callback_id: UUID) -> Response:
    """Stop sending to this endpoint; its delivery log goes with it."""
    gateway: Gateway = request.app.state.gateway
    if not await gateway.callbacks.repo.delete(tenant, callback_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no callback {callback_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/callbacks/{callback_id}/deliveries", response_model=DeliveryList)
async def callback_deliveries(
    request: Request, tenant: Tenant, callback_id: UUID, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> DeliveryList:
    """The delivery log, newest first: each event sent to this endpoint, its attempts and where it stands."""
    gateway: Gateway = request.app.state.gateway
    if await gateway.callbacks.repo.get(tenant, callback_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no callback {callback_id}")
    deliveries = await gateway.callbacks.repo.deliveries(tenant, callback_id, limit=limit)
    return DeliveryList(deliveries=[_delivery_out(delivery) for delivery in deliveries])
