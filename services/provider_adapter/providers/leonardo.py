"""Leonardo.ai Character Reference (`leonardo-character-reference`): reference-based identity, no training.

The identity is the first reference, uploaded once as a Leonardo "init image" in Leonardo's two steps
(provider-contracts.md section 4; docs.leonardo.ai/docs/how-to-upload-an-image-using-a-presigned-url):
`POST /init-image {"extension"}` answers a presigned S3 form (`url`, `fields` as a JSON *string*, and
the image `id`), then the bytes go as multipart/form-data to that URL, every field plus a `file` part.
`create_identity` returns `leonardo-character-reference:<init image id>`, which is also the
identity_ref: it is ready at once, and a restart (a new adapter with the saved identity) makes shots
without uploading again.

A shot is `POST /generations` with one controlnet `{initImageId, initImageType: "UPLOADED",
preprocessorId, strengthType}` (`start_shot`: the job id the service saves holds the generation id),
then `GET /generations/{id}` until COMPLETE or FAILED, then a download of `generated_images[0].url`
(`finish_shot`, which a restarted adapter calls again with the saved job id instead of submitting).
Calls to Leonardo go through `ProviderHttp` (Bearer key, retries on 429, 5xx and network errors;
any other 4xx, e.g. a 400 validation error, is permanent at once). The
presigned upload goes to S3, not Leonardo, and must not carry the key: it is posted with no auth,
retried here on the same policy.

Cost: Leonardo prices in API credits and reports each job's `apiCreditCost` on submit; that figure,
times `usd_per_api_credit`, is the shot's cost. Where it is missing, `credits_per_image` stands in.

Uncertain (see the settings' docstring too):
- `preprocessorId` 133 (Character Reference on SDXL models, 397 on Phoenix) comes from a third-party
  summary of Leonardo's "Commonly used API values", not a page the research could read itself.
- Character Reference now sits under Leonardo's "Legacy generation"; the `/v2/generations` shape
  (`parameters.guidances.image_reference`) is unverified and not used here.
- The dollar value of an API credit is not published in anything the research could find (the API
  moved to pay-as-you-go in dollars "at the previous Pro tier rate"); the default is an estimate.
- Leonardo documents no cancel call for a generation in progress, so a shot we stop waiting for is
  left to finish (and is billed); the next delivery resumes it.
- `guidance_scale` is sent as an integer (Leonardo's range is believed to be 1..20) and steps are
  clamped to 10..60 (the pricing calculator's documented range).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, Self, TypeVar

import httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from contracts import SimulationNote
from contracts.values import AspectRatio
from infra.webhooks.leonardo import PROVIDER_NAME as PROVIDER_NAME
from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ProgressCallback,
    ProviderJobFailed,
    ShotRequest,
    TransientProviderError,
)
from services.provider_adapter.providers.fal_queue import report, sniff_content_type
from services.provider_adapter.providers.held_jobs import HeldJobs
from services.provider_adapter.providers.http import (
    FAKE_MARKER_HEADER,
    FAKE_TRANSFORM_HEADER,
    Clock,
    ProviderHttp,
    ProviderKeyAuth,
    ProviderRefused,
    RetryPolicy,
    Sleep,
)

log = logging.getLogger(__name__)

KEY_SETTING: Final = "LEONARDO_API_KEY (or LIKENESS_PROVIDER_ADAPTER_LEONARDO_API_KEY)"
BASE_URL: Final = "https://cloud.leonardo.ai/api/rest/v1"
# Leonardo Kino XL (an SDXL model; the docs' image-guidance sample uses it).
KINO_XL: Final = "aa77f04e-3eec-4034-9c07-d0f619684628"
# Character Reference's preprocessor on SDXL models (Phoenix: 397). Third-party summary, unverified.
CHARACTER_REFERENCE_SDXL: Final = 133
Strength = Literal["Low", "Mid", "High"]  # all Character Reference accepts (Style Reference goes to Max)

# Price as of LEONARDO_PRICES_AS_OF: API credits, converted to USD.
LEONARDO_PRICES_AS_OF: Final = "2026-11-24"
# Fallback when a submit reports no apiCreditCost: Leonardo's estimate table gives 66 credits for 4
# SDXL + Alchemy v2 images at 1024x1024 (docs "Plan with the Pricing Calculator"), about 17 an image.
CREDITS_PER_IMAGE: Final = 17.0
# UNVERIFIED estimate: the old API Pro plan's rate (about $299 for 200,000 credits), which the PAYG
# guide says pay-as-you-go keeps; no published figure was found. Override it from your invoice.
USD_PER_API_CREDIT: Final = 0.0015

# Our aspect ratios as Leonardo width x height (multiples of 8, at most 1536 a side; about 1 MP).
SIZES: Final[Mapping[AspectRatio, tuple[int, int]]] = MappingProxyType(
    {
        "1:1": (1024, 1024),
        "3:4": (768, 1024),
        "4:3": (1024, 768),
        "9:16": (576, 1024),
        "16:9": (1024, 576),
        "2:3": (832, 1248),
        "3:2": (1248, 832),
    }
)
_EXTENSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp"}
)
_IDENTITY = re.compile(r"^(?P<provider>[a-z0-9-]+):(?P<init_image_id>[A-Za-z0-9][A-Za-z0-9_-]{0,127})$")
_GENERATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_GENERATION_JOB = re.compile(
    rf"^(?P<provider>[a-z0-9-]+):generation:(?P<generation_id>{_GENERATION_ID.pattern}):(?P<credits>-|[0-9.e+-]+)$"
)


@dataclass(frozen=True)
class LeonardoSettings:
    """What the adapter needs: the key (None: not configured), the model and reference knobs, price, pacing."""

    api_key: SecretStr | None
    base_url: str = BASE_URL
    model_id: str = KINO_XL
    preprocessor_id: int = CHARACTER_REFERENCE_SDXL
    strength: Strength = "High"
    credits_per_image: float = CREDITS_PER_IMAGE
    usd_per_api_credit: float = USD_PER_API_CREDIT
    prices_as_of: str = LEONARDO_PRICES_AS_OF
    poll_s: float = 1.0
    poll_max_s: float = 5.0
    timeout_s: float = 300.0
    max_image_bytes: int = 50 * 1024 * 1024

    @property
    def configured(self) -> bool:
        return self.api_key is not None and bool(self.api_key.get_secret_value().strip())

    def __repr__(self) -> str:
        return (
            f"LeonardoSettings(base_url={self.base_url!r}, model_id={self.model_id!r}, "
            f"preprocessor_id={self.preprocessor_id}, strength={self.strength!r}, configured={self.configured})"
        )


class LeonardoModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class InitImageUpload(LeonardoModel):
    id: str = Field(min_length=1)
    url: str = Field(min_length=1)
    fields: str  # a JSON object, as a string
    key: str | None = None


class InitImageAnswer(LeonardoModel):
    uploadInitImage: InitImageUpload


class GenerationJob(LeonardoModel):
    generationId: str = Field(min_length=1)
    apiCreditCost: float | None = None


class GenerationSubmitted(LeonardoModel):
    sdGenerationJob: GenerationJob


class GeneratedFile(LeonardoModel):
    id: str | None = None
    url: str = Field(min_length=1)
    nsfw: bool = False


class Generation(LeonardoModel):
    id: str | None = None
    status: str
    generated_images: list[GeneratedFile] = Field(default_factory=list)


class GenerationAnswer(LeonardoModel):
    generations_by_pk: Generation | None


def identity_for(init_image_id: str, provider: str = PROVIDER_NAME) -> str:
    """The identity (job id and identity_ref alike) of an uploaded reference."""
    return f"{provider}:{init_image_id}"


def init_image_id(identity: str, provider: str = PROVIDER_NAME) -> str:
    """The init image id an identity holds; PermanentProviderError when it is not one of ours."""
    match = _IDENTITY.match(identity)
    if match is None or match["provider"] != provider:
        raise PermanentProviderError(f"{identity!r} is not a {provider} identity; rebuild it.")
    return match["init_image_id"]


class LeonardoCharacterReference:
    """`leonardo-character-reference`: implements `ports.Provider` over Leonardo's v1 REST API."""

    name = PROVIDER_NAME
    simulated = False  # shots from a Likeness fake server say so for themselves

    def __init__(
        self,
        settings: LeonardoSettings,
        http: ProviderHttp | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if settings.configured and http is None:
            raise ValueError("a configured Leonardo provider needs its ProviderHttp")
        self._settings = settings
        self._http = http if settings.configured else None
        self._clock = clock
        self._sleep = sleep
        self._held: HeldJobs[None] = HeldJobs(clock)

    @classmethod
    def on(
        cls,
        settings: LeonardoSettings,
        client: httpx.AsyncClient,
        *,
        concurrency: int,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        draw: Callable[[], float] = random.random,
    ) -> Self:
        """The provider on `client`; its key goes only to `settings.base_url`'s origin."""
        http = None
        if settings.api_key is not None and settings.configured:
            auth = ProviderKeyAuth(settings.api_key, scheme="Bearer", origins=[settings.base_url])
            http = ProviderHttp(
                cls.name,
                client,
                auth=auth,
                concurrency=concurrency,
                key_setting=KEY_SETTING,
                retry=retry,
                sleep=sleep,
                wall_clock=wall_clock,
                draw=draw,
            )
        return cls(settings, http, clock=clock, sleep=sleep)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._settings.base_url!r}, available={self.available()})"

    def available(self) -> bool:
        return self._http is not None

    def _client(self) -> ProviderHttp:
        if self._http is None:
            raise PermanentProviderError(f"{self.name} is not configured here: set {KEY_SETTING}.")
        return self._http

    # --- identity ----------------------------------------------------------------------------------

    async def create_identity(self, request: IdentityRequest) -> str:
        """Upload the first reference as an init image; its id is the identity (ready at once)."""
        http = self._client()
        if not request.references:
            raise PermanentProviderError("An identity needs at least one reference image; upload one.")
        reference = request.references[0]
        content_type = sniff_content_type(reference.data) or reference.ref.content_type
        extension = _EXTENSIONS.get(content_type)
        if extension is None:
            raise PermanentProviderError(
                f"Leonardo takes PNG, JPEG or WebP references, not {content_type}; convert the reference."
            )
        async with http.slots:
            response = await http.call(
                "POST", f"{self._settings.base_url}/init-image", what="init-image", json={"extension": extension}
            )
            upload = parse(InitImageAnswer, response, "init-image").uploadInitImage
            await self._upload(http, upload, reference.data, content_type, extension)
        log.info("%s: uploaded the reference of %s as init image %s", self.name, request.character_id, upload.id)
        return identity_for(upload.id, self.name)

    async def identity_status(self, job_id: str) -> IdentityStatus:
        init_image_id(job_id, self.name)
        return IdentityStatus(state="ready", percent=100.0, identity_ref=job_id, training_seconds=0.0, cost_usd=0.0)

    async def _upload(
        self, http: ProviderHttp, upload: InitImageUpload, data: bytes, content_type: str, extension: str
    ) -> None:
        """The presigned S3 form: every field Leonardo gave, then `file`; no Authorization header, ever."""
        try:
            fields = json.loads(upload.fields)
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            raise TransientProviderError("Leonardo's init-image answer has no form fields (not a JSON object).")
        form = {str(name): str(value) for name, value in fields.items()}
        files = {"file": (f"reference.{extension}", data, content_type)}
        try:
            # no key at all: it is Leonardo's, not the storage's
            await http.call("POST", upload.url, what="reference upload", data=form, files=files, authenticated=False)
        except ProviderRefused as refused:
            if refused.response.status_code == 403:  # an expired presign: a new attempt presigns again
                message = f"{self.name} reference upload refused by storage ({refused})."
                raise TransientProviderError(message) from None
            raise

    # --- shots -------------------------------------------------------------------------------------

    def arguments(self, request: ShotRequest, image_id: str) -> dict[str, Any]:
        """The `POST /generations` body for one shot, the init image as a Character Reference."""
        params = request.params
        width, height = SIZES[params.aspect_ratio]
        body: dict[str, Any] = {
            "modelId": self._settings.model_id,
            "prompt": params.prompt,
            "width": width,
            "height": height,
            "num_images": 1,
            "seed": params.seed,
            "num_inference_steps": min(60, max(10, params.steps)),
            "guidance_scale": min(20, max(1, round(params.guidance))),
            "controlnets": [
                {
                    "initImageId": image_id,
                    "initImageType": "UPLOADED",
                    "preprocessorId": self._settings.preprocessor_id,
                    "strengthType": self._settings.strength,
                }
            ],
        }
        if params.negative_prompt:
            body["negative_prompt"] = params.negative_prompt
        return body

    async def start_shot(self, request: ShotRequest) -> str:
        """`POST /generations`; the job id, `<provider>:generation:<id>:<credits>`, keeps the credit cost
        Leonardo reports only on submit (`-` where it reported none)."""
        http = self._client()
        image_id = init_image_id(request.identity_ref, self.name)
        settings = self._settings

        async def submit() -> tuple[str, None]:
            response = await http.call(
                "POST", f"{settings.base_url}/generations", what="generation", json=self.arguments(request, image_id)
            )
            job = parse(GenerationSubmitted, response, "generation").sdGenerationJob
            if _GENERATION_ID.fullmatch(job.generationId) is None:
                raise TransientProviderError(
                    f"Leonardo's generation id {job.generationId[:80]!r} is not one we can poll."
                )
            credits = "-" if job.apiCreditCost is None else repr(float(job.apiCreditCost))
            return f"{self.name}:generation:{job.generationId}:{credits}", None

        return await self._held.submit(http.slots, submit)

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        """Poll the generation until COMPLETE, download its image; resumable from the job id alone.

        FAILED is a ProviderJobFailed (a new attempt submits again). Leonardo has no cancel call, so a
        time-out leaves the generation running, and the next delivery resumes it.
        """
        http = self._client()
        settings = self._settings
        found = _GENERATION_JOB.match(job_id)
        if found is None or found["provider"] != self.name:
            raise PermanentProviderError(f"{job_id!r} is not a {self.name} generation.")
        async with self._held.waiting(http.slots, job_id) as held:
            await report(on_progress, 10.0, "submitted to Leonardo")
            generation, polled = await self._wait(found["generation_id"], on_progress)
            await report(on_progress, 90.0, "completed on Leonardo; fetching the image")
            download = await http.call(
                "GET", generation.generated_images[0].url, what="image download", follow_redirects=True
            )
            latency_ms = (self._clock() - held.started) * 1000.0
        await report(on_progress, 100.0, "done")
        data = download.content
        if len(data) > settings.max_image_bytes:
            raise PermanentProviderError(
                f"Leonardo's image is {len(data)} bytes, over the {settings.max_image_bytes} byte limit."
            )
        content_type = sniff_content_type(data)
        if content_type is None:
            raise ProviderJobFailed(f"Leonardo's image ({len(data)} bytes) is not a PNG, JPEG or WebP.")
        try:
            with Image.open(io.BytesIO(data)):  # reads the header only
                pass
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ProviderJobFailed(f"Leonardo's image does not decode ({error}).") from None
        credits = settings.credits_per_image if found["credits"] == "-" else float(found["credits"])
        return GeneratedImage(
            data=data,
            content_type=content_type,
            latency_ms=latency_ms,
            cost_usd=round(credits * settings.usd_per_api_credit, 6),
            simulation=simulation_note(polled, download),
        )

    async def _wait(
        self, generation_id: str, on_progress: ProgressCallback | None
    ) -> tuple[Generation, httpx.Response]:
        """Poll `GET /generations/{id}`, backing off, until COMPLETE (with an image) or FAILED."""
        settings = self._settings
        http = self._client()
        delay = settings.poll_s
        deadline = self._clock() + settings.timeout_s
        while True:
            response = await http.call("GET", f"{settings.base_url}/generations/{generation_id}", what="status")
            generation = parse(GenerationAnswer, response, "status").generations_by_pk
            status = generation.status if generation is not None else "PENDING"  # not visible yet
            if generation is not None and status == "COMPLETE":
                if not generation.generated_images:
                    raise ProviderJobFailed(f"Leonardo generation {generation_id} is COMPLETE with no image.")
                return generation, response
            if status == "FAILED":
                raise ProviderJobFailed(
                    f"Leonardo generation {generation_id} FAILED (Leonardo gives no reason); a retry submits it again."
                )
            await report(on_progress, 50.0, f"generating on Leonardo ({status.lower()})")
            if self._clock() > deadline:
                raise TransientProviderError(
                    f"Leonardo generation {generation_id} not done after {settings.timeout_s:.0f} s "
                    "(Leonardo has no cancel call; the next delivery resumes it)."
                )
            await self._sleep(delay)
            delay = min(delay * 1.5, settings.poll_max_s)


Parsed = TypeVar("Parsed", bound=LeonardoModel)


def parse(model: type[Parsed], response: httpx.Response, what: str) -> Parsed:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        raise TransientProviderError(f"Leonardo's {what} answer is not what its API documents ({problems}).") from None


def simulation_note(polled: httpx.Response, download: httpx.Response) -> SimulationNote | None:
    """A shot from a Likeness fake Leonardo server is a transformed reference: say so, as the simulator does."""
    marked = [response for response in (polled, download) if FAKE_MARKER_HEADER in response.headers]
    if not marked:
        return None
    transform = next((r.headers[FAKE_TRANSFORM_HEADER] for r in marked if FAKE_TRANSFORM_HEADER in r.headers), None)
    return SimulationNote(
        transform=f"fake Leonardo server on loopback, not Leonardo.ai: {transform or 'a transformed reference'}",
        drifted=False,
    )


leonardo_provider = LeonardoCharacterReference.on
