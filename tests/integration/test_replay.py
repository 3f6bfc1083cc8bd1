"""`likeness replay`: rebuild storage's records from the stream into an empty database, re-deliver what a
consumer missed, `--dry-run`, and the retention warning.

These tests run on a private embedded stack (NATS, PostgreSQL, object store) of their own: the session's
stream carries every other test's events, and "the rebuilt database equals the original" is only an honest
claim when the stream holds exactly the history database A recorded. The tests share that stack and run in
file order; the retention test, last, removes history from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

import asyncpg
import nats
import pytest
from faststream.nats import NatsMessage, NatsRouter
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from contracts import (
    STREAM_NAME,
    CharacterRequested,
    ClipScore,
    Event,
    FaceScore,
    GenerateShot,
    HumanVoteCast,
    IdentityFailed,
    IdentityProgress,
    IdentityReady,
    ShotFailed,
    ShotGenerated,
    ShotParams,
    ShotRequested,
    ShotScore,
    ShotScored,
    ShotStored,
)
from infra.bus import GROUP_DURABLES, settle, subscribe, use_consumer_group
from infra.cli import app as cli
from infra.runtime import Runtime
from infra.settings import InfraSettings
from infra.stack import StackEndpoints
from services.storage.app import MIGRATIONS
from services.storage.subscribers import build_router
from tests.conftest import running_stack
from tests.fakes import image_ref

pytestmark = pytest.mark.integration

TENANT = "studio-replay"


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEndpoints]:
    for stack in running_stack(tmp_path_factory.mktemp("replay-stack")):
        yield stack.endpoints


def settings_for(endpoints: StackEndpoints, *, database_url: str | None = None, **extra: Any) -> InfraSettings:
    return InfraSettings(
        nats_url=endpoints.nats_url,
        database_url=SecretStr(database_url or endpoints.database_url),
        s3_endpoint=endpoints.s3_endpoint,
        s3_access_key=SecretStr(endpoints.s3_access_key),
        s3_secret_key=SecretStr(endpoints.s3_secret_key),
        s3_bucket=endpoints.s3_bucket,
        **extra,
    )


@contextlib.asynccontextmanager
async def running(runtime: Runtime, router: NatsRouter) -> AsyncIterator[Runtime]:
    """A worker in this process, as worker_app runs it: resources, stream, relay, then consuming."""
    runtime.broker.include_router(router)
    try:
        await runtime.open()
        await runtime.declare_stream()
        runtime.delivery.relay.start()
        await runtime.broker.start()
        yield runtime
    finally:
        use_consumer_group("")  # routers built later (other tests) declare the services' own durables
        await runtime.broker.stop()
        await runtime.close()


@contextlib.asynccontextmanager
async def jetstream(endpoints: StackEndpoints) -> AsyncIterator[JetStreamContext]:
    connection = await nats.connect(endpoints.nats_url)
    try:
        yield connection.jetstream()
    finally:
        await connection.close()


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():  # noqa: ASYNC110 - polling JetStream and a database
            await asyncio.sleep(0.05)


async def caught_up(js: JetStreamContext, durables: list[str]) -> bool:
    """Every one of `durables` has nothing left to deliver and nothing in flight (lag 0)."""
    for durable in durables:
        info = await js.consumer_info(STREAM_NAME, durable)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def cli_replay(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, ["replay", *args])


async def publish(js: JetStreamContext, event: Event) -> int:
    ack = await js.publish(
        event.subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": str(event.event_id)}
    )
    return ack.seq


# --- the history: what the gateway, provider_adapter and scoring would publish for two characters --------------


def a_score(stored: ShotStored, *, verdict: Literal["same", "different"], key: str, distance: float) -> ShotScored:
    score = ShotScore(
        verdict=verdict,
        basis="face",
        reason=f"face distance {distance}",
        face=FaceScore(
            faces_found=1,
            candidates=1,
            references_with_face=2,
            distance=distance,
            mean_distance=distance,
            max_distance=distance,
            centroid_distance=distance,
            same_below=0.6,
            uncertain_below=0.6,
            model="dlib",
        ),
        clip=ClipScore(image_similarity=0.8, calibrated=False, model="clip"),
        scorer_version="scoring-2",
        scorer_key=key,
        calibration_profile=None,
        scoring_ms=12,
    )
    return ShotScored.follow(stored, key=key, shot_id=stored.shot_id, character_id=stored.character_id, score=score)


def history() -> list[list[Event]]:
    """Steps of a realistic history; each step is published once storage handled the one before (as live, where
    every event follows from an earlier one). Times are spread over an hour in the past."""
    start = datetime.now(UTC) - timedelta(hours=1)
    clock = iter(start + timedelta(seconds=37 * i) for i in range(1000))

    def at(event: Event) -> Event:  # each event happens a little after the one before
        return event.model_copy(update={"occurred_at": next(clock)})

    ana_id, ben_id = uuid.uuid4(), uuid.uuid4()
    ana = CharacterRequested(
        correlation_id=ana_id,
        tenant_id=TENANT,
        character_id=ana_id,
        name="Ana",
        strategy="lora",
        provider="sim",
        references=[image_ref(TENANT, seed=1), image_ref(TENANT, seed=2)],
    )
    ben = CharacterRequested(
        correlation_id=ben_id,
        tenant_id=TENANT,
        character_id=ben_id,
        name="Ben",
        strategy="instant_reference",
        provider="sim",
        references=[image_ref(TENANT, seed=3)],
    )
    steps: list[list[Event]] = [[at(ana)], [at(ben)]]
    common = {"correlation_id": ana_id, "tenant_id": TENANT, "character_id": ana_id, "provider": "sim"}
    steps.append([at(IdentityProgress(**common, percent=40.0, message="training"))])
    steps.append([at(IdentityFailed(**{**common, "correlation_id": ben_id, "character_id": ben_id}, reason="no face"))])
    steps.append([at(IdentityProgress(**common, percent=80.0))])
    steps.append(
        [at(IdentityReady(**common, identity_ref="sim:ana", training_seconds=61.5, cost_usd=0.5, simulated=True))]
    )
    shots = [
        ShotRequested(
            correlation_id=ana_id,
            tenant_id=TENANT,
            shot_id=uuid.uuid4(),
            character_id=ana_id,
            params=ShotParams(prompt=prompt),
        )
        for prompt in ("on a beach", "in the rain", "at night")
    ]
    steps += [[at(shot)] for shot in shots]
    generated: list[ShotGenerated] = []
    for i, shot in enumerate(shots):
        command = GenerateShot.follow(
            shot,
            shot_id=shot.shot_id,
            character_id=ana_id,
            provider="sim",
            identity_ref="sim:ana",
            params=shot.params,
            references=ana.references,
        )
        steps.append([at(command)])  # provider_adapter's command: storage does not read it
        if i == 2:
            continue
        done = ShotGenerated.follow(
            command,
            shot_id=shot.shot_id,
            character_id=ana_id,
            provider="sim",
            image=image_ref(TENANT, seed=10 + i),
            latency_ms=900.0 + i,
            cost_usd=0.04,
            attempts=1 + i,
        )
        generated.append(done)
        steps.append([at(done)])
    stored = [
        ShotStored.follow(
            done,
            shot_id=done.shot_id,
            character_id=ana_id,
            prompt=shots[i].params.prompt,
            image=done.image,
            references=ana.references,
        )
        for i, done in enumerate(generated)
    ]
    key = "scoring-2-aaaaaaaaaaaa"
    steps.append([at(a_score(stored[0], verdict="same", key=key, distance=0.31))])
    steps.append(
        [
            at(
                ShotFailed(
                    correlation_id=ana_id,
                    tenant_id=TENANT,
                    shot_id=shots[2].shot_id,
                    character_id=ana_id,
                    stage="generation",
                    reason="provider refused",
                )
            )
        ]
    )
    steps.append([at(a_score(stored[1], verdict="different", key=key, distance=0.72))])
    vote = {"correlation_id": ana_id, "tenant_id": TENANT, "character_id": ana_id, "shot_id": shots[0].shot_id}
    steps.append([at(HumanVoteCast(**vote, rater="rater-1", answer="yes"))])
    steps.append([at(HumanVoteCast(**vote, rater="rater-2", answer="unsure"))])
    steps.append([at(HumanVoteCast(**vote, rater="rater-2", answer="no"))])  # rater-2 changes their mind
    steps.append([at(a_score(stored[0], verdict="same", key="scoring-2-bbbbbbbbbbbb", distance=0.29))])  # a rescore
    late = ShotRequested(
        correlation_id=ana_id,
        tenant_id=TENANT,
        shot_id=uuid.uuid4(),
        character_id=ana_id,
        params=ShotParams(prompt="portrait"),
    )
    steps.append([at(late)])  # after completion: the character is ready again
    stranger = ShotRequested(
        correlation_id=ben_id,
        tenant_id="studio-other",
        shot_id=uuid.uuid4(),
        character_id=ben_id,
        params=ShotParams(prompt="portrait"),
    )
    steps.append([at(stranger)])  # another tenant's shot for Ben: storage answers with a ShotFailed of its own
    return steps


# Columns whose value is the wall-clock time at which storage wrote the row, not a fact from any event: a rebuild
# writes them at another time, so they cannot be compared. Everything else is compared row for row.
PROCESSING_TIME = {
    "characters": {"updated_at"},  # when storage last changed the row (every handler touches it)
    "cost_alerts": {"alerted_at"},  # when the alert was recorded (no budget here, so no rows; listed to be exact)
}


def comparable(table: str, row: dict[str, Any], consumed: set[uuid.UUID]) -> dict[str, Any]:
    kept = {name: value for name, value in row.items() if name not in PROCESSING_TIME.get(table, set())}
    if row.get("status") == "failed" and "finished_at" in row:
        # a failed shot (or take): mark_shot_failed is given the shot id, stage and reason, not the event, so its
        # finished_at is the time storage recorded the failure (a scored one's is its score's occurred_at: compared)
        kept.pop("finished_at")
    if table == "event_log" and row["event_id"] not in consumed:
        # an event storage itself derived (ReferencesStored, ShotStored, CharacterCompleted, its ShotFailed):
        # Event.follow stamps occurred_at when it is derived, and a rebuild derives it again; its id and every
        # other field are the same (ids follow from their cause)
        kept["occurred_at"] = "derived"
        kept["payload"] = {**row["payload"], "occurred_at": "derived"}
    return kept


async def records_tables(pool: asyncpg.Pool, consumed: set[uuid.UUID]) -> dict[str, list[dict[str, Any]]]:
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema='records' ORDER BY table_name"
    )
    found = {}
    for table in (row["table_name"] for row in tables):
        rows = [comparable(table, dict(row), consumed) for row in await pool.fetch(f"SELECT * FROM records.{table}")]  # noqa: S608 - catalogue names
        found[table] = sorted(rows, key=lambda row: json.dumps(row, default=str, sort_keys=True))
    return found


def differences(a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for table in sorted(set(a) | set(b)):
        only_a = [row for row in a.get(table, []) if row not in b.get(table, [])]
        only_b = [row for row in b.get(table, []) if row not in a.get(table, [])]
        if only_a or only_b:
            lines.append(f"records.{table}: only in the original {only_a}; only in the rebuild {only_b}")
    return "\n".join(lines)[:6000]


async def claims(pool: asyncpg.Pool) -> set[tuple[str, uuid.UUID]]:
    rows = await pool.fetch("SELECT consumer, event_id FROM messaging.processed_events WHERE consumer LIKE 'storage.%'")
    return {(row["consumer"], row["event_id"]) for row in rows}


async def create_database(endpoints: StackEndpoints, name: str) -> str:
    connection = await asyncpg.connect(endpoints.database_url)
    try:
        await connection.execute(f"CREATE DATABASE {name}")
    finally:
        await connection.close()
    return endpoints.database_url.rsplit("/", 1)[0] + f"/{name}"


async def test_a_rebuild_from_the_stream_into_an_empty_database_equals_the_original(
    private_stack: StackEndpoints,
) -> None:
    steps = history()
    consumed = {event.event_id for step in steps for event in step}
    original = Runtime("storage", settings_for(private_stack), migrations=MIGRATIONS)
    async with jetstream(private_stack) as js, running(original, build_router(original)):
        own = [name for name in GROUP_DURABLES[""] if name.startswith("storage-")]

        async def settled() -> bool:  # handled, and what it caused published (and handled, if storage reads it)
            unsent = await original.pool.fetchval("SELECT count(*) FROM messaging.outbox WHERE published_at IS NULL")
            return unsent == 0 and await caught_up(js, own)

        for step in steps:
            for event in step:
                await publish(js, event)
            await wait_for(settled)
        tables_a = await records_tables(original.pool, consumed)
        claims_a = await claims(original.pool)
        last_before = (await js.stream_info(STREAM_NAME)).state.last_seq

    recorded = {table: len(rows) for table, rows in tables_a.items()}
    # the history is in A (the other tables, and every event logged, are compared below)
    assert {table: recorded[table] for table in ("characters", "reference_images", "scores", "shots", "votes")} == {
        "characters": 2,
        "reference_images": 3,
        "scores": 3,
        "shots": 4,
        "votes": 2,
    }
    assert recorded["event_log"] >= len(consumed) - 3  # every event storage reads (all but the GenerateShot commands)

    dry = await cli_replay(
        "--fresh",
        "rebuild",
        "--service",
        "storage",
        "--from-seq",
        "1",
        "--dry-run",
        "--nats-url",
        private_stack.nats_url,
    )
    assert dry.exit_code == 0, dry.output
    assert "would create 9 durable consumer(s)" in dry.stdout
    async with jetstream(private_stack) as js:
        assert not [info.name for info in await js.consumers_info(STREAM_NAME) if info.name.endswith("--rebuild")]

    done = await cli_replay(
        "--fresh", "rebuild", "--service", "storage", "--from-seq", "1", "--nats-url", private_stack.nats_url
    )
    assert done.exit_code == 0, done.output
    assert "created 9 durable consumer(s)" in done.stdout

    database_b = await create_database(private_stack, "likeness_rebuild")
    rebuilt = Runtime(
        "storage",
        settings_for(private_stack, database_url=database_b, consumer_group="rebuild", outbox_mode="discard"),
        migrations=MIGRATIONS,
    )
    # Every publish on likeness.>, as a plain NATS subscriber hears it: JetStream would drop a re-announced event
    # as a duplicate of the original within its 2-minute window, so the stream alone cannot show one.
    listener = await nats.connect(private_stack.nats_url)
    announced: list[str] = []

    async def heard(msg: Msg) -> None:
        announced.append(msg.subject)

    await listener.subscribe("likeness.>", cb=heard)
    async with jetstream(private_stack) as js, running(rebuilt, build_router(rebuilt)):
        group = list(GROUP_DURABLES["rebuild"])
        assert len(group) == 9
        assert all(name.endswith("--rebuild") for name in group)
        await wait_for(lambda: caught_up(js, group))
        await rebuilt.delivery.relay.drain_once()
        tables_b = await records_tables(rebuilt.pool, consumed)
        unsent = await rebuilt.pool.fetchval("SELECT count(*) FROM messaging.outbox WHERE published_at IS NULL")
        claims_b = await claims(rebuilt.pool)
        last_after = (await js.stream_info(STREAM_NAME)).state.last_seq
    await listener.flush()
    await listener.close()

    assert tables_b == tables_a, differences(tables_a, tables_b)
    assert unsent == 0
    assert claims_b == {(f"{name}--rebuild", event_id) for name, event_id in claims_a}  # the group's own claims
    assert announced == [], "the rebuild announced its history again (LIKENESS_OUTBOX_MODE=discard)"
    assert last_after == last_before


# --- --to: a consumer that missed events gets them; claims keep a second replay from changing anything -----------


class ReplayProbe(Event):
    """A test-only event on its own subject, so no service consumer meets it."""

    subject: ClassVar[str] = "likeness.test.replay_probe.v1"
    type: Literal["ReplayProbe"] = "ReplayProbe"
    note: str


class ProbeConsumers:
    """`late` records each probe once (claims in messaging.processed_events); `bystander` reads the same subject."""

    def __init__(self, runtime: Runtime) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.runtime = runtime
        self.late = f"replay-test-late-{suffix}"
        self.bystander = f"replay-test-bystander-{suffix}"
        self.recorded: Counter[str] = Counter()
        self.bystander_seen: Counter[str] = Counter()

    def router(self, deliver_policy: DeliverPolicy = DeliverPolicy.NEW) -> NatsRouter:
        router = NatsRouter()

        async def record(event: ReplayProbe) -> None:
            delivery = self.runtime.delivery
            async with delivery.unit_of_work(event, delivery.consumer("probe")) as work:
                if not work.already_done:
                    self.recorded[event.note] += 1

        async def look(event: ReplayProbe) -> None:
            self.bystander_seen[event.note] += 1

        @subscribe(router, ReplayProbe, self.late, deliver_policy=deliver_policy)
        async def on_probe(event: ReplayProbe, msg: NatsMessage) -> None:
            await settle(msg, event, record(event))

        @subscribe(router, ReplayProbe, self.bystander, deliver_policy=deliver_policy)
        async def on_probe_too(event: ReplayProbe, msg: NatsMessage) -> None:
            await settle(msg, event, look(event))

        return router


def probe(note: str) -> ReplayProbe:
    return ReplayProbe(correlation_id=uuid.uuid4(), tenant_id=TENANT, note=note)


async def test_replay_to_a_consumer_delivers_what_it_missed_once(private_stack: StackEndpoints) -> None:
    url = private_stack.nats_url
    async with jetstream(private_stack) as js:
        for note in ("one", "two", "three"):  # before the consumer exists: it starts at new messages
            await publish(js, probe(note))
        runtime = Runtime("replaytest", settings_for(private_stack), migrations=None)
        consumers = ProbeConsumers(runtime)
        async with running(runtime, consumers.router()):
            both = [consumers.late, consumers.bystander]
            await publish(js, probe("four"))
            await wait_for(lambda: caught_up(js, both))
            assert consumers.recorded == Counter(four=1)
            last_seq = (await js.stream_info(STREAM_NAME)).state.last_seq

            missing = await cli_replay("--to", "replay-test-nobody", "--nats-url", url)
            assert missing.exit_code == 2
            assert "no durable consumer 'replay-test-nobody'" in missing.stderr
            assert consumers.late in missing.stderr  # the durables that do exist are listed

            dry = await cli_replay(
                "--to", consumers.late, "--subject", ReplayProbe.subject, "--dry-run", "--nats-url", url
            )
            assert dry.exit_code == 0, dry.output
            assert "would republish 4 message(s)" in dry.stdout
            assert ReplayProbe.subject in dry.stdout
            assert (await js.stream_info(STREAM_NAME)).state.last_seq == last_seq  # a dry run publishes nothing

            first = await cli_replay("--to", consumers.late, "--nats-url", url)
            assert first.exit_code == 0, first.output
            assert "republished 4 message(s)" in first.stdout
            await wait_for(lambda: caught_up(js, both))
            assert consumers.recorded == Counter(one=1, two=1, three=1, four=1)
            assert consumers.bystander_seen == Counter(four=1)  # the copies were for `late` only

            second = await cli_replay("--to", consumers.late, "--subject", ReplayProbe.subject, "--nats-url", url)
            assert second.exit_code == 0, second.output
            assert "republished 4 message(s)" in second.stdout
            assert "skipped 4 copies" in second.stdout  # the first replay's copies are not replayed again
            await wait_for(lambda: caught_up(js, both))
            assert consumers.recorded == Counter(one=1, two=1, three=1, four=1)  # claims: nothing ran twice


async def test_a_consumer_group_reads_again_with_claims_of_its_own(private_stack: StackEndpoints) -> None:
    """A group on the same database processes what the service's own consumers already claimed."""
    async with jetstream(private_stack) as js:
        first = Runtime("grouptest", settings_for(private_stack), migrations=None)
        own = ProbeConsumers(first)
        async with running(first, own.router()):
            await publish(js, probe("five"))
            await wait_for(lambda: caught_up(js, [own.late]))
            assert own.recorded == Counter(five=1)
        start = (await js.stream_info(STREAM_NAME)).state.last_seq
        again = Runtime("grouptest", settings_for(private_stack, consumer_group="again"), migrations=None)
        grouped = ProbeConsumers(again)
        grouped.late, grouped.bystander = own.late, own.bystander  # the same durables, under the group
        async with running(again, grouped.router(DeliverPolicy.ALL)):
            names = [f"{own.late}--again", f"{own.bystander}--again"]
            await wait_for(lambda: caught_up(js, names))
            assert grouped.recorded["five"] == 1, "the group skipped an event the service's own consumer claimed"
        assert start > 0


# --- retention: asking for history the stream no longer keeps says so -----------------------------------------


async def test_a_replay_reaching_past_retention_says_what_is_gone(private_stack: StackEndpoints) -> None:
    async with jetstream(private_stack) as js:
        before = (await js.stream_info(STREAM_NAME)).state
        await js.purge_stream(STREAM_NAME, seq=before.last_seq - 2)  # keep the newest three messages
        durable = next(info.name for info in await js.consumers_info(STREAM_NAME) if info.config.durable_name)
    result = await cli_replay("--to", durable, "--from-seq", "1", "--dry-run", "--nats-url", private_stack.nats_url)
    assert result.exit_code == 0, result.output
    gone = before.last_seq - 3
    assert f"events before sequence {gone + 1} are gone" in result.stderr
    assert "max age 30 days, max bytes unlimited" in result.stderr
    assert f"{gone} of the selected sequences (1..{gone}) cannot be replayed" in result.stderr
    since = await cli_replay("--to", durable, "--since", "3d", "--dry-run", "--nats-url", private_stack.nats_url)
    assert since.exit_code == 0, since.output
    assert f"sequences 1..{gone} are no longer kept" in since.stderr
