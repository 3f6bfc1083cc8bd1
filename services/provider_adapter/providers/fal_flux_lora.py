"""fal.ai Flux LoRA: `fal-ai/flux-lora-fast-training` builds the identity, `fal-ai/flux-lora` makes shots.

`create_identity` zips the references in memory (no captions), submits the training to fal's queue
with the zip inline as a `data:application/zip` URI, and returns a job id holding the trigger word
and fal's request id, so the service persists it before waiting. `identity_status` needs nothing
but that job id: it rebuilds the documented status and result URLs
(`{queue}/fal-ai/flux-lora-fast-training/requests/{id}/status`) and polls them, so a restarted
adapter resumes and never submits twice.

Progress while training is an estimate: 0 % while IN_QUEUE; while IN_PROGRESS, the last
"<done>/<total>" found in fal's logs (`?logs=1`) scaled to 5-95 %, else 5 %. fal documents the
logs' shape but not their text, so the fraction is a best guess, not a promise.

The identity_ref is `fal-flux-lora:<trigger word>:<LoRA URL>`: a shot prefixes its prompt with the
trigger word and loads the LoRA from fal's URL (fal must be able to fetch it). The ready status also
names the LoRA file, and the service copies it into our object storage (`IdentityReady.weights`), since
fal's file links are not kept forever.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import httpx

from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ProgressCallback,
    ShotRequest,
    WeightsFile,
)
from services.provider_adapter.providers.fal_queue import (
    FalAdapter,
    FalModel,
    FalSettings,
    File,
    Status,
    data_uri,
    image_size,
    request_urls,
)
from services.provider_adapter.providers.http import origin

PROVIDER_NAME: Final = "fal-flux-lora"
TRAINING_MODEL: Final = "fal-ai/flux-lora-fast-training"
MODEL: Final = "fal-ai/flux-lora"
_JOB = re.compile(rf"^{PROVIDER_NAME}:(?P<trigger>lkns[0-9a-f]{{8}}):(?P<request_id>[A-Za-z0-9._-]{{1,128}})$")
_IDENTITY = re.compile(rf"^{PROVIDER_NAME}:(?P<trigger>lkns[0-9a-f]{{8}}):(?P<lora>https?://\S+)$")
_STEP = re.compile(r"(\d+)\s*/\s*(\d+)")
_EXTENSIONS: Final = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True)
class FluxLoraSettings(FalSettings):
    """fal's settings for fal-ai/flux-lora shots, and the training's."""

    model: str = MODEL
    usd_per_megapixel: float = 0.035
    training_steps: int = 1000
    training_usd_per_run: float = 2.0


class _Training(FalModel):
    diffusers_lora_file: File
    config_file: File | None = None


def weights_file(url: str, provider_url: str, fallback_name: str) -> WeightsFile:
    """The weights at `url`, named after the last part of its path; `provider_url`'s origin is trusted."""
    name = httpx.URL(url).path.rsplit("/", 1)[-1] or fallback_name
    return WeightsFile(url=url, file_name=name[:255], trusted_origin=origin(provider_url))


def trigger_word(character_id: UUID) -> str:
    """The character's trigger word: deterministic, and unlike any word a prompt would use."""
    return f"lkns{character_id.hex[:8]}"


def reference_zip(request: IdentityRequest) -> bytes:
    """The references as a zip archive, in memory, one file per image in order (no captions)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, reference in enumerate(request.references):
            extension = _EXTENSIONS.get(reference.ref.content_type, "img")
            archive.writestr(f"{index:02d}.{extension}", reference.data)
    return buffer.getvalue()


def training_percent(status: Status) -> float:
    """An estimate (see the module doc): queue 0, running 5-95 by the last "done/total" in the logs."""
    if status.status != "IN_PROGRESS":
        return 0.0
    for line in reversed(status.logs or []):
        found = _STEP.search(line.message)
        if found is not None and int(found[2]) > 0 and int(found[1]) <= int(found[2]):
            return round(5.0 + 90.0 * int(found[1]) / int(found[2]), 1)
    return 5.0


class FalFluxLora(FalAdapter[FluxLoraSettings]):
    """`fal-flux-lora`: implements `ports.Provider` with a trained LoRA per character."""

    name = PROVIDER_NAME

    def training_arguments(self, request: IdentityRequest) -> dict[str, Any]:
        """The flux-lora-fast-training input (provider-contracts.md section 1)."""
        return {
            "images_data_url": data_uri(reference_zip(request), "application/zip"),
            "trigger_word": trigger_word(request.character_id),
            "create_masks": True,
            "steps": self._settings.training_steps,
        }

    async def create_identity(self, request: IdentityRequest) -> str:
        queue = self.queue()
        if not request.references:
            raise PermanentProviderError("An identity needs at least one reference image; upload one.")
        async with queue.http.slots:
            queued = await queue.submit(TRAINING_MODEL, self.training_arguments(request))
        return f"{PROVIDER_NAME}:{trigger_word(request.character_id)}:{queued.request_id}"

    async def identity_status(self, job_id: str) -> IdentityStatus:
        queue = self.queue()
        job = _JOB.match(job_id)
        if job is None:
            raise PermanentProviderError(f"{job_id!r} is not a {PROVIDER_NAME} training job.")
        queued = request_urls(self._settings.queue_url, TRAINING_MODEL, job["request_id"])
        status = await queue.status(queued, logs=True)
        if status.status in ("IN_QUEUE", "IN_PROGRESS"):
            return IdentityStatus(state="pending", percent=training_percent(status))
        if status.status != "COMPLETED" or status.error is not None:
            failure = await queue.failure(queued, status)
            return IdentityStatus(state="failed", reason=f"fal's LoRA training failed: {failure}")
        try:
            output, _ = await queue.result(queued, _Training)
        except PermanentProviderError as refused:  # a 422 result: the references could not be trained on
            return IdentityStatus(state="failed", reason=f"fal's LoRA training failed: {refused}")
        seconds = status.metrics.inference_time if status.metrics is not None else None
        return IdentityStatus(
            state="ready",
            percent=100.0,
            identity_ref=f"{PROVIDER_NAME}:{job['trigger']}:{output.diffusers_lora_file.url}",
            training_seconds=float(seconds or 0.0),
            cost_usd=self._settings.training_usd_per_run,
            weights=weights_file(output.diffusers_lora_file.url, self._settings.queue_url, "lora.safetensors"),
        )

    def arguments(self, request: ShotRequest) -> dict[str, Any]:
        """The flux-lora input for one shot: the trigger word leads the prompt, the LoRA at scale 1."""
        identity = _IDENTITY.match(request.identity_ref)
        if identity is None:
            raise PermanentProviderError(f"{request.identity_ref!r} is not a {PROVIDER_NAME} identity; rebuild it.")
        params = request.params
        return {
            "prompt": f"{identity['trigger']} {params.prompt}",
            "loras": [{"path": identity["lora"], "scale": 1.0}],
            "image_size": image_size(params.aspect_ratio),
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance,
            "seed": params.seed,
            "num_images": 1,
            "output_format": "png",
            "enable_safety_checker": True,
        }

    async def start_shot(self, request: ShotRequest) -> str:
        queue = self.queue()
        return await queue.start_job(self.name, MODEL, self.arguments(request))

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        return await self.queue().finish_job(self.name, job_id, on_progress)


flux_lora_provider = FalFluxLora.on
