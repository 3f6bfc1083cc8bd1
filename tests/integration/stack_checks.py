"""Checks any stack must pass (embedded or containers): what the services rely on from each server."""

from __future__ import annotations

import io
import uuid
from urllib.parse import urlsplit

import asyncpg
import nats
import pytest
from minio import Minio
from minio.error import S3Error
from nats.js.api import StreamConfig

from infra.stack import StackEndpoints


def minio_client(endpoints: StackEndpoints, *, secret_key: str | None = None) -> Minio:
    return Minio(
        endpoints.s3_endpoint,
        access_key=endpoints.s3_access_key,
        secret_key=secret_key or endpoints.s3_secret_key,
        secure=endpoints.s3_secure,
    )


async def check_jetstream_deduplicates(endpoints: StackEndpoints) -> None:
    """A publish repeated with the same Nats-Msg-Id is acknowledged as a duplicate and stored once."""
    name = f"CHECK_{uuid.uuid4().hex[:12].upper()}"
    subject = f"stackcheck.{name.lower()}.v1"  # outside likeness.>, which the LIKENESS stream owns
    client = await nats.connect(endpoints.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = client.jetstream()
        await js.add_stream(StreamConfig(name=name, subjects=[subject], duplicate_window=60.0))
        event_id = str(uuid.uuid4())
        first = await js.publish(subject, b"shot scored", headers={"Nats-Msg-Id": event_id})
        again = await js.publish(subject, b"shot scored", headers={"Nats-Msg-Id": event_id})
        other = await js.publish(subject, b"another", headers={"Nats-Msg-Id": str(uuid.uuid4())})
        assert not first.duplicate  # None or False: nats-py leaves it unset on a first publish
        assert again.duplicate is True
        assert not other.duplicate
        assert again.seq == first.seq
        info = await js.stream_info(name)
        assert info.state.messages == 2
        await js.delete_stream(name)
    finally:
        await client.close()


async def check_postgres_requires_password(endpoints: StackEndpoints) -> None:
    """The generated password opens database `likeness`; a wrong one is refused."""
    connection = await asyncpg.connect(endpoints.database_url, timeout=10)
    try:
        assert await connection.fetchval("SELECT current_database()") == "likeness"
    finally:
        await connection.close()
    url = urlsplit(endpoints.database_url)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=url.hostname,
            port=url.port,
            user=url.username,
            password="not-the-password",
            database=url.path.lstrip("/"),
            timeout=10,
        )


def check_object_store_roundtrip(endpoints: StackEndpoints) -> None:
    """put, stat, get and list on the stack's bucket with the minio client; a wrong secret is refused."""
    client = minio_client(endpoints)
    key = f"checks/{uuid.uuid4().hex}.png"
    body = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes * 64
    client.put_object(
        endpoints.s3_bucket,
        key,
        io.BytesIO(body),
        length=len(body),
        content_type="image/png",
        metadata={"sha256": "check"},
    )
    try:
        status = client.stat_object(endpoints.s3_bucket, key)
        assert status.size == len(body)
        assert status.content_type == "image/png"
        response = client.get_object(endpoints.s3_bucket, key)
        try:
            assert response.read() == body
        finally:
            response.close()
            response.release_conn()
        listed = [o.object_name for o in client.list_objects(endpoints.s3_bucket, prefix="checks/", recursive=True)]
        assert key in listed
        with pytest.raises(S3Error) as refused:
            minio_client(endpoints, secret_key="wrong-secret-key-wrong-secret-key").stat_object(
                endpoints.s3_bucket, key
            )
        assert refused.value.code in {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}
    finally:
        client.remove_object(endpoints.s3_bucket, key)
