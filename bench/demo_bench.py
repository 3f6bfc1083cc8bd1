"""Benchmark: the demo's wall time and each service's resident memory, against the goals.

Run with `./taskw bench`. Figures come from the offline simulator and random-weight CLIP, and say so.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from infra.demo import run_demo

GOAL_WALL_S = 90.0
GOAL_RSS_MB = {"gateway": 200.0, "provider_adapter": 200.0, "storage": 200.0, "scoring": 1500.0}


def main() -> None:
    console = Console(width=120)
    project = Path(os.environ.get("LIKENESS_PROJECT_DIR", Path.cwd()))
    result = run_demo(project, console)
    shots = result.character["shots"]
    verdicts = [s["score"]["verdict"] for s in shots if s.get("score")]
    console.print("\n[bold]demo benchmark[/bold] (offline simulator, CLIP on random weights)")
    console.print(f"  cores: {os.cpu_count()}")
    console.print(
        f"  wall time, demo start to report: {result.wall_s:6.1f} s   goal < {GOAL_WALL_S:.0f} s   "
        f"ratio {result.wall_s / GOAL_WALL_S:.2f} of the goal"
    )
    console.print(f"  shots with a verdict: {len(verdicts)} of {len(shots)}")
    for name, goal in GOAL_RSS_MB.items():
        rss = result.service_rss_mb.get(name)
        if rss is None:
            console.print(f"  {name:<17} resident memory: not measured")
            continue
        console.print(f"  {name:<17} resident memory: {rss:7.0f} MB   goal < {goal:.0f} MB   ratio {rss / goal:.2f}")


if __name__ == "__main__":
    main()
