"""Monthly budgets at the gateway: new paid work (a character, a shot) is refused with 402 once the tenant's
recorded spend this calendar month (UTC) reaches its budget. Work already accepted is never cancelled.

The budget is set with `likeness budgets` (schema `gateway`); the spend is what storage has recorded (schema
`records`), read through `ReadModel.budget_standing`. Storage announces 80% and 100% with a CostAlert event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import HTTPException, status
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from services.gateway.adapters.read_model import ReadModel


@dataclass(frozen=True)
class BudgetStanding:
    tenant_id: str
    month: str  # YYYY-MM (UTC)
    budget_usd: float
    spend_usd: float  # shots and identities recorded this month, simulated costs included
    simulated_usd: float  # the part priced by the offline simulator
    resets_at: datetime  # the start of next month (UTC)

    @property
    def exhausted(self) -> bool:
        """Spend at or over the budget (to a millionth of a dollar, as storage's 100% alert counts it)."""
        return round(self.spend_usd, 6) >= round(self.budget_usd, 6)


class BudgetExhausted(BaseModel):
    reason: Literal["budget_exhausted"] = "budget_exhausted"
    message: str = Field(description="What happened and what to do, in a sentence or two.")
    tenant: str
    month: str = Field(description="The calendar month (UTC), YYYY-MM.")
    budget_usd: float = Field(description="The tenant's monthly budget.")
    spend_usd: float = Field(description="Spend recorded this month (shots and identities), simulated included.")
    simulated_usd: float = Field(description="The part of spend_usd priced by the offline simulator.")
    resets_at: datetime = Field(description="When the month ends and the budget starts again (UTC).")


class BudgetRefusal(BaseModel):
    detail: BudgetExhausted


BUDGET_RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_402_PAYMENT_REQUIRED: {
        "model": BudgetRefusal,
        "description": "The tenant's spend this month has reached its monthly budget: raise the budget "
        "(`likeness budgets set`) or wait for next month. Work already accepted goes on.",
    }
}


def refusal(standing: BudgetStanding) -> BudgetExhausted:
    simulated = f" (${standing.simulated_usd:.2f} of it simulated)" if standing.simulated_usd > 0 else ""
    return BudgetExhausted(
        message=f"Tenant {standing.tenant_id} has spent ${standing.spend_usd:.2f}{simulated} of its "
        f"${standing.budget_usd:.2f} monthly budget for {standing.month}, so new characters and shots are refused. "
        f"Raise the budget (`likeness budgets set --tenant {standing.tenant_id} --usd <amount>`) or wait until "
        f"{standing.resets_at.isoformat()}, when next month's budget starts; work already accepted goes on.",
        tenant=standing.tenant_id,
        month=standing.month,
        budget_usd=standing.budget_usd,
        spend_usd=standing.spend_usd,
        simulated_usd=standing.simulated_usd,
        resets_at=standing.resets_at,
    )


async def refuse_over_budget(read_model: ReadModel, tenant: str) -> None:
    """Raise 402 when the tenant's spend this month has reached its budget; a tenant without one has no limit."""
    standing = await read_model.budget_standing(tenant)
    if standing is not None and standing.exhausted:
        raise HTTPException(status.HTTP_402_PAYMENT_REQUIRED, refusal(standing).model_dump(mode="json"))
