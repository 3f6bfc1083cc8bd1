"""Reports: what a studio chooses a provider by, computed from the system of record on request.

`GET /v1/reports` is the whole report as JSON; `GET /v1/reports/<section>.csv` one section as CSV. The
figures come from `infra.evidence` (summaries, significance tests, the weighted scorecard, cost
projections, break-even); this module only reads the tenant's rows and turns them into facts.

A shot's strategy is its provider's approach where the provider has one (an app may send any `strategy`
with any provider; fal-flux-lora trains a LoRA whatever it was told), else the character's stated one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

import asyncpg
from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from infra.evidence.costs import BreakEven, Projection, break_even, project_costs
from infra.evidence.facts import IdentityFact, ShotFact
from infra.evidence.render import report_csv, report_json
from infra.evidence.scorecard import ScorecardRow, score_providers
from infra.evidence.stats import Comparison, compare_providers
from infra.evidence.summary import GroupSummary, gate_summary, summarize
from services.gateway.auth import Tenant
from services.gateway.deps import Gateway
from services.gateway.settings import GatewaySettings

router = APIRouter(prefix="/v1", tags=["reports"])

PROVIDER_STRATEGY: dict[str, str] = {
    "fal-instant-character": "instant_reference",
    "fal-flux-redux": "instant_reference",
    "leonardo-character-reference": "instant_reference",
    "comfyui-ipadapter": "instant_reference",
    "comfyui-instantid": "instant_reference",
    "comfyui-reference-only": "instant_reference",
    "fal-flux-lora": "lora",
    "replicate-flux-lora": "lora",
    "astria-tune": "fine_tune",
}
Section = Literal["summaries", "scenarios", "comparisons", "scorecard", "projections", "break-even"]
_KIND: dict[str, type] = {
    "summaries": GroupSummary,
    "scenarios": GroupSummary,
    "comparisons": Comparison,
    "scorecard": ScorecardRow,
    "projections": Projection,
    "break-even": BreakEven,
}


def _strategy(provider: str, stated: str) -> str:
    return PROVIDER_STRATEGY.get(provider, stated)


def shot_facts(rows: Sequence[asyncpg.Record]) -> list[ShotFact]:
    return [
        ShotFact(
            character_id=str(row["character_id"]),
            provider=row["provider"],
            strategy=_strategy(row["provider"], row["strategy"]),
            scenario=row["scenario"] or "unspecified",
            status=row["status"],
            verdict=row["verdict"] if row["status"] == "scored" else None,
            face_distance=row["face_distance"],
            clip_image=row["clip_image"],
            clip_text=row["clip_text"],
            clip_calibrated=row["clip_calibrated"],
            latency_ms=row["latency_ms"],
            cost_usd=row["cost_usd"],
            simulated=row["simulated"],
            shot_id=str(row["shot_id"]),
            take=row["take"],
            take_reason=row["take_reason"],
            final=row["final"],
        )
        for row in rows
    ]


def identity_facts(rows: Sequence[asyncpg.Record]) -> list[IdentityFact]:
    return [
        IdentityFact(
            character_id=str(row["character_id"]),
            provider=row["provider"],
            strategy=_strategy(row["provider"], row["strategy"]),
            state=row["state"],
            training_seconds=row["training_seconds"],
            cost_usd=row["cost_usd"],
            simulated=row["simulated"],
        )
        for row in rows
    ]


class Report:
    """Every section, computed once from the facts."""

    def __init__(
        self,
        shots: list[ShotFact],
        identities: list[IdentityFact],
        settings: GatewaySettings,
        *,
        characters: int | None = None,
    ) -> None:
        self.characters = characters or max(1, len({fact.character_id for fact in identities}))
        self.sections: dict[str, Sequence[Any]] = {}
        by_provider = summarize(shots, identities, ("provider",))
        self.sections["summaries"] = by_provider
        self.sections["scenarios"] = summarize(shots, identities, ("provider", "scenario"))
        alpha = settings.report_alpha
        self.sections["comparisons"] = [
            *compare_providers(shots, metric="face_distance", alpha=alpha),
            *compare_providers(shots, metric="clip_image", alpha=alpha),
        ]
        self.sections["scorecard"] = score_providers(
            by_provider,
            weights=settings.scorecard(),
            qualitative=settings.scorecard_judgements(),
        )
        self.sections["projections"] = project_costs(by_provider, characters=self.characters)
        self.sections["break-even"] = break_even(by_provider)
        self.gate = gate_summary(shots)

    def json(self) -> dict[str, Any]:
        document = report_json(
            summaries=self.sections["summaries"],
            comparisons=self.sections["comparisons"],
            scorecard=self.sections["scorecard"],
            projections=self.sections["projections"],
            break_evens=self.sections["break-even"],
        )
        document["scenarios"] = report_json(summaries=self.sections["scenarios"])["summaries"]
        document["characters_projected"] = self.characters
        document["gate"] = dataclasses.asdict(self.gate)
        return document

    def csv(self, section: str) -> str:
        return report_csv(self.sections[section], kind=_KIND[section])


async def build_report(request: Request, tenant: str, character_id: UUID | None, characters: int | None) -> Report:
    gateway: Gateway = request.app.state.gateway
    shot_rows, identity_rows = await gateway.read_model.report_rows(tenant, character_id=character_id)
    if character_id is not None and not identity_rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no character {character_id}")
    return Report(shot_facts(shot_rows), identity_facts(identity_rows), gateway.settings, characters=characters)


_CHARACTER = Query(default=None, description="Only this character (default: every character of the tenant).")
_CHARACTERS = Query(
    default=None, ge=1, le=1_000_000, description="Characters to project costs for (default: how many there are)."
)


@router.get("/reports")
async def get_report(
    request: Request, tenant: Tenant, character_id: UUID | None = _CHARACTER, characters: int | None = _CHARACTERS
) -> dict[str, Any]:
    """Per provider (and per provider and scenario): identity distance and CLIP figures with 95% intervals,
    pass rate, latency p50/p95, training time, cost per shot and per identity, failures; pairwise significance
    tests (Welch and Mann-Whitney, Holm-adjusted, with effect sizes); the weighted scorecard with its tiers;
    monthly cost projections at 1k, 10k and 100k shots; break-even shots per character between strategies.
    Figures from the simulator or fake providers are marked `simulated`, CLIP on random weights `clip_uncalibrated`.
    """
    return (await build_report(request, tenant, character_id, characters)).json()


@router.get("/reports/{section}.csv", response_class=Response)
async def get_report_csv(
    request: Request,
    tenant: Tenant,
    section: Section,
    character_id: UUID | None = _CHARACTER,
    characters: int | None = _CHARACTERS,
) -> Response:
    """One section of the report as CSV (a header line, then one line per row, in a fixed column order)."""
    report = await build_report(request, tenant, character_id, characters)
    filename = f"likeness-{section}.csv"
    return Response(
        report.csv(section),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
