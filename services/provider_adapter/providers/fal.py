"""fal.ai Instant Character (`fal-ai/instant-character`): reference-based identity, no training.

The identity is the reference photos themselves: `create_identity` calls nothing and returns a job
id made from the references' sha256s, and `identity_status` reports it ready at once, at no cost.
A shot goes through fal's queue (`fal_queue`): `start_shot` submits, `finish_shot` polls until
COMPLETED (resuming from the saved job id after a restart), reads the output and downloads
`images[0].url`. The first reference travels inline as a base64 `data:` URI (documented
as accepted for file inputs).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, Final

from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ProgressCallback,
    ShotRequest,
)
from services.provider_adapter.providers.fal_queue import (
    IMAGE_SIZES,
    KEY_SETTING,
    NAMED_SIZES,
    FalAdapter,
    FalSettings,
    data_uri,
    image_size,
    sniff_content_type,
)

__all__ = [
    "IMAGE_SIZES",
    "KEY_SETTING",
    "MODEL",
    "NAMED_SIZES",
    "PROVIDER_NAME",
    "FalInstantCharacter",
    "FalSettings",
    "data_uri",
    "fal_provider",
    "identity_for",
    "sniff_content_type",
]

PROVIDER_NAME: Final = "fal-instant-character"
MODEL: Final = "fal-ai/instant-character"
_DIGEST = re.compile(r"^(?P<provider>[a-z0-9-]+):(?P<digest>[0-9a-f]{64})$")


def identity_for(reference_sha256s: Sequence[str], provider: str = PROVIDER_NAME) -> str:
    """The identity of an instant-reference character: its references, in order, by sha256."""
    return f"{provider}:{hashlib.sha256(':'.join(reference_sha256s).encode()).hexdigest()}"


class FalInstantCharacter(FalAdapter[FalSettings]):
    """`fal-instant-character`: implements `ports.Provider` over fal's queue API.

    Subclasses that also build no identity (the references are the identity) change `name` and
    `arguments`.
    """

    name = PROVIDER_NAME

    async def create_identity(self, request: IdentityRequest) -> str:
        if not request.references:
            raise PermanentProviderError("An identity needs at least one reference image; upload one.")
        return identity_for([reference.ref.sha256 for reference in request.references], self.name)

    async def identity_status(self, job_id: str) -> IdentityStatus:
        match = _DIGEST.match(job_id)
        if match is None or match["provider"] != self.name:
            raise PermanentProviderError(f"{job_id!r} is not a {self.name} identity.")
        return IdentityStatus(state="ready", percent=100.0, identity_ref=job_id, training_seconds=0.0, cost_usd=0.0)

    def arguments(self, request: ShotRequest) -> dict[str, Any]:
        """The instant-character input for one shot (docs: fal.ai/models/fal-ai/instant-character/api)."""
        params = request.params
        reference = request.references[0]
        return {
            "prompt": params.prompt,
            "image_url": data_uri(reference.data, reference.ref.content_type),
            "negative_prompt": params.negative_prompt,
            "seed": params.seed,
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance,
            "image_size": image_size(params.aspect_ratio),
            "num_images": 1,
            "output_format": "png",
            "enable_safety_checker": True,
        }

    async def start_shot(self, request: ShotRequest) -> str:
        queue = self.queue()
        if not request.references:
            raise PermanentProviderError("A shot needs at least one reference image.")
        if request.identity_ref != identity_for([reference.ref.sha256 for reference in request.references], self.name):
            raise PermanentProviderError(
                f"{request.identity_ref!r} is not the {self.name} identity of these references; rebuild it."
            )
        return await queue.start_job(self.name, self._settings.model, self.arguments(request))

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        return await self.queue().finish_job(self.name, job_id, on_progress)


fal_provider = FalInstantCharacter.on
