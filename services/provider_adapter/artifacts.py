"""Copying a provider's trained weights into our object storage, before the provider's link expires.

The file is streamed to a temporary file (weights can be hundreds of megabytes) with its sha256, then
stored under `<tenant>/artifacts/<sha256>`, so copying the same weights twice is one object. The link
is fetched by `infra.safe_fetch` (public addresses only, except the provider's own origin), without
any key: providers hand out weights on public CDN links.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable

import httpx

from contracts import ArtifactRef
from infra.objects import ObjectStore, artifact_key
from infra.safe_fetch import FetchFailed, FetchRefused, Resolve, fetch_to_file, system_resolve
from services.provider_adapter.ports import PermanentProviderError, TransientProviderError, WeightsFile

log = logging.getLogger(__name__)

Heartbeat = Callable[[float, str], Awaitable[None]]

_HEARTBEAT_BYTES = 32 * 1024 * 1024


class WeightsCopier:
    def __init__(
        self,
        store: ObjectStore,
        *,
        timeout: httpx.Timeout,
        max_bytes: int,
        resolve: Resolve = system_resolve,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.resolve = resolve

    async def copy(self, tenant_id: str, weights: WeightsFile, heartbeat: Heartbeat | None = None) -> ArtifactRef:
        """The stored copy. Raises TransientProviderError (try again) or PermanentProviderError."""
        next_beat = _HEARTBEAT_BYTES

        async def progress(size: int) -> None:
            nonlocal next_beat
            if heartbeat is not None and size >= next_beat:
                next_beat += _HEARTBEAT_BYTES
                await heartbeat(100.0, f"copying the trained weights ({size // (1024 * 1024)} MB so far)")

        trusted = [weights.trusted_origin] if weights.trusted_origin else []
        with tempfile.TemporaryFile(prefix="likeness-weights-") as sink:
            async with httpx.AsyncClient(timeout=self.timeout, headers={"User-Agent": "likeness/0.1"}) as client:
                try:
                    fetched = await fetch_to_file(
                        client,
                        weights.url,
                        sink,
                        max_bytes=self.max_bytes,
                        resolve=self.resolve,
                        trusted_origins=trusted,
                        progress=progress,
                    )
                except FetchFailed as failed:
                    raise TransientProviderError(
                        f"could not copy the trained weights {weights.file_name}: {failed}",
                        retry_after_s=failed.retry_after_s,
                    ) from None
                except FetchRefused as refused:
                    raise PermanentProviderError(
                        f"the trained weights {weights.file_name} cannot be copied: {refused}"
                    ) from None
            key = artifact_key(tenant_id, fetched.sha256)
            if await self.store.size_of(key) != fetched.size_bytes:
                await self.store.put_file(key, sink, fetched.size_bytes, fetched.content_type)
        log.info("copied weights %s (%d bytes) to %s", weights.file_name, fetched.size_bytes, key)
        return ArtifactRef(
            key=key,
            sha256=fetched.sha256,
            size_bytes=fetched.size_bytes,
            content_type=fetched.content_type,
            file_name=weights.file_name,
        )
