"""`likeness`: the operator's entry point (up, down, demo, calibrate; later replay, ...)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from infra.cli_budgets import app as budgets_app
from infra.cli_dlq import app as dlq_app
from infra.cli_keys import app as keys_app
from infra.cli_replay import replay as replay_command
from infra.cli_report import report as report_command
from infra.cli_status import status as status_command
from infra.cli_trace import trace as trace_command

app = typer.Typer(help="Likeness: consistent character identity across AI-generated shots.", no_args_is_help=True)
# Piped or captured output has no terminal width to follow; a results table needs room.
console = Console() if Console().is_terminal else Console(width=150)

DATA_DIR_HELP = "Where the stack keeps its data (NATS streams, PostgreSQL, images)."


def _project_dir() -> Path:
    return Path(os.environ.get("LIKENESS_PROJECT_DIR", Path.cwd()))


def _default_data_dir() -> Path:
    return Path(os.environ.get("LIKENESS_DATA_DIR", _project_dir() / ".likeness" / "stack"))


def _calibration_dir() -> Path:
    """Where `calibrate --save` writes profiles: LIKENESS_CALIBRATION_DIR, else <project>/.likeness/calibration."""
    return Path(os.environ.get("LIKENESS_CALIBRATION_DIR", _project_dir() / ".likeness" / "calibration"))


def _api_key(data_dir: Path) -> str:
    path = data_dir / "api-key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="Give up if the shots are not all scored by then (seconds).")] = 300.0,
    provider: Annotated[
        str,
        typer.Option(
            help="sim (the offline simulator), or fal-instant-character or fal-flux-lora: a fal adapter against "
            "a fake fal server on loopback (simulated; nothing is sent to fal.ai).",
        ),
    ] = "sim",
) -> None:
    """Run the sample character through every service on the embedded stack, then print the results."""
    from infra import report
    from infra.demo import DEMO_PROVIDERS, run_demo

    if provider not in DEMO_PROVIDERS:
        raise typer.BadParameter(f"choose one of {', '.join(DEMO_PROVIDERS)}", param_hint="--provider")
    result = run_demo(_project_dir(), console, timeout_s=timeout, provider=provider)
    console.print(report.results_table(result.character))
    console.print(report.stats_table(result.character))
    if result.provider_report is not None:
        from infra.cli_report import scorecard_table

        console.print(scorecard_table(result.provider_report))
        if result.provider_report.get("note"):
            console.print(f"[yellow]scorecard: {result.provider_report['note']}[/yellow]")
    console.print(f"CSV:  {result.csv_path}")
    console.print(f"HTML: {result.html_path}")
    console.print(
        f"JSON: {result.csv_path.parent / 'report.json'} (the provider report; `likeness report` on a running stack)"
    )
    memory = ", ".join(f"{name} {mb:.0f} MB" for name, mb in result.service_rss_mb.items())
    console.print(f"demo wall time {result.wall_s:.1f} s; resident memory: {memory}")
    if result.notice:
        console.print(f"[bold yellow]{result.notice}[/bold yellow]")
    unclean = {name: code for name, code in result.exit_codes.items() if code != 0}
    if unclean:
        console.print(f"[red]services did not stop cleanly[/red]: exit codes {unclean}; see .likeness/demo/logs")
        raise typer.Exit(1)
    console.print("all services stopped cleanly")


@app.command()
def up(
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    port: Annotated[int, typer.Option(help="Gateway port (0: a free one).")] = 0,
) -> None:
    """Start the embedded stack and the four services in the background; `likeness down` stops them."""
    from infra.processes import ServiceSet
    from infra.stack import EmbeddedStack, stack_running
    from infra.stack.ports import free_port

    data_dir = (data_dir or _default_data_dir()).resolve()
    if stack_running(data_dir):
        console.print(f"[red]already running[/red] from {data_dir}; `likeness down` first")
        raise typer.Exit(1)
    stack = EmbeddedStack(data_dir)
    endpoints = stack.start()
    gateway_port = port or free_port()
    api_key = _api_key(data_dir)
    services = ServiceSet(
        data_dir,
        {
            **endpoints.env(),
            "LIKENESS_GATEWAY_PORT": str(gateway_port),
            "LIKENESS_GATEWAY_API_KEYS": f"local:{api_key}",
        },
    )
    try:
        services.start_all()
    except Exception:
        services.stop_all()
        stack.stop()
        raise
    console.print(f"Likeness is up. Data: {data_dir}")
    console.print(f"  gateway   http://127.0.0.1:{gateway_port}   (API docs: /docs)")
    console.print(f"  API key   {api_key}   (tenant 'local'; stored in {data_dir / 'api-key'})")
    (data_dir / "gateway-url").write_text(f"http://127.0.0.1:{gateway_port}")  # for `likeness report`
    console.print(f"  logs      {data_dir / 'logs'}")
    console.print("Stop it with `./taskw down`.")


@app.command()
def down(data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None) -> None:
    """Stop what `likeness up` started (services first, then NATS, PostgreSQL and the object store)."""
    from infra.processes import stop_recorded_services
    from infra.stack import stop_recorded_stack

    data_dir = (data_dir or _default_data_dir()).resolve()
    services = stop_recorded_services(data_dir)
    servers = stop_recorded_stack(data_dir)
    if not services and not servers:
        console.print(f"nothing was running from {data_dir}")
        return
    console.print(f"stopped {', '.join([*services, *servers])}; data kept in {data_dir}")


@app.command()
def calibrate(
    pairs: Annotated[
        Path, typer.Option(metavar="PAIRS.csv", help="CSV with header image_a,image_b,label (same or different).")
    ],
    images: Annotated[Path, typer.Option(metavar="DIR", help="The folder the CSV's image paths are relative to.")],
    save: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Save the equal-error-rate threshold as profile NAME (a-z, 0-9, _ and -) in "
            "LIKENESS_CALIBRATION_DIR (default .likeness/calibration)/NAME.json.",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            metavar="X",
            help="Report the figures at this threshold instead of the one in use (the profile's, else "
            "face_same_below).",
        ),
    ] = None,
    uncertain_band: Annotated[
        float | None,
        typer.Option(
            metavar="W",
            help="With --save: an 'uncertain' band W wide centred on the saved threshold (default: no band).",
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            metavar="K",
            help="Also cross-validate across people: split the identities (images joined by 'same' pairs) into "
            "K folds; fit the EER threshold on K-1 folds and test it on the held-out one (K >= 2; default: off).",
        ),
    ] = None,
) -> None:
    """How well face distance separates labelled pairs: ROC AUC, the equal-error-rate threshold, accuracy."""
    from infra.calibrate import CalibrationInputError
    from infra.calibrate import calibrate as run

    try:
        run(
            pairs,
            images,
            calibration_dir=_calibration_dir(),
            console=console,
            save=save,
            threshold=threshold,
            uncertain_band=uncertain_band,
            folds=folds,
        )
    except CalibrationInputError as error:
        Console(stderr=True).print(f"[red]calibrate:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command("prepare-models")
def prepare_models() -> None:
    """Export CLIP to ONNX for the scoring service's settings (LIKENESS_SCORING_*), once per model and weights.

    The scoring service does this itself on its first start; running it beforehand (at image build, in an
    init container) keeps the export's one-time peak (about 2.6 GB for ViT-B-32, torch loaded) out of a
    memory-limited scoring container.
    """
    import resource
    import time

    from services.scoring.adapters.clip_onnx import OnnxPrecision, export_directory, exported_clip, is_finished
    from services.scoring.ports import ScoringModelError
    from services.scoring.settings import ScoringSettings

    settings = ScoringSettings()
    if settings.clip_runtime != "onnx":
        console.print("LIKENESS_SCORING_CLIP_RUNTIME=torch: nothing to export (open_clip loads the weights itself)")
        return
    model = (settings.clip_model, settings.clip_weights)
    precision: OnnxPrecision = "int8" if settings.clip_precision == "int8" else "float32"
    started = time.monotonic()
    try:
        done_before = is_finished(export_directory(*model, cache=settings.clip_cache, precision=precision))
        exported = exported_clip(*model, cache=settings.clip_cache, offline=settings.offline, precision=precision)
    except ScoringModelError as error:
        Console(stderr=True).print(f"[red]prepare-models:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    size = sum(file.stat().st_size for file in exported.directory.iterdir()) / 1e6
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    console.print(
        f"open_clip {exported.architecture} ({exported.weights_label}), onnx {exported.precision}: "
        f"{exported.directory} ({size:,.0f} MB) in {time.monotonic() - started:.1f} s"
        + (" (already exported)" if done_before else f"; the export program peaked at {peak:,.0f} MB")
    )


app.add_typer(keys_app, name="keys")
app.add_typer(budgets_app, name="budgets")
app.add_typer(dlq_app, name="dlq")
app.command("report")(report_command)
app.command("status")(status_command)
app.command("replay")(replay_command)
app.command("trace")(trace_command)

if __name__ == "__main__":
    app()
