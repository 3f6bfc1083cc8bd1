"""`likeness trace CHARACTER_ID`: every trace that touched a character, as trees of spans, in order.

Reads the trace files the services of `likeness up` (or the demo, with `--data-dir .likeness/demo`) write:
`<data dir>/traces/<service>.jsonl`, one finished span per line (infra/tracing.py `span_record`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.cli_ops import DataDir, console, fail


@dataclass(frozen=True)
class SpanLine:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    service: str
    name: str
    kind: str
    start_ns: int
    duration_ms: float
    status: str
    attributes: dict[str, Any]

    @property
    def end_ns(self) -> int:
        return self.start_ns + int(self.duration_ms * 1e6)

    @property
    def is_read(self) -> bool:
        """An HTTP GET (an app polling a character): its trace goes nowhere else."""
        return self.kind == "SERVER" and self.name.startswith(("GET ", "HEAD "))

    @property
    def character_id(self) -> str | None:
        value = self.attributes.get("likeness.character_id")
        return str(value) if value else None


def read_spans(folder: Path) -> list[SpanLine]:
    """Every span in `folder`'s *.jsonl files; lines that are not spans (a torn last line) are skipped."""
    spans: list[SpanLine] = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
                spans.append(
                    SpanLine(
                        trace_id=row["trace_id"],
                        span_id=row["span_id"],
                        parent_span_id=row.get("parent_span_id"),
                        service=str(row.get("service", "?")).removeprefix("likeness-"),
                        name=row["name"],
                        kind=str(row.get("kind", "")),
                        start_ns=int(row["start_unix_nano"]),
                        duration_ms=float(row["duration_ms"]),
                        status=str(row.get("status", "UNSET")),
                        attributes=dict(row.get("attributes") or {}),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue
    return spans


def character_traces(spans: list[SpanLine], character_id: str, *, reads: bool = True) -> list[list[SpanLine]]:
    """The traces (each a list of spans) in which any span names `character_id`, oldest first; without
    `reads`, not those that are only HTTP reads."""
    wanted = {span.trace_id for span in spans if span.character_id == character_id}
    by_trace: dict[str, list[SpanLine]] = defaultdict(list)
    for span in spans:
        if span.trace_id in wanted:
            by_trace[span.trace_id].append(span)
    kept = [trace for trace in by_trace.values() if reads or not all(span.is_read for span in trace)]
    return sorted(kept, key=lambda trace: min(span.start_ns for span in trace))


def tree_lines(trace: list[SpanLine]) -> list[str]:
    """One line per span, children under their parent in start order; offsets from the trace's first span."""
    origin = min(span.start_ns for span in trace)
    ids = {span.span_id for span in trace}
    children: dict[str | None, list[SpanLine]] = defaultdict(list)
    for span in trace:  # a parent that is not in the files (an app's own span) makes a root
        children[span.parent_span_id if span.parent_span_id in ids else None].append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children[parent], key=lambda s: s.start_ns):
            offset_ms = (span.start_ns - origin) / 1e6
            failed = "  FAILED" if span.status == "ERROR" else ""
            failed += "  RETRIED" if span.attributes.get("likeness.outcome") == "retried" else ""
            label = f"{'  ' * depth}{span.name}"
            lines.append(
                f"{offset_ms:>+10.1f} ms {span.duration_ms:>9.1f} ms  {span.service:<17} {label}{failed}".rstrip()
            )
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return lines


def trace(
    character_id: Annotated[str, typer.Argument(help="The character's id (its correlation id).")],
    data_dir: DataDir = None,
    reads: Annotated[bool, typer.Option("--reads", help="Also show HTTP reads (GET) of the character.")] = False,
) -> None:
    """Follow one character through the services: each trace that touched it, as a tree of spans
    (start offset, duration, service, span), from the trace files of the stack `likeness up` runs."""
    project = Path(os.environ.get("LIKENESS_PROJECT_DIR", Path.cwd()))
    folder = (data_dir or Path(os.environ.get("LIKENESS_DATA_DIR", project / ".likeness" / "stack"))).resolve()
    traces_dir = folder / "traces"
    if not traces_dir.is_dir():
        raise fail("trace", f"no trace files in {traces_dir}; services started by `likeness up` write them there")
    traces = character_traces(read_spans(traces_dir), character_id, reads=reads)
    if not traces:
        raise fail("trace", f"no span in {traces_dir} names character {character_id} (spans arrive about 1 s late)")
    for spans in traces:
        services = ", ".join(sorted({span.service for span in spans}))
        took_ms = (max(span.end_ns for span in spans) - min(span.start_ns for span in spans)) / 1e6
        console.print(
            f"trace {spans[0].trace_id}: {len(spans)} spans, {took_ms:.1f} ms, {services}",
            highlight=False,
            soft_wrap=True,
        )
        for line in tree_lines(spans):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        console.print()
