"""Object storage through the minio client (the same code for real MinIO and the embedded server).

Keys are content-addressed: `<tenant>/images/<sha256>` and `<tenant>/artifacts/<sha256>` (model weights),
so storing the same bytes twice is one object.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

from minio import Minio
from minio.error import S3Error
from urllib3 import BaseHTTPResponse

from infra.settings import InfraSettings

_MISSING = {"NoSuchKey", "NoSuchObject", "NotFound"}
_PART_BYTES = 16 * 1024 * 1024
_CHUNK_BYTES = 1024 * 1024


def image_key(tenant_id: str, sha256: str) -> str:
    return f"{tenant_id}/images/{sha256}"


def artifact_key(tenant_id: str, sha256: str) -> str:
    return f"{tenant_id}/artifacts/{sha256}"


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size_bytes: int


class ObjectStore:
    def __init__(self, client: Minio, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    @classmethod
    def from_settings(cls, settings: InfraSettings) -> ObjectStore:
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
        )
        return cls(client, settings.s3_bucket)

    async def ensure_bucket(self) -> None:
        def ensure() -> None:
            if not self._client.bucket_exists(self.bucket):
                self._client.make_bucket(self.bucket)

        await asyncio.to_thread(ensure)

    async def put_image(self, tenant_id: str, data: bytes, content_type: str) -> StoredObject:
        sha256 = hashlib.sha256(data).hexdigest()
        key = image_key(tenant_id, sha256)
        await asyncio.to_thread(
            self._client.put_object, self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )
        return StoredObject(key=key, sha256=sha256, size_bytes=len(data))

    async def put_file(self, key: str, file: BinaryIO, size: int, content_type: str) -> None:
        """Stream `size` bytes of an open file (from its start) to `key`, in parts: for weights too big for memory."""

        def put() -> None:
            file.seek(0)
            self._client.put_object(self.bucket, key, file, size, content_type=content_type, part_size=_PART_BYTES)

        await asyncio.to_thread(put)

    async def size_of(self, key: str) -> int | None:
        """The object's size, or None when there is no such key."""

        def stat() -> int | None:
            try:
                return int(self._client.stat_object(self.bucket, key).size or 0)
            except S3Error as error:
                if error.code in _MISSING:
                    return None
                raise

        return await asyncio.to_thread(stat)

    async def stream(self, key: str) -> tuple[str, int, AsyncIterator[bytes]] | None:
        """(content type, size, the bytes in 1 MB chunks) for `key`, or None: for objects too big to hold."""

        def open_object() -> BaseHTTPResponse | None:
            try:
                return self._client.get_object(self.bucket, key)
            except S3Error as error:
                if error.code in _MISSING:
                    return None
                raise

        response = await asyncio.to_thread(open_object)
        if response is None:
            return None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while data := await asyncio.to_thread(response.read, _CHUNK_BYTES):
                    yield data
            finally:
                response.close()
                response.release_conn()

        content_type = response.headers.get("Content-Type", "application/octet-stream")
        return content_type, int(response.headers.get("Content-Length", "0")), chunks()

    async def get(self, key: str) -> bytes:
        def read() -> bytes:
            response = self._client.get_object(self.bucket, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return await asyncio.to_thread(read)

    async def get_with_type(self, key: str) -> tuple[bytes, str] | None:
        """The object and its content type, or None when there is no such key."""

        def read() -> tuple[bytes, str] | None:
            try:
                response = self._client.get_object(self.bucket, key)
            except S3Error as error:
                if error.code in _MISSING:
                    return None
                raise
            try:
                return bytes(response.read()), response.headers.get("Content-Type", "application/octet-stream")
            finally:
                response.close()
                response.release_conn()

        return await asyncio.to_thread(read)

    async def exists(self, key: str) -> bool:
        def stat() -> bool:
            try:
                self._client.stat_object(self.bucket, key)
            except S3Error as error:
                if error.code in _MISSING:
                    return False
                raise
            return True

        return await asyncio.to_thread(stat)
