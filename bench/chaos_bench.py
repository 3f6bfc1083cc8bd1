"""Benchmark: the chaos run at a larger size (more characters, three rounds of faults) and how long it takes.

Run with `./taskw bench:chaos` (options: --characters N --rounds N --replicas N). Shots come from the
offline simulator, and the output says so.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infra.chaos import ChaosPlan, run_chaos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--characters", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--fault-gap", type=float, default=3.0)
    args = parser.parse_args()
    console = Console(width=120)
    plan = ChaosPlan(characters=args.characters, replicas=args.replicas, rounds=args.rounds, fault_gap_s=args.fault_gap)
    with tempfile.TemporaryDirectory(prefix="likeness-chaos-") as folder:
        result = run_chaos(Path(folder), plan, say=console.print)
    table = Table("count", "value", title=f"chaos run: {len(result.faults)} faults, {result.wall_s:.0f} s")
    for name, count in result.counts.items():
        table.add_row(name, str(count))
    console.print(table)
    console.print(f"[yellow]{result.note}[/yellow]")
    shots = result.counts["shots requested"]
    console.print(
        f"shots scored exactly once: {result.counts['shots scored']} of {shots} "
        f"(ratio {result.counts['shots scored'] / shots:.3f}); wall time per shot {result.wall_s / shots:.2f} s"
    )
    if result.problems:
        console.print("[red]problems:[/red]")
        for problem in result.problems:
            console.print(f"  {problem}")
        raise SystemExit(1)
    console.print("[green]nothing lost, nothing doubled[/green]")


if __name__ == "__main__":
    main()
