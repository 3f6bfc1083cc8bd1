"""fal.ai Flux Redux (`fal-ai/flux/dev/redux`): the "Flux Dev reference" approach, no training.

Redux conditions Flux Dev on the reference image itself: every shot is a variation of the first
reference. The endpoint takes **no prompt** (provider-contracts.md section 1; the
`fal-ai/flux-pro/v1.1/redux` variant does), so the shot's prompt is not sent and its scenario cannot
steer the image: CLIP-T (prompt adherence) on these shots measures exactly that. Identity, queue,
polling and download are fal Instant Character's (`fal.py`). Its status and result URLs drop the
`/dev/redux` subpath (`{queue}/fal-ai/flux/requests/{id}`), as fal documents.

Price: fal lists no figure for this endpoint that the research could confirm; the default is Flux
Dev's $0.025 per megapixel, marked unverified in settings.
"""

from __future__ import annotations

from typing import Any, Final

from services.provider_adapter.ports import ShotRequest
from services.provider_adapter.providers.fal import FalInstantCharacter
from services.provider_adapter.providers.fal_queue import data_uri, image_size

PROVIDER_NAME: Final = "fal-flux-redux"
MODEL: Final = "fal-ai/flux/dev/redux"


class FalFluxRedux(FalInstantCharacter):
    """`fal-flux-redux`: implements `ports.Provider`; the references are the identity, as for Instant Character."""

    name = PROVIDER_NAME

    def arguments(self, request: ShotRequest) -> dict[str, Any]:
        """The redux input for one shot: the first reference, the size, steps, guidance and seed (no prompt)."""
        params = request.params
        reference = request.references[0]
        return {
            "image_url": data_uri(reference.data, reference.ref.content_type),
            "seed": params.seed,
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance,
            "image_size": image_size(params.aspect_ratio),
            "num_images": 1,
            "output_format": "png",
            "enable_safety_checker": True,
        }


redux_provider = FalFluxRedux.on
