"""Astria fine-tunes (`astria-tune`): a Flux LoRA trained per character, then prompts against it.

Contract: provider-contracts.md section 2 (docs.astria.ai/docs/api/overview, /docs/api/flux-api).

`create_identity` posts `POST /tunes` as multipart/form-data (`tune[title]`, `tune[name]` (the class:
man, woman, person), `tune[base_tune_id]` (Flux1.dev, 1504944), `tune[model_type]` (lora),
`tune[token]`, `tune[callback]`, and one `tune[images][]` part per reference) and returns
`astria-tune:<tune id>`. `identity_status` needs nothing but that job id: it polls
`GET /tunes/:id` (ready when `trained_at` is set), so a restarted adapter resumes and never trains
twice. The tune's title is `likeness-<character id>-<digest of the references>`; before posting,
and again after an ambiguous failure (a 504, a time-out, a dropped connection, a 5xx: Astria says a
504 was "probably processed"), the first page of `GET /tunes` is searched for that title, so a
retry finds the tune it already made instead of paying for a second one. (Astria's own account
idempotency, when switched on, does the same for equal titles.) ProviderHttp sends JSON only, so
the multipart post has its own loop here, on the same RetryPolicy, auth and redaction.

The identity_ref is `astria-tune:<tune id>:<model type>:<base tune id>:<token>:<class>`. A Flux
LoRA (or FaceID) shot posts to the *base* tune, `POST /tunes/<base>/prompts`, with
`<lora:<tune id>:1> <token> <class>, <prompt>` (`<faceid:...>` for FaceID); a checkpoint posts to
the tune itself (`start_shot`; the job id the service saves is `astria-tune:prompt:<tune>:<prompt id>`).
The prompt is polled at `GET /tunes/<tune>/prompts/:id` until `trained_at` is set and `images` is
non-empty, and `images[0]` is downloaded (`finish_shot`, which a restarted adapter calls again with
the saved job id instead of posting a second prompt; the key goes to Astria's origin only).

Callbacks: when `callback_base_url` and `callback_secret` are set, tunes and prompts carry
`<callback_base_url>?kind=tune|prompt&ref=<character or shot id>&token=<HMAC-SHA256(secret,
kind:ref)>`. Astria does not sign or retry callbacks, so the token in the URL is the only
authentication; the gateway checks it with `infra.webhooks.astria.verify_callback` (constant time) and
the provider adapter then checks the job itself, as polling would.

Uncertain (unverified against the live API):
- The prompt's done signal: the docs' sample omits `images`; the official starter reads
  `prompt.images`. Here done = `trained_at` set and `images` non-empty.
- A failed training: Astria documents no failure state on a tune. A tune that is gone (404) or not
  trained after `training_timeout_s` is reported failed; nothing else is.
- The 422 body shape: Rails-style `{"field": ["message"]}` is assumed and rendered "field: message";
  anything else is shown as the provider's text.
- Callback bodies: the docs say the entity itself, the starter parses `{"tune": {...}}` /
  `{"prompt": {...}}`; both are accepted.
- Prices: no longer published in the docs. The defaults are an old snapshot ("$1.5 per fine-tune,
  10 cents per prompt"), likely stale: check astria.ai/pricing and override them.
- Astria asks that 500s be retried from 30 s; the shared RetryPolicy starts lower (configure it).
- A prompt POST answered 5xx is retried and may be created twice (Astria's idempotency, when on,
  returns the existing prompt for the same text and seed).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal, Self, TypeVar

import httpx
from PIL import Image
from pydantic import SecretStr, ValidationError

from contracts import SimulationNote
from contracts.values import AspectRatio
from infra.webhooks.astria import PROVIDER_NAME as PROVIDER_NAME
from infra.webhooks.astria import AstriaModel, Prompt, Tune, callback_url
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
    RetryPolicy,
    Sleep,
    describe_error,
    retry_after_s,
)

log = logging.getLogger(__name__)

KEY_SETTING: Final = "ASTRIA_API_KEY (or LIKENESS_PROVIDER_ADAPTER_ASTRIA_API_KEY)"
BASE_URL: Final = "https://api.astria.ai"
FLUX1_DEV: Final = 1504944  # Flux1.dev in Astria's gallery (docs: flux-api)
ModelType = Literal["lora", "pti", "faceid", "checkpoint"]  # "checkpoint": Astria's null model_type

# Prices as of ASTRIA_PRICES_AS_OF, UNVERIFIED: an old docs snapshot (www.astria.ai/api/docs, mirrored
# at strmr.com/api/docs) said "$1.5 per fine-tune, 10 cents per prompt"; the current docs point to
# astria.ai/pricing, which the research could not read. One image per prompt here, so per image.
ASTRIA_PRICES_AS_OF: Final = "2026-11-24"
USD_PER_TUNE: Final = 1.5
USD_PER_IMAGE: Final = 0.10

# Our aspect ratios as Astria w x h (multiples of 8, about 1 MP).
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
    {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
)
_WORD = r"[A-Za-z0-9_-]{1,40}"
_JOB = re.compile(rf"^{PROVIDER_NAME}:(?P<tune>\d{{1,18}})$")
_IDENTITY = re.compile(
    rf"^{PROVIDER_NAME}:(?P<tune>\d{{1,18}}):(?P<kind>lora|pti|faceid|checkpoint):(?P<base>\d{{1,18}}):"
    rf"(?P<token>{_WORD}):(?P<name>{_WORD})$"
)
_PROMPT_JOB = re.compile(rf"^{PROVIDER_NAME}:prompt:(?P<tune>\d{{1,18}}):(?P<prompt>\d{{1,18}})$")
_TUNE_SEARCH_LIMIT: Final = 50


@dataclass(frozen=True)
class AstriaSettings:
    """What the adapter needs: the key (None: not configured), what to train, prices, pacing, callbacks."""

    api_key: SecretStr | None
    base_url: str = BASE_URL
    base_tune_id: int = FLUX1_DEV
    model_type: ModelType = "lora"
    class_name: str = "person"  # Astria's `name`: man, woman, person, ...
    trigger_word: str = "ohwx"  # Astria's tune `token`, the word the prompt names the subject by
    preset: str | None = None  # e.g. flux-lora-portrait; None: Astria's default
    usd_per_tune: float = USD_PER_TUNE
    usd_per_image: float = USD_PER_IMAGE
    prices_as_of: str = ASTRIA_PRICES_AS_OF
    poll_s: float = 2.0
    poll_max_s: float = 15.0
    timeout_s: float = 600.0  # one prompt, submit to images
    training_timeout_s: float = 4 * 3600.0  # a tune not trained by then is reported failed
    callback_base_url: str | None = None
    callback_secret: SecretStr | None = None
    max_image_bytes: int = 50 * 1024 * 1024

    def __post_init__(self) -> None:
        for value, what in ((self.class_name, "class_name"), (self.trigger_word, "trigger_word")):
            if re.fullmatch(_WORD, value) is None:
                raise ValueError(f"AstriaSettings.{what} must be one word of letters, digits, _ or -: {value!r}")

    @property
    def configured(self) -> bool:
        return self.api_key is not None and bool(self.api_key.get_secret_value().strip())

    @property
    def callbacks(self) -> bool:
        secret = self.callback_secret
        return bool(self.callback_base_url) and secret is not None and bool(secret.get_secret_value().strip())

    def __repr__(self) -> str:
        return (
            f"AstriaSettings(base_url={self.base_url!r}, base_tune_id={self.base_tune_id}, "
            f"model_type={self.model_type!r}, class_name={self.class_name!r}, configured={self.configured}, "
            f"callbacks={self.callbacks})"
        )


def tune_title(request: IdentityRequest) -> str:
    """The tune's title: the character and its references, so a retry finds the tune it made."""
    digest = hashlib.sha256(":".join(ref.ref.sha256 for ref in request.references).encode()).hexdigest()
    return f"likeness-{request.character_id}-{digest[:12]}"


def identity_for(tune: Tune, settings: AstriaSettings) -> str:
    kind = tune.model_type or "checkpoint"
    if kind not in ("lora", "pti", "faceid", "checkpoint"):
        raise PermanentProviderError(f"Astria tune {tune.id} has model_type {kind!r}, which this adapter cannot use.")
    base = tune.base_tune_id or 0
    token = tune.token or settings.trigger_word
    name = tune.name or settings.class_name
    return f"{PROVIDER_NAME}:{tune.id}:{kind}:{base}:{token}:{name}"


def prompt_route(identity_ref: str) -> tuple[int, str]:
    """Where a shot is posted (the tune id) and the text that loads the identity before the prompt."""
    found = _IDENTITY.match(identity_ref)
    if found is None:
        raise PermanentProviderError(f"{identity_ref!r} is not an {PROVIDER_NAME} identity; rebuild it.")
    tune, base, subject = int(found["tune"]), int(found["base"]), f"{found['token']} {found['name']}"
    if found["kind"] == "lora" and base:
        return base, f"<lora:{tune}:1> {subject}"
    if found["kind"] == "faceid" and base:
        return base, f"<faceid:{tune}:1> {found['name']}"
    return tune, subject


def astria_error(response: httpx.Response, redact: Callable[[str], str]) -> str:
    """Astria's words for a failure: Rails-style `{"field": ["message"]}` as "field: message", else as given."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and body and all(isinstance(v, list) for v in body.values()):
        parts = [f"{field}: {', '.join(map(str, messages))}" for field, messages in body.items()]
        return redact("; ".join(parts))[:500]
    return describe_error(response, redact)


class AstriaTune:
    """`astria-tune`: implements `ports.Provider` with an Astria fine-tune per character."""

    name = PROVIDER_NAME
    simulated = False  # shots from a Likeness fake server say so for themselves

    def __init__(
        self,
        settings: AstriaSettings,
        http: ProviderHttp | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Clock = time.time,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if settings.configured and http is None:
            raise ValueError("a configured Astria provider needs its ProviderHttp")
        self._settings = settings
        self._http = http if settings.configured else None
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._draw = draw
        self._held: HeldJobs[tuple[Prompt, httpx.Response]] = HeldJobs(clock)

    @classmethod
    def on(
        cls,
        settings: AstriaSettings,
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
        return cls(settings, http, clock=clock, sleep=sleep, wall_clock=wall_clock, draw=draw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._settings.base_url!r}, available={self.available()})"

    def available(self) -> bool:
        return self._http is not None

    def _client(self) -> ProviderHttp:
        if self._http is None:
            raise PermanentProviderError(f"{self.name} is not configured here: set {KEY_SETTING}.")
        return self._http

    # --- identity ----------------------------------------------------------------------------------

    def tune_form(self, request: IdentityRequest) -> dict[str, str]:
        """The `tune[...]` fields of `POST /tunes` (the images go as `tune[images][]` parts)."""
        settings = self._settings
        form = {
            "tune[title]": tune_title(request),
            "tune[name]": settings.class_name,
            "tune[token]": settings.trigger_word,
            "tune[base_tune_id]": str(settings.base_tune_id),
        }
        if settings.model_type != "checkpoint":
            form["tune[model_type]"] = settings.model_type
        if settings.preset:
            form["tune[preset]"] = settings.preset
        if settings.callbacks and settings.callback_base_url and settings.callback_secret:
            ref = str(request.character_id)
            form["tune[callback]"] = callback_url(settings.callback_base_url, settings.callback_secret, "tune", ref)
        return form

    async def create_identity(self, request: IdentityRequest) -> str:
        http = self._client()
        if not request.references:
            raise PermanentProviderError("An identity needs at least one reference image; upload one.")
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        for index, reference in enumerate(request.references):
            content_type = sniff_content_type(reference.data) or reference.ref.content_type
            extension = _EXTENSIONS.get(content_type)
            if extension is None:
                raise PermanentProviderError(
                    f"Astria takes PNG, JPEG or WebP references, not {content_type}; convert reference {index}."
                )
            files.append(("tune[images][]", (f"{index:02d}.{extension}", reference.data, content_type)))
        form = self.tune_form(request)
        async with http.slots:
            tune = await self._find_tune(http, form["tune[title]"])
            if tune is None:
                tune = await self._post_tune(http, form, files)
        log.info("%s: tune %d for character %s", self.name, tune.id, request.character_id)
        return f"{PROVIDER_NAME}:{tune.id}"

    async def _find_tune(self, http: ProviderHttp, title: str) -> Tune | None:
        """A tune of ours with this title on the first page of `GET /tunes` (newest first), if any."""
        url = f"{self._settings.base_url}/tunes?limit={_TUNE_SEARCH_LIMIT}"
        response = await http.call("GET", url, what="tune list")
        try:
            listed = response.json()
        except ValueError:
            listed = None
        if not isinstance(listed, list):
            raise TransientProviderError("Astria's tune list is not a JSON array.")
        for item in listed:
            if isinstance(item, Mapping) and item.get("title") == title:
                return parse(Tune, item, "tune list")
        return None

    async def _post_tune(
        self, http: ProviderHttp, form: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]
    ) -> Tune:
        """`POST /tunes` as multipart, retried like ProviderHttp.call; after an ambiguous failure, find it first."""
        policy = http.retry
        url = f"{self._settings.base_url}/tunes"
        failure, wait_hint = "", None
        for attempt in range(1, policy.retries + 2):
            ambiguous = False
            try:
                response = await http.client.post(url, data=form, files=files, auth=http.auth)
            except httpx.ConnectError as error:  # never reached Astria: nothing was made
                failure, wait_hint = f"connection failed ({type(error).__name__})", None
            except (httpx.TimeoutException, httpx.TransportError) as error:
                failure, wait_hint, ambiguous = f"no answer ({type(error).__name__})", None, True
            else:
                if response.is_success:
                    return parse(Tune, response.content, "tune")
                failure = f"HTTP {response.status_code}: {astria_error(response, http.auth.redact)}"
                wait_hint = None
                if response.status_code == 429:
                    wait_hint = retry_after_s(response.headers.get("Retry-After"), now=self._wall_clock())
                    if wait_hint is not None and wait_hint > policy.max_retry_after_s:
                        raise TransientProviderError(
                            f"{self.name} tune: rate limited, {failure}; retry after {wait_hint:.0f} s",
                            retry_after_s=wait_hint,
                        )
                elif response.status_code >= 500:
                    ambiguous = True  # a 504 "was probably processed"; a 500 may have been
                elif response.status_code in (401, 403):
                    raise PermanentProviderError(
                        f"{self.name} rejected the API key on tune ({failure}); check {KEY_SETTING}"
                    )
                else:
                    raise PermanentProviderError(
                        f"{self.name} refused the tune ({failure}); fix the request, no retry."
                    )
            if attempt <= policy.retries:
                delay = policy.backoff_s(attempt, self._draw())
                delay = max(delay, wait_hint) if wait_hint is not None else delay
                log.warning("%s tune: %s; retry %d of %d in %.2f s", self.name, failure, attempt, policy.retries, delay)
                await self._sleep(delay)
                if ambiguous:
                    found = await self._find_tune(http, form["tune[title]"])
                    if found is not None:
                        return found
        raise TransientProviderError(
            f"{self.name} tune: {failure} (gave up after {policy.retries + 1} tries)", retry_after_s=wait_hint
        )

    async def identity_status(self, job_id: str) -> IdentityStatus:
        http = self._client()
        job = _JOB.match(job_id)
        if job is None:
            raise PermanentProviderError(f"{job_id!r} is not an {PROVIDER_NAME} tune job.")
        try:
            response = await http.call("GET", f"{self._settings.base_url}/tunes/{job['tune']}", what="tune status")
        except PermanentProviderError as refused:
            if "HTTP 404" not in str(refused):
                raise
            return IdentityStatus(state="failed", reason=f"Astria tune {job['tune']} is gone (deleted or expired).")
        tune = parse(Tune, response.content, "tune status")
        now = self._wall_clock()
        if tune.trained_at is not None:
            started = tune.started_training_at or tune.created_at
            seconds = max(0.0, _utc(tune.trained_at) - _utc(started)) if started else 0.0
            return IdentityStatus(
                state="ready",
                percent=100.0,
                identity_ref=identity_for(tune, self._settings),
                training_seconds=seconds,
                cost_usd=0.0 if tune.branch == "fast" else self._settings.usd_per_tune,  # fast: a free mock
            )
        if tune.created_at is not None and now - _utc(tune.created_at) > self._settings.training_timeout_s:
            hours = self._settings.training_timeout_s / 3600
            return IdentityStatus(state="failed", reason=f"Astria tune {tune.id} not trained after {hours:.1f} h.")
        return IdentityStatus(state="pending", percent=training_percent(tune, now))

    # --- shots -------------------------------------------------------------------------------------

    def prompt_body(self, request: ShotRequest) -> tuple[int, dict[str, Any]]:
        """The tune to post to and the `{"prompt": {...}}` body for one shot."""
        tune_id, identity = prompt_route(request.identity_ref)
        params = request.params
        width, height = SIZES[params.aspect_ratio]
        prompt: dict[str, Any] = {
            "text": f"{identity}, {params.prompt}",
            "num_images": 1,
            "seed": params.seed,
            "steps": params.steps,
            "cfg_scale": params.guidance,
            "w": width,
            "h": height,
        }
        if params.negative_prompt:
            prompt["negative_prompt"] = params.negative_prompt
        settings = self._settings
        if settings.callbacks and settings.callback_base_url and settings.callback_secret:
            ref = str(request.shot_id)
            prompt["callback"] = callback_url(settings.callback_base_url, settings.callback_secret, "prompt", ref)
        return tune_id, {"prompt": prompt}

    async def start_shot(self, request: ShotRequest) -> str:
        """Post the prompt; its job id is `astria-tune:prompt:<tune id>:<prompt id>`."""
        http = self._client()
        tune_id, body = self.prompt_body(request)

        async def post() -> tuple[str, tuple[Prompt, httpx.Response]]:
            response = await http.call(
                "POST", f"{self._settings.base_url}/tunes/{tune_id}/prompts", what="prompt", json=body
            )
            prompt = parse(Prompt, response.content, "prompt")
            return f"{PROVIDER_NAME}:prompt:{tune_id}:{prompt.id}", (prompt, response)

        return await self._held.submit(http.slots, post)

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        """Poll the prompt until it has images, download `images[0]`; resumable from the job id alone.

        Astria has no failure state for a prompt and no cancel call: a time-out leaves the prompt to
        finish (it is billed), and the next delivery resumes it.
        """
        http = self._client()
        found = _PROMPT_JOB.match(job_id)
        if found is None:
            raise PermanentProviderError(f"{job_id!r} is not an {PROVIDER_NAME} prompt.")
        url = f"{self._settings.base_url}/tunes/{found['tune']}/prompts/{found['prompt']}"
        async with self._held.waiting(http.slots, job_id) as held:
            if held.detail is not None:
                prompt, response = held.detail
            else:
                response = await http.call("GET", url, what="prompt status")
                prompt = parse(Prompt, response.content, "prompt status")
            await report(on_progress, 10.0, "prompt accepted by Astria")
            prompt, polled = await self._wait(url, prompt, response, on_progress)
            await report(on_progress, 90.0, "done on Astria; fetching the image")
            download = await http.call("GET", prompt.images[0], what="image download", follow_redirects=True)
            latency_ms = (self._clock() - held.started) * 1000.0
        await report(on_progress, 100.0, "done")
        data = download.content
        if len(data) > self._settings.max_image_bytes:
            raise PermanentProviderError(
                f"Astria's image is {len(data)} bytes, over the {self._settings.max_image_bytes} byte limit."
            )
        content_type = sniff_content_type(data)
        if content_type is None:
            raise ProviderJobFailed(f"Astria's image ({len(data)} bytes) is not a PNG, JPEG or WebP.")
        try:
            with Image.open(io.BytesIO(data)):  # reads the header only
                pass
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ProviderJobFailed(f"Astria's image does not decode ({error}).") from None
        return GeneratedImage(
            data=data,
            content_type=content_type,
            latency_ms=latency_ms,
            cost_usd=round(self._settings.usd_per_image, 6),
            simulation=simulation_note(polled, download),
        )

    async def _wait(
        self, url: str, prompt: Prompt, response: httpx.Response, on_progress: ProgressCallback | None
    ) -> tuple[Prompt, httpx.Response]:
        """Poll the prompt, backing off, until it is done: `trained_at` set and images listed."""
        http = self._client()
        delay = self._settings.poll_s
        deadline = self._clock() + self._settings.timeout_s
        while prompt.trained_at is None or not prompt.images:
            await report(on_progress, 50.0, "generating on Astria")
            if self._clock() > deadline:
                raise TransientProviderError(
                    f"Astria prompt {prompt.id} not done after {self._settings.timeout_s:.0f} s "
                    "(Astria may still finish it and bill it; the next delivery resumes it)."
                )
            await self._sleep(delay)
            delay = min(delay * 1.5, self._settings.poll_max_s)
            response = await http.call("GET", url, what="prompt status")
            prompt = parse(Prompt, response.content, "prompt status")
        return prompt, response


def _utc(moment: datetime) -> float:
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def training_percent(tune: Tune, now: float) -> float:
    """An estimate: 0 before training starts, then 5-95 % along the way from start to Astria's `eta`."""
    if tune.started_training_at is None:
        return 0.0
    start = _utc(tune.started_training_at)
    if tune.eta is None or _utc(tune.eta) <= start:
        return 5.0
    fraction = min(1.0, max(0.0, (now - start) / (_utc(tune.eta) - start)))
    return round(5.0 + 90.0 * fraction, 1)


Parsed = TypeVar("Parsed", bound=AstriaModel)


def parse(model: type[Parsed], content: bytes | Mapping[str, Any], what: str) -> Parsed:
    try:
        if isinstance(content, bytes):
            return model.model_validate_json(content)
        return model.model_validate(content)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        raise TransientProviderError(f"Astria's {what} answer is not what its API documents ({problems}).") from None


def simulation_note(polled: httpx.Response, download: httpx.Response) -> SimulationNote | None:
    """A shot from a Likeness fake Astria server is a transformed reference: say so, as the simulator does."""
    marked = [response for response in (polled, download) if FAKE_MARKER_HEADER in response.headers]
    if not marked:
        return None
    transform = next((r.headers[FAKE_TRANSFORM_HEADER] for r in marked if FAKE_TRANSFORM_HEADER in r.headers), None)
    return SimulationNote(
        transform=f"fake Astria server on loopback, not astria.ai: {transform or 'a transformed reference'}",
        drifted=False,
    )


astria_provider = AstriaTune.on
