"""The HTTP API apps call. Writes become events; reads come from the system of record."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote
from uuid import UUID

from fastapi import APIRouter, File, Form, Header, HTTPException, Query, Request, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from contracts import CharacterRequested, ImageRef, ShotParams, ShotRequested, Strategy
from infra.bus import publish_event
from infra.objects import artifact_key, image_key
from services.gateway.auth import Tenant, WriteTenant
from services.gateway.budgets import BUDGET_RESPONSES, refuse_over_budget
from services.gateway.deps import Gateway
from services.gateway.images import ImageLimits, ImageRejected, read_limited, validate_reference
from services.gateway.reference_urls import ReferenceUrlProblem

router = APIRouter(prefix="/v1")

_STATUS_FOR_REASON = {
    "too_large": status.HTTP_413_CONTENT_TOO_LARGE,
    "unsupported_type": status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    "not_an_image": status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
}


class Accepted(BaseModel):
    id: UUID
    status: Literal["requested"] = "requested"
    links: dict[str, str] = Field(description="Where to follow the work.")


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@router.post("/characters", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=BUDGET_RESPONSES)
async def create_character(
    request: Request,
    tenant: WriteTenant,
    name: Annotated[str, Form(min_length=1, max_length=200, description="The character's name.")],
    references: Annotated[
        list[UploadFile], File(description="Reference photos (JPEG, PNG or WebP); with reference_urls, 1 to 20 in all.")
    ] = [],  # noqa: B006 - FastAPI copies defaults per request
    reference_urls: Annotated[
        list[str],
        Form(description="Reference photos by http(s) URL, fetched by the gateway (public addresses only)."),
    ] = [],  # noqa: B006
    strategy: Annotated[Strategy, Form(description="How the identity is built.")] = "instant_reference",
    provider: Annotated[str, Form(description="Which provider builds it, e.g. 'sim'.")] = "sim",
) -> Accepted:
    """Submit a character. Nothing is stored unless every reference is valid."""
    gateway = _gateway(request)
    await refuse_over_budget(gateway.read_model, tenant)
    settings = gateway.settings
    if provider not in settings.providers:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"unknown provider {provider!r}: choose one of {', '.join(settings.providers)}",
        )
    count = len(references) + len(reference_urls)
    if not 1 <= count <= settings.max_references:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"send between 1 and {settings.max_references} reference photos (files and URLs together); got {count}",
        )
    limits = ImageLimits(max_bytes=settings.max_reference_bytes, max_pixels=settings.max_reference_pixels)
    validated = []
    sources: list[tuple[str, UploadFile | str]] = [(u.filename or "upload", u) for u in references]
    sources += [(url, url) for url in reference_urls]
    for filename, source in sources:
        try:
            if isinstance(source, str):
                data = await gateway.references.fetch(source.strip(), limits.max_bytes)
            else:
                data = await read_limited(source, limits.max_bytes, filename=filename)
            validated.append(await asyncio.to_thread(validate_reference, filename, data, limits))
        except ReferenceUrlProblem as problem:
            raise HTTPException(
                problem.status, {"reason": problem.reason, "url": problem.url, "message": str(problem)}
            ) from None
        except ImageRejected as rejected:
            code = _STATUS_FOR_REASON.get(rejected.reason, status.HTTP_422_UNPROCESSABLE_CONTENT)
            raise HTTPException(code, {"reason": rejected.reason, "file": filename, "message": str(rejected)}) from None
    refs = []
    for image in validated:
        stored = await gateway.store.put_image(tenant, image.data, image.content_type)
        refs.append(
            ImageRef(
                key=stored.key,
                sha256=stored.sha256,
                content_type=image.content_type,
                width=image.width,
                height=image.height,
                size_bytes=stored.size_bytes,
            )
        )
    character_id = uuid.uuid4()
    event = CharacterRequested(
        correlation_id=character_id,
        tenant_id=tenant,
        character_id=character_id,
        name=name,
        strategy=strategy,
        provider=provider,
        references=refs,
    )
    await publish_event(gateway.broker, event)
    return Accepted(
        id=character_id,
        links={"self": f"/v1/characters/{character_id}", "events": f"/v1/characters/{character_id}/events"},
    )


@router.get("/characters")
async def list_characters(
    request: Request,
    tenant: Tenant,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[datetime | None, Query(description="Page on: the created_at of the last one seen.")] = None,
) -> dict[str, Any]:
    """Your characters, newest first, with their shot counts."""
    items = await _gateway(request).read_model.characters(
        tenant, limit=limit, before=None if before is None else before.isoformat()
    )
    page: dict[str, Any] = {"characters": items}
    if len(items) == limit:
        page["next"] = f"/v1/characters?limit={limit}&before={quote(items[-1]['created_at'])}"
    return page


@router.get("/characters/{character_id}")
async def get_character(request: Request, tenant: Tenant, character_id: UUID) -> dict[str, Any]:
    """Status, identity, references and every shot with its latest score."""
    gateway = _gateway(request)
    character = await gateway.read_model.character(tenant, character_id)
    if character is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no character {character_id} (a character just submitted appears within moments)",
        )
    signed: dict[str, Any] = gateway.signer.add_urls(tenant, character)  # each image gets a short-lived `url`
    return signed


@router.post(
    "/characters/{character_id}/shots",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=BUDGET_RESPONSES,
)
async def request_shot(request: Request, tenant: WriteTenant, character_id: UUID, params: ShotParams) -> Accepted:
    """Ask for one shot of the character. It is generated once the identity is ready."""
    gateway = _gateway(request)
    if not await gateway.read_model.character_exists(tenant, character_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no character {character_id}")
    await refuse_over_budget(gateway.read_model, tenant)
    shot_id = uuid.uuid4()
    event = ShotRequested(
        correlation_id=character_id, tenant_id=tenant, shot_id=shot_id, character_id=character_id, params=params
    )
    await publish_event(gateway.broker, event)
    return Accepted(id=shot_id, links={"self": f"/v1/shots/{shot_id}"})


@router.get("/shots/{shot_id}")
async def get_shot(request: Request, tenant: Tenant, shot_id: UUID) -> dict[str, Any]:
    gateway = _gateway(request)
    shot = await gateway.read_model.shot(tenant, shot_id)
    if shot is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shot {shot_id}")
    signed: dict[str, Any] = gateway.signer.add_urls(tenant, shot)
    return signed


@router.get("/images/{sha256}", response_class=Response)
async def get_image(request: Request, tenant: Tenant, sha256: str) -> Response:
    """A reference or shot image by its sha256 (only the tenant's own images)."""
    _check_sha256(sha256)
    found = await _gateway(request).store.get_with_type(image_key(tenant, sha256))
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image {sha256}")
    data, content_type = found
    return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/artifacts/{sha256}", response_class=StreamingResponse)
async def get_artifact(request: Request, tenant: Tenant, sha256: str) -> StreamingResponse:
    """Trained weights copied from a provider (a character's `identity.weights`), only the tenant's own."""
    _check_sha256(sha256)
    found = await _gateway(request).store.stream(artifact_key(tenant, sha256))
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no artifact {sha256}")
    content_type, size, chunks = found
    headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{sha256}"'}
    return StreamingResponse(chunks, media_type=content_type, headers=headers)


def _check_sha256(sha256: str) -> None:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "sha256 must be 64 lowercase hex digits")


@router.get("/characters/{character_id}/events", response_class=StreamingResponse)
async def character_events(
    request: Request,
    tenant: Tenant,
    character_id: UUID,
    last_event_id: Annotated[int | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: every event of the character, in order; resume with Last-Event-ID."""
    gateway = _gateway(request)
    if not await gateway.read_model.character_exists(tenant, character_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no character {character_id}")

    async def stream() -> AsyncIterator[str]:
        seq = last_event_id or 0
        idle = 0.0
        while not await request.is_disconnected():
            batch = await gateway.read_model.events_after(tenant, character_id, seq)
            for seq, event_type, payload in batch:
                yield f"id: {seq}\nevent: {event_type}\ndata: {json.dumps(payload)}\n\n"
            if batch:
                idle = 0.0
                continue
            idle += gateway.settings.events_poll_s
            if idle >= 15.0:
                idle = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(gateway.settings.events_poll_s)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
