"""The budgets table (schema `gateway`): set, cleared and listed by `likeness budgets`; read by the gateway
(`ReadModel.budget_standing`) and by storage (for its cost alerts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class Budget:
    tenant_id: str
    monthly_usd: float
    updated_at: datetime


def _budget(row: asyncpg.Record) -> Budget:
    return Budget(tenant_id=row["tenant_id"], monthly_usd=float(row["monthly_usd"]), updated_at=row["updated_at"])


class PostgresBudgets:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def set(self, tenant_id: str, monthly_usd: float) -> Budget:
        row = await self._pool.fetchrow(
            """INSERT INTO gateway.budgets (tenant_id, monthly_usd) VALUES ($1, round($2::numeric, 2))
               ON CONFLICT (tenant_id) DO UPDATE SET monthly_usd = EXCLUDED.monthly_usd, updated_at = now()
               RETURNING tenant_id, monthly_usd, updated_at""",
            tenant_id,
            monthly_usd,
        )
        assert row is not None
        return _budget(row)

    async def clear(self, tenant_id: str) -> bool:
        """Remove the tenant's budget (no limit from now on); False when it had none."""
        gone = await self._pool.fetchval("DELETE FROM gateway.budgets WHERE tenant_id = $1 RETURNING true", tenant_id)
        return bool(gone)

    async def list(self, tenant_id: str | None = None) -> list[Budget]:
        rows = await self._pool.fetch(
            """SELECT tenant_id, monthly_usd, updated_at FROM gateway.budgets
               WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY tenant_id""",
            tenant_id,
        )
        return [_budget(row) for row in rows]
