"""Human evaluation: raters answer "same character?" for a shot; the gateway reports how they agree.

A vote is an event like every other write (`HumanVoteCast`, recorded by storage, a later vote by the same
rater replacing the earlier); the agreement report is computed from the system of record on request.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict

from contracts import HumanAnswer, HumanVoteCast
from contracts.values import RaterName
from infra.bus import publish_event
from infra.evidence.agreement import Vote, agreement
from services.gateway.auth import Tenant, WriteTenant
from services.gateway.deps import Gateway

router = APIRouter(prefix="/v1", tags=["evaluation"])


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rater: RaterName
    answer: HumanAnswer


class VoteAccepted(BaseModel):
    status: str = "accepted"
    shot_id: UUID
    rater: str
    answer: HumanAnswer
    links: dict[str, str]


@router.post("/shots/{shot_id}/votes", status_code=status.HTTP_202_ACCEPTED, response_model=VoteAccepted)
async def cast_vote(request: Request, tenant: WriteTenant, shot_id: UUID, vote: VoteIn) -> VoteAccepted:
    """A rater's answer to "does this shot show the same character as the references?" (yes / no / unsure).

    One answer per rater per shot counts: voting again changes it.
    """
    gateway: Gateway = request.app.state.gateway
    shot = await gateway.read_model.shot(tenant, shot_id)
    if shot is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shot {shot_id}")
    character_id = UUID(shot["character_id"])
    event = HumanVoteCast(
        correlation_id=character_id,
        tenant_id=tenant,
        shot_id=shot_id,
        character_id=character_id,
        rater=vote.rater,
        answer=vote.answer,
    )
    await publish_event(gateway.broker, event)
    return VoteAccepted(
        shot_id=shot_id,
        rater=vote.rater,
        answer=vote.answer,
        links={"evaluation": f"/v1/evaluation?character_id={character_id}"},
    )


@router.get("/evaluation")
async def evaluation(
    request: Request,
    tenant: Tenant,
    character_id: UUID | None = None,
    provider: str | None = Query(default=None, max_length=32),
) -> dict[str, Any]:
    """How raters agree with each other (Fleiss' kappa, pairwise agreement) and with the automatic verdict
    (agreement, Cohen's kappa), and the shots to review: raters split, or raters against the machine."""
    gateway: Gateway = request.app.state.gateway
    rows = await gateway.read_model.votes(tenant, character_id=character_id, provider=provider)
    result = agreement(
        Vote(
            shot_id=str(row["shot_id"]),
            character_id=str(row["character_id"]),
            provider=row["provider"],
            rater=row["rater"],
            answer=row["answer"],
            verdict=row["verdict"],
        )
        for row in rows
    )
    return {"filters": {"character_id": character_id, "provider": provider}, **asdict(result)}
