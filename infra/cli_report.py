"""`likeness report`: the provider report from a running gateway, as tables, JSON or CSV.

It is an HTTP client of `GET /v1/reports` (the same figures as the API and the page): by default the
gateway and key `likeness up` recorded in the data directory, else `--gateway-url` and `--api-key`
(or LIKENESS_GATEWAY_URL and LIKENESS_API_KEY).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import typer
from rich.console import Console
from rich.table import Table

SECTIONS = ("summaries", "scenarios", "comparisons", "scorecard", "projections", "break-even")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(low: Any, high: Any, digits: int = 3) -> str:
    return "" if low is None or high is None else f" [{low:.{digits}f}, {high:.{digits}f}]"


def _usd(value: Any) -> str:
    return "-" if value is None else f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def summary_table(report: dict[str, Any]) -> Table:
    table = Table(title="Per provider (face distance: lower = more alike; 95% intervals)")
    for column in ("provider", "shots", "scored", "failed", "pass rate", "face distance", "CLIP-I", "p50 / p95 s"):
        table.add_column(column)
    for column in ("training s", "$/shot", "$/identity"):
        table.add_column(column, justify="right")
    for row in report["summaries"]:
        identity = row["identity"]
        table.add_row(
            row["provider"],
            str(row["shots_requested"]),
            str(row["shots_scored"]),
            str(row["failures"]),
            _fmt(row["pass_rate"], 2) + _interval(row["pass_ci95_low"], row["pass_ci95_high"], 2),
            _fmt(identity["mean"]) + _interval(identity["ci95_low"], identity["ci95_high"]),
            _fmt(row["clip_image"]["mean"]),
            f"{_seconds(row['latency_p50_ms'])} / {_seconds(row['latency_p95_ms'])}",
            _fmt(row["training_mean_s"], 1),
            _usd(row["cost_per_shot_usd"]),
            _usd(row["cost_per_identity_usd"]),
        )
    return table


def _seconds(ms: Any) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f}"


def scorecard_table(report: dict[str, Any]) -> Table:
    table = Table(title="Scorecard (0-100; tier 1 at 70 or more, tier 2 at 50 or more)")
    table.add_column("provider")
    names = [c["name"] for c in report["scorecard"][0]["criteria"]] if report["scorecard"] else []
    for name in names:
        table.add_column(name.replace("_", " "), justify="right")
    table.add_column("total", justify="right")
    table.add_column("tier", justify="right")
    for row in report["scorecard"]:
        scores = {c["name"]: c for c in row["criteria"]}
        cells = [_fmt(scores[name]["score"], 0) + ("*" if scores[name]["basis"] == "judged" else "") for name in names]
        table.add_row(row["provider"], *cells, _fmt(row["total"], 1), str(row["tier"]))
    table.caption = "* judged from a settings table, not measured"
    return table


def projection_table(report: dict[str, Any]) -> Table:
    characters = report.get("characters_projected")
    table = Table(title=f"Monthly cost for {characters} character(s) (identities built once a month)")
    table.add_column("provider")
    volumes = sorted({p["shots_per_month"] for p in report["projections"]})
    for volume in volumes:
        table.add_column(f"{volume:,} shots", justify="right")
    by_provider: dict[str, dict[int, Any]] = {}
    for p in report["projections"]:
        by_provider.setdefault(p["provider"], {})[p["shots_per_month"]] = (
            "skipped" if p["skipped"] else _usd(p["monthly_cost_usd"])
        )
    for provider, costs in sorted(by_provider.items()):
        table.add_row(provider, *(str(costs.get(volume, "-")) for volume in volumes))
    return table


def print_report(console: Console, report: dict[str, Any]) -> None:
    if report.get("note"):
        console.print(f"[bold yellow]Note: {report['note']}[/bold yellow]")
    console.print(summary_table(report))
    conclusions = [c["conclusion"] for c in report["comparisons"] if c["metric"] == "face_distance"]
    if conclusions:
        console.print("[bold]Consistency between providers[/bold] (Welch and Mann-Whitney, Holm-adjusted):")
        for sentence in conclusions:
            console.print(f"  - {sentence}", highlight=False)
    if report["scorecard"]:
        console.print(scorecard_table(report))
    if report["projections"]:
        console.print(projection_table(report))
    for row in report["break_evens"]:
        console.print(f"  - {row['statement']}", highlight=False)


def _endpoint(data_dir: Path, gateway_url: str | None, api_key: str | None) -> tuple[str, str]:
    url = gateway_url or os.environ.get("LIKENESS_GATEWAY_URL")
    key = api_key or os.environ.get("LIKENESS_API_KEY")
    recorded_url, recorded_key = data_dir / "gateway-url", data_dir / "api-key"
    if url is None and recorded_url.exists():
        url = recorded_url.read_text().strip()
    if key is None and recorded_key.exists():
        key = recorded_key.read_text().strip()
    if not url or not key:
        raise typer.BadParameter(
            f"no running gateway recorded in {data_dir} (start one with `likeness up`), "
            "or pass --gateway-url and --api-key (LIKENESS_GATEWAY_URL, LIKENESS_API_KEY)"
        )
    return url.rstrip("/"), key


def report(
    data_dir: Annotated[Path | None, typer.Option(help="The stack `likeness up` started.")] = None,
    gateway_url: Annotated[str | None, typer.Option(help="The gateway, e.g. http://127.0.0.1:8000.")] = None,
    api_key: Annotated[str | None, typer.Option(help="An API key with the read scope.")] = None,
    character: Annotated[str | None, typer.Option(help="Only this character id.")] = None,
    characters: Annotated[int | None, typer.Option(min=1, help="Characters to project costs for.")] = None,
    output: Annotated[Literal["table", "json", "csv"], typer.Option("--format", help="How to print it.")] = "table",
    section: Annotated[str, typer.Option(help=f"With --format csv: one of {', '.join(SECTIONS)}.")] = "summaries",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of printing.")] = None,
) -> None:
    """The provider report: consistency with intervals, significance tests, scorecard and tiers, costs."""
    from infra.cli import _default_data_dir, console

    if section not in SECTIONS:
        raise typer.BadParameter(f"choose one of {', '.join(SECTIONS)}", param_hint="--section")
    url, key = _endpoint((data_dir or _default_data_dir()).resolve(), gateway_url, api_key)
    params: dict[str, Any] = {k: v for k, v in (("character_id", character), ("characters", characters)) if v}
    path = f"/v1/reports/{section}.csv" if output == "csv" else "/v1/reports"
    try:
        response = httpx.get(url + path, params=params, headers={"X-API-Key": key}, timeout=60.0)
    except httpx.HTTPError as error:
        raise typer.BadParameter(f"the gateway at {url} did not answer ({type(error).__name__})") from None
    if response.status_code != 200:
        Console(stderr=True).print(f"[red]report:[/red] {response.status_code} {response.text[:500]}", highlight=False)
        raise typer.Exit(1)
    text = response.text if output == "csv" else json.dumps(response.json(), indent=2)
    if out is not None:
        out.write_text(text)
        console.print(f"wrote {out}")
    elif output == "table":
        print_report(console, response.json())
    else:
        print(text)
