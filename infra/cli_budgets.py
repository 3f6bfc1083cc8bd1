"""`likeness budgets`: set, show and clear each tenant's monthly budget in USD (schema `gateway`).

At 80% and 100% of the budget storage publishes a CostAlert; from 100% the gateway refuses new characters and
shots with 402 until the budget is raised or the calendar month (UTC) ends. A tenant without a budget has no
limit. The database is found as `likeness keys` finds it: `--database-url` (or LIKENESS_DATABASE_URL), else the
stack `likeness up` runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from infra.cli_keys import DatabaseUrl, DataDir, run_with_database
from services.gateway.keys import TENANT

if TYPE_CHECKING:  # asyncpg and the stores load when a command runs, keeping `likeness --help` quick
    import asyncpg

    from services.gateway.adapters.budgets import Budget
    from services.gateway.budgets import BudgetStanding

app = typer.Typer(
    help="Monthly budgets per tenant (USD): alerts at 80% and 100%, new paid work refused at 100%.",
    no_args_is_help=True,
)
console = Console() if Console().is_terminal else Console(width=150)
errors = Console(stderr=True)

T = TypeVar("T")


@dataclass(frozen=True)
class BudgetView:
    budget: Budget
    standing: BudgetStanding | None  # None: storage has not created its tables yet, so nothing is recorded


async def _with_pool(url: str, work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    from infra.db import create_pool
    from services.gateway.adapters.api_keys import migrate_gateway

    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        await migrate_gateway(pool)  # the table exists even before the gateway's first start
        return await work(pool)
    finally:
        await pool.close()


async def _views(pool: asyncpg.Pool, tenant_id: str | None) -> list[BudgetView]:
    import asyncpg

    from services.gateway.adapters.budgets import PostgresBudgets
    from services.gateway.adapters.read_model import ReadModel

    views = []
    for budget in await PostgresBudgets(pool).list(tenant_id):
        try:
            standing = await ReadModel(pool).budget_standing(budget.tenant_id)
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            standing = None  # storage has not started (or not migrated) on this database yet
        views.append(BudgetView(budget, standing))
    return views


async def set_budget(url: str, tenant_id: str, monthly_usd: float) -> BudgetView:
    from services.gateway.adapters.budgets import PostgresBudgets

    async def work(pool: asyncpg.Pool) -> BudgetView:
        await PostgresBudgets(pool).set(tenant_id, monthly_usd)
        [view] = await _views(pool, tenant_id)
        return view

    return await _with_pool(url, work)


async def show_budgets(url: str, tenant_id: str | None = None) -> list[BudgetView]:
    return await _with_pool(url, lambda pool: _views(pool, tenant_id))


async def clear_budget(url: str, tenant_id: str) -> bool:
    from services.gateway.adapters.budgets import PostgresBudgets

    return await _with_pool(url, lambda pool: PostgresBudgets(pool).clear(tenant_id))


def _check_tenant(tenant: str) -> None:
    if not TENANT.match(tenant):
        raise typer.BadParameter(
            "letters, digits, '.', '_' or '-', at most 64, starting alphanumeric", param_hint="--tenant"
        )


def _state(standing: BudgetStanding | None) -> str:
    if standing is None:
        return "nothing recorded yet"
    if standing.exhausted:
        return "refusing new work"
    if round(standing.spend_usd * 100, 4) >= round(standing.budget_usd * 80, 4):
        return "80% reached"
    return "ok"


def _spent(standing: BudgetStanding | None) -> tuple[str, str, str]:
    """Spent, of which simulated, and the share of the budget used."""
    if standing is None:
        return "$0.00", "$0.00", "0%"
    share = "-" if standing.budget_usd == 0 else f"{100 * standing.spend_usd / standing.budget_usd:.0f}%"
    return f"${standing.spend_usd:.2f}", f"${standing.simulated_usd:.2f}", share


@app.command("set")
def set_command(
    tenant: Annotated[str, typer.Option(help="The tenant (studio) whose monthly budget this is.")],
    usd: Annotated[float, typer.Option(min=0.0, help="The budget per calendar month (UTC), in USD.")],
    database_url_option: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Set (or change) a tenant's monthly budget: alerts at 80% and 100%, new paid work refused at 100%."""
    _check_tenant(tenant)
    view = run_with_database(lambda url: set_budget(url, tenant, usd), database_url_option, data_dir, "budgets")
    spent, simulated, share = _spent(view.standing)
    month = "" if view.standing is None else f" in {view.standing.month}"
    console.print(
        f"tenant '{tenant}': budget ${view.budget.monthly_usd:.2f} a month (UTC calendar months); "
        f"spent {spent}{month} ({share}, {simulated} of it simulated): {_state(view.standing)}",
        highlight=False,
    )


@app.command()
def show(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's budget.")] = None,
    database_url_option: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Each budget with this month's recorded spend (simulated costs count, and are shown apart)."""
    views = run_with_database(lambda url: show_budgets(url, tenant), database_url_option, data_dir, "budgets")
    if not views:
        console.print(
            ("no budget for tenant '" + tenant + "'" if tenant else "no budgets") + " (without one there is no limit)",
            highlight=False,
        )
        return
    table = Table("tenant", "monthly budget", "month", "spent", "simulated", "used", "state")
    for view in views:
        spent, simulated, share = _spent(view.standing)
        table.add_row(
            view.budget.tenant_id,
            f"${view.budget.monthly_usd:.2f}",
            "" if view.standing is None else view.standing.month,
            spent,
            simulated,
            share,
            _state(view.standing),
        )
    console.print(table)


@app.command()
def clear(
    tenant: Annotated[str, typer.Option(help="The tenant whose budget to remove (no limit from now on).")],
    database_url_option: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Remove a tenant's budget: no limit and no alerts from now on."""
    _check_tenant(tenant)
    if not run_with_database(lambda url: clear_budget(url, tenant), database_url_option, data_dir, "budgets"):
        errors.print(f"[red]likeness budgets:[/red] tenant '{tenant}' has no budget", highlight=False)
        raise typer.Exit(1)
    console.print(f"tenant '{tenant}' has no budget now (no limit)", highlight=False)
