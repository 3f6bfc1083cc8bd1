"""`likeness replay`: deliver stored events again, to one consumer (`--to`) or to a fresh consumer group (`--fresh`).

Selection: a subject filter (default every event but the dead-letter notices), and a time range
(`--since`/`--until`) or a sequence range (`--from-seq`/`--to-seq`); the end is never past the stream's
last sequence when the replay began, so the copies it publishes are not replayed again.

`--to <durable>` republishes each selected message on its own subject with `Likeness-Redrive-For:
<durable>` (every other consumer of the subject acks it unseen), `Likeness-Replay: <replay id>` and
`Nats-Msg-Id: replay:<replay id>:<stream seq>`. The consumer's claims (messaging.processed_events) make it
skip what it already processed: `--to` delivers what it missed, failed or never claimed, and never makes
paid work run twice.

`--fresh <group> --service <name>` publishes nothing: it creates the service's durable consumers again as
`<durable>--<group>`, starting at the selection's start, for an instance run with
LIKENESS_CONSUMER_GROUP=<group> (claims of its own; with LIKENESS_OUTBOX_MODE=discard it announces nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from infra.cli_ops import DataDir, NatsUrl, console, errors, fail, run, stack_urls

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import ConsumerInfo, DeliverPolicy

REPLAY_HEADER = "Likeness-Replay"
DEAD_LETTER_PREFIX = "likeness.message.dead_lettered."  # MessageDeadLettered's subjects: never replayed by default
DEFAULT_SUBJECT = "likeness.>"
# Services whose consumers a fresh group may read again. provider_adapter would pay its providers a second time
# and the gateway would call apps' webhooks again: neither takes a consumer group.
FRESH_SERVICES = {"storage": "storage-", "scoring": "scoring-"}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_moment(text: str, *, now: datetime | None = None) -> datetime:
    """ISO 8601 (a time without a zone is UTC) or a span back from now: 90s, 30m, 2h, 3d."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2)
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        message = f"{text!r}: give ISO 8601 (2026-11-24T10:00Z) or a span back from now (2h, 3d)"
        raise typer.BadParameter(message) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` one or more at the end."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for i, part in enumerate(wanted):
        if part == ">":
            return len(tokens) > i
        if i >= len(tokens) or part not in ("*", tokens[i]):
            return False
    return len(wanted) == len(tokens)


@dataclass(frozen=True)
class Selection:
    subject: str = DEFAULT_SUBJECT
    since: datetime | None = None
    until: datetime | None = None
    from_seq: int | None = None
    to_seq: int | None = None

    def start(self) -> tuple[DeliverPolicy, int | None, datetime | None]:
        """Where a consumer reading the selection starts: deliver policy, start sequence, start time."""
        from nats.js.api import DeliverPolicy

        if self.from_seq is not None:
            return DeliverPolicy.BY_START_SEQUENCE, self.from_seq, None
        if self.since is not None:
            return DeliverPolicy.BY_START_TIME, None, self.since
        return DeliverPolicy.ALL, None, None

    def wants(self, subject: str) -> bool:
        if self.subject == DEFAULT_SUBJECT and subject.startswith(DEAD_LETTER_PREFIX):
            return False
        return subject_matches(self.subject, subject)


@dataclass(frozen=True)
class StreamState:
    first_seq: int
    last_seq: int
    messages: int
    first_time: datetime | None
    max_age_s: float
    max_bytes: int


@dataclass
class Outcome:
    replay_id: str
    target: str
    first_seq: int = 0  # the selection's range, as read
    last_seq: int = 0
    by_subject: Counter[str] = field(default_factory=Counter)
    copies_skipped: int = 0  # earlier replays' and redrives' copies: the originals are in the stream
    not_for_target: int = 0
    created: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def selected(self) -> int:
        return sum(self.by_subject.values())


async def stream_state(js: JetStreamContext) -> StreamState:
    from contracts import STREAM_NAME

    info = await js.stream_info(STREAM_NAME)
    first = await js.get_msg(STREAM_NAME, info.state.first_seq) if info.state.messages else None
    return StreamState(
        first_seq=info.state.first_seq,
        last_seq=info.state.last_seq,
        messages=info.state.messages,
        first_time=first.time if first is not None else None,
        max_age_s=float(info.config.max_age or 0),
        max_bytes=int(info.config.max_bytes or -1),
    )


def retention_text(state: StreamState) -> str:
    age = f"{state.max_age_s / 86400:g} days" if state.max_age_s else "unlimited"
    size = f"{state.max_bytes:,} bytes" if state.max_bytes > 0 else "unlimited"
    return f"retention: max age {age}, max bytes {size} (LIKENESS_STREAM_MAX_AGE_DAYS, LIKENESS_STREAM_MAX_BYTES)"


def retention_warning(selection: Selection, state: StreamState) -> str | None:
    """What the selection asks for that the stream no longer keeps, or None."""
    gone = state.first_seq - 1 if state.messages else state.last_seq  # sequences removed from the start
    if gone <= 0:
        return None
    oldest = state.first_time.isoformat(timespec="seconds") if state.first_time else "now (the stream is empty)"
    if selection.from_seq is not None and selection.from_seq <= gone:
        missing = min(gone, selection.to_seq or gone) - selection.from_seq + 1
        return (
            f"events before sequence {gone + 1} are gone ({retention_text(state)}): {missing} of the selected "
            f"sequences ({selection.from_seq}..{min(gone, selection.to_seq or gone)}) cannot be replayed; the oldest "
            f"kept is from {oldest}"
        )
    since = selection.since if selection.from_seq is None else None
    if since is not None and (state.first_time is None or since < state.first_time):
        return (
            f"events before {oldest} are gone ({retention_text(state)}): sequences 1..{gone} are no longer kept, "
            f"and --since {since.isoformat(timespec='seconds')} reaches before them"
        )
    return None


def consumer_filters(info: ConsumerInfo) -> list[str]:
    config = info.config
    return list(config.filter_subjects or []) or ([config.filter_subject] if config.filter_subject else [">"])


async def stored_messages(js: JetStreamContext, selection: Selection, end_seq: int) -> AsyncIterator[Msg]:
    """The stored messages of the selection, in stream order, up to `end_seq` (an ephemeral pull consumer)."""
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig

    from contracts import STREAM_NAME

    policy, start_seq, start_time = selection.start()
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
        deliver_policy=policy,
        opt_start_seq=start_seq,
        opt_start_time=start_time,
    )
    sub = await js.pull_subscribe(selection.subject, stream=STREAM_NAME, config=config)
    name = (await sub.consumer_info()).name
    try:
        while True:
            try:
                batch = await sub.fetch(batch=256, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                if not (await sub.consumer_info()).num_pending:
                    return
                continue
            for msg in batch:
                if msg.metadata.sequence.stream > end_seq:
                    return
                if selection.until is not None and msg.metadata.timestamp > selection.until:
                    return
                yield msg
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(Exception):  # it would go by itself after 30 s idle
            await js.delete_consumer(STREAM_NAME, name)


async def replay_to(
    js: JetStreamContext, selection: Selection, durable: str, state: StreamState, *, dry_run: bool, replay_id: str
) -> Outcome:
    """Republish the selection for one existing durable consumer."""
    from contracts import STREAM_NAME
    from infra.dead_letters import REDRIVE_HEADER

    consumers = {info.name: info for info in await js.consumers_info(STREAM_NAME) if info.config.durable_name}
    if durable not in consumers:
        known = ", ".join(sorted(consumers)) or "(none)"
        raise fail("replay", f"no durable consumer {durable!r} on stream {STREAM_NAME}; durables: {known}")
    filters = consumer_filters(consumers[durable])
    outcome = Outcome(replay_id, durable)
    end_seq = min(selection.to_seq or state.last_seq, state.last_seq)
    with _progress(not dry_run) as progress:  # by stream sequence, from the first one read to end_seq
        task = None if progress is None else progress.add_task(f"replay to {durable}", total=None)
        async for msg in stored_messages(js, selection, end_seq):
            seq = msg.metadata.sequence.stream
            outcome.first_seq = outcome.first_seq or seq
            outcome.last_seq = seq
            headers = dict(msg.headers or {})
            if progress is not None and task is not None:
                origin = outcome.first_seq
                progress.update(task, total=end_seq - origin + 1, completed=seq - origin + 1)
            if not selection.wants(msg.subject):
                continue
            if REDRIVE_HEADER in headers or REPLAY_HEADER in headers:
                outcome.copies_skipped += 1
                continue
            if not any(subject_matches(pattern, msg.subject) for pattern in filters):
                outcome.not_for_target += 1
                continue
            outcome.by_subject[msg.subject] += 1
            if dry_run:
                continue
            kept = {k: v for k, v in headers.items() if k.lower() not in ("nats-msg-id", "nats-expected-stream")}
            await js.publish(
                msg.subject,
                msg.data,
                headers={
                    **kept,
                    "Nats-Msg-Id": f"replay:{replay_id}:{seq}",
                    REDRIVE_HEADER: durable,
                    REPLAY_HEADER: replay_id,
                },
                stream=STREAM_NAME,
                timeout=5.0,
            )
    return outcome


async def replay_fresh(
    js: JetStreamContext,
    selection: Selection,
    group: str,
    service: str,
    state: StreamState,
    *,
    dry_run: bool,
    replay_id: str,
) -> Outcome:
    """Create the service's durables again under `group`, starting at the selection's start."""
    from contracts import STREAM_NAME
    from infra.bus import GROUP_SEPARATOR, grouped

    consumers = [info for info in await js.consumers_info(STREAM_NAME) if info.config.durable_name]
    prefix = FRESH_SERVICES[service]
    own = [
        info
        for info in consumers
        if info.name.startswith(prefix)
        and GROUP_SEPARATOR not in info.name
        and any(selection.wants(pattern) for pattern in consumer_filters(info))
    ]
    if not own:
        raise fail(
            "replay",
            f"{service} has no durable consumers on {STREAM_NAME} matching {selection.subject} (start it once, so they "
            f"exist); durables: {', '.join(sorted(info.name for info in consumers)) or '(none)'}",
        )
    names = {info.name for info in consumers}
    taken = [grouped(info.name, group) for info in own if grouped(info.name, group) in names]
    if taken:
        raise fail("replay", f"consumer group {group!r} exists already ({', '.join(taken)}); choose another name")
    outcome = Outcome(replay_id, f"group {group}")
    filters = [pattern for info in own for pattern in consumer_filters(info)]
    async for msg in stored_messages(js, selection, state.last_seq):
        seq = msg.metadata.sequence.stream
        outcome.first_seq = outcome.first_seq or seq
        outcome.last_seq = seq
        if any(subject_matches(pattern, msg.subject) for pattern in filters):
            outcome.by_subject[msg.subject] += 1
    policy, start_seq, start_time = selection.start()
    for info in own:
        name = grouped(info.name, group)
        outcome.created.append(name)
        if dry_run:
            continue
        config = dataclasses.replace(
            info.config,
            name=name,
            durable_name=name,
            deliver_policy=policy,
            opt_start_seq=start_seq,
            opt_start_time=start_time,
        )
        await js.add_consumer(STREAM_NAME, config=config)
    return outcome


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[Progress | None]:
    """A progress bar on stderr (by stream sequence) while publishing; none for a dry run."""
    if not show:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=errors) as progress:
        yield progress


async def run_replay(
    nats_url: str, selection: Selection, *, to: str | None, fresh: str | None, service: str | None, dry_run: bool
) -> Outcome:
    import nats

    connection = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1)
    replay_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    try:
        js = connection.jetstream()
        state = await stream_state(js)
        warning = retention_warning(selection, state)
        if warning:
            errors.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
        if to is not None:
            outcome = await replay_to(js, selection, to, state, dry_run=dry_run, replay_id=replay_id)
        else:
            assert fresh is not None
            assert service is not None
            outcome = await replay_fresh(js, selection, fresh, service, state, dry_run=dry_run, replay_id=replay_id)
        if warning:
            outcome.warnings.append(warning)
        return outcome
    finally:
        await connection.close()


def summary(outcome: Outcome, *, dry_run: bool, fresh: bool) -> None:
    table = Table("subject", "messages", title=f"replay {outcome.replay_id}" + (" (dry run)" if dry_run else ""))
    for subject, count in sorted(outcome.by_subject.items()):
        table.add_row(subject, str(count))
    console.print(table)
    span = f"sequences {outcome.first_seq}..{outcome.last_seq}" if outcome.last_seq else "no stored messages"
    if fresh:
        verb = "would create" if dry_run else "created"
        console.print(
            f"{verb} {len(outcome.created)} durable consumer(s): {', '.join(outcome.created)}; "
            f"{outcome.selected} stored message(s) for them ({span}). Start the service with "
            f"LIKENESS_CONSUMER_GROUP={outcome.target.removeprefix('group ')} (and LIKENESS_OUTBOX_MODE=discard "
            "for a rebuild) to read them.",
            highlight=False,
        )
        return
    verb = "would republish" if dry_run else "republished"
    console.print(
        f"{verb} {outcome.selected} message(s) for {outcome.target} ({span}); skipped "
        f"{outcome.copies_skipped} copies from earlier replays or redrives and {outcome.not_for_target} on subjects "
        f"{outcome.target} does not read. It skips events it already processed.",
        highlight=False,
    )


def replay(
    subject: Annotated[
        str,
        typer.Option(help="Subject filter, wildcards allowed (default: every event but the dead-letter notices)."),
    ] = DEFAULT_SUBJECT,
    since: Annotated[
        str | None, typer.Option(help="From this time: ISO 8601 (UTC unless a zone is given) or back from now: 2h, 3d.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (same forms as --since).")] = None,
    from_seq: Annotated[int | None, typer.Option(min=1, help="From this stream sequence.")] = None,
    to_seq: Annotated[int | None, typer.Option(min=1, help="Up to this stream sequence (with --to).")] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="DURABLE",
            help="Republish for this existing durable consumer only. It skips events it already processed, so this "
            "delivers what it missed, failed or never claimed (a scorer with a new key, a provider batch "
            "dead-lettered in an outage); it never makes paid work run twice.",
        ),
    ] = None,
    fresh: Annotated[
        str | None,
        typer.Option(
            "--fresh",
            metavar="GROUP",
            help="Create --service's durable consumers again as <durable>--GROUP from the selection's start; an "
            "instance run with LIKENESS_CONSUMER_GROUP=GROUP reads the stored events (nothing is republished).",
        ),
    ] = None,
    service: Annotated[str | None, typer.Option(help=f"With --fresh: {' or '.join(FRESH_SERVICES)}.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count and list what would be replayed; publish and create nothing.")
    ] = False,
    nats_url: NatsUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Deliver stored events again: to one consumer (--to) or to a fresh consumer group (--fresh)."""
    if (to is None) == (fresh is None):
        raise fail("replay", "choose one target: --to DURABLE, or --fresh GROUP --service NAME")
    if fresh is not None and service not in FRESH_SERVICES:
        raise fail(
            "replay",
            f"--fresh needs --service {' or '.join(FRESH_SERVICES)} (provider_adapter would pay its providers again, "
            "the gateway would call apps' webhooks again; use --to for them)",
        )
    if to is not None and service is not None:
        raise fail("replay", "--service goes with --fresh; --to names the consumer itself")
    if (since or until) and (from_seq or to_seq):
        raise fail("replay", "select by time (--since/--until) or by sequence (--from-seq/--to-seq), not both")
    if fresh is not None and (until or to_seq):
        raise fail("replay", "a fresh group reads on from its start; --until and --to-seq go with --to")
    if fresh is not None and (not re.fullmatch(r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)*", fresh) or len(fresh) > 40):
        raise fail("replay", f"group {fresh!r}: letters, digits, _ and single hyphens, at most 40 characters")
    selection = Selection(
        subject=subject,
        since=parse_moment(since) if since else None,
        until=parse_moment(until) if until else None,
        from_seq=from_seq,
        to_seq=to_seq,
    )
    if from_seq and to_seq and to_seq < from_seq:
        raise fail("replay", "--to-seq is before --from-seq")
    url = nats_url or stack_urls(None, None, data_dir, command="replay").nats_url
    outcome = run("replay", run_replay(url, selection, to=to, fresh=fresh, service=service, dry_run=dry_run))
    summary(outcome, dry_run=dry_run, fresh=fresh is not None)
