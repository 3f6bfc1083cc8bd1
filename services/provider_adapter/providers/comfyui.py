"""A self-hosted ComfyUI (provider-contracts.md section 5): three identity workflows on one client.

The workflows themselves, their settings and the reading of ComfyUI's refusals are in `comfyui_workflows.py`.

- `comfyui-ipadapter`: SDXL with IP-Adapter Plus Face (cubiq/ComfyUI_IPAdapter_plus).
- `comfyui-instantid`: SDXL with InstantID (cubiq/ComfyUI_InstantID).
- `comfyui-reference-only`: reference-only attention (comfyanonymous/ComfyUI_experiments' ReferenceOnlySimple).

The identity is the uploaded reference itself: `create_identity` uploads each reference to ComfyUI's
input folder under a content-addressed name (`likeness-<sha256>.<ext>`), skipping those already there,
and the identity is ready at once. A shot fills its workflow's API-format graph (prompt, negative
prompt, seed, steps, cfg, an SDXL size for the aspect ratio, the uploaded reference's name), posts it
to `/prompt` with a client id (`start_shot`; the job id the service saves is
`<provider>:<client id>:<prompt id>`, so a restarted adapter follows the same prompt again instead of
posting it twice), follows it over `/ws?clientId=` (`progress` -> the progress callback,
`executing` with `node: null` -> done) or, when no websocket connects or it drops, polls
`/history/{prompt_id}` (checking `/queue` so a prompt a restarted ComfyUI lost does not wait forever),
then downloads the SaveImage output from `/view`. A graph ComfyUI rejects (`node_errors`, a class that
does not exist) is permanent, named by node with what to install or where to put the model file.
Self-hosted shots cost nothing unless a price per GPU-second is configured.

ComfyUI has no auth; `token` (a bearer token) is for a proxy in front of it, and goes to its origin only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from contracts import SimulationNote
from services.provider_adapter.ports import (
    GeneratedImage,
    IdentityRequest,
    IdentityStatus,
    PermanentProviderError,
    ProgressCallback,
    ProviderError,
    ProviderJobFailed,
    ReferenceImage,
    ShotRequest,
    TransientProviderError,
)
from services.provider_adapter.providers.comfyui_workflows import (
    AUTH_SETTING,
    SAVE_NODE,
    SDXL_SIZES,
    URL_SETTING,
    WORKFLOWS,
    ComfyUISettings,
    ShotFill,
    workflow_error,
)
from services.provider_adapter.providers.fal import identity_for
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

UPLOAD_PREFIX: Final = "likeness-"
_EXTENSIONS: Final = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_DIGEST = re.compile(r"^(?P<provider>[a-z0-9-]+):(?P<digest>[0-9a-f]{64})$")
_PROMPT_JOB = re.compile(r"^(?P<provider>[a-z0-9-]+):(?P<client_id>[0-9a-f]{32}):(?P<prompt_id>[A-Za-z0-9._-]{1,128})$")


def upload_name(reference: ReferenceImage) -> str:
    """The reference's content-addressed name in ComfyUI's input folder."""
    return f"{UPLOAD_PREFIX}{reference.ref.sha256}.{_EXTENSIONS.get(reference.ref.content_type, 'png')}"


class _Refused(PermanentProviderError):
    """A 4xx from ComfyUI, with the response (a 400's node_errors, a 404)."""

    def __init__(self, message: str, response: httpx.Response | None) -> None:
        super().__init__(message)
        self.response = response


@dataclass(frozen=True)
class _Finished:
    """A prompt ComfyUI finished: its /history entry."""

    entry: Mapping[str, Any]

    @property
    def messages(self) -> list[tuple[str, Mapping[str, Any]]]:
        found = (self.entry.get("status") or {}).get("messages") or []
        return [(str(item[0]), item[1]) for item in found if isinstance(item, list) and len(item) == 2]

    def gpu_seconds(self) -> float | None:
        stamps = {kind: data.get("timestamp") for kind, data in self.messages}
        start, end = stamps.get("execution_start"), stamps.get("execution_success")
        if isinstance(start, int | float) and isinstance(end, int | float) and end >= start:
            return (end - start) / 1000.0
        return None


@dataclass(frozen=True)
class _Submitted:
    """What `start` opened for `finish` in this process: the prompt's websocket (None: polling)."""

    socket: ClientConnection | None


class ComfyUIClient:
    """Upload, submit, follow, fetch on one ComfyUI server; every HTTP call through its `ProviderHttp`."""

    def __init__(
        self,
        settings: ComfyUISettings,
        http: ProviderHttp,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.http = http
        self._clock = clock
        self._sleep = sleep
        self._held: HeldJobs[_Submitted] = HeldJobs(clock)

    # --- HTTP --------------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        files: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
        retries: int | None = None,
    ) -> httpx.Response:
        url = f"{self.settings.url}{path}"
        try:
            return await self.http.call(
                method, url, what=what, json=json_body, params=params, files=files, data=data, retries=retries
            )
        except ProviderRefused as refused:
            raise _Refused(str(refused), refused.response) from None

    async def has_input(self, name: str) -> bool:
        try:
            await self.call("GET", "/view", what="reference check", params={"filename": name, "type": "input"})
        except _Refused as refused:
            if refused.response is not None and refused.response.status_code == 404:
                return False
            raise
        return True

    async def upload(self, reference: ReferenceImage) -> str:
        name = upload_name(reference)
        response = await self.call(
            "POST",
            "/upload/image",
            what="reference upload",
            files={"image": (name, reference.data, reference.ref.content_type)},
            data={"overwrite": "true", "type": "input"},
        )
        uploaded = _json(response, "upload")
        stored = uploaded.get("name") if isinstance(uploaded, Mapping) else None
        if not isinstance(stored, str) or not stored:
            raise TransientProviderError(f"ComfyUI's upload answer names no file: {response.text[:200]}")
        subfolder = uploaded.get("subfolder") or ""
        return f"{subfolder}/{stored}" if subfolder else stored

    async def ensure_uploaded(self, references: Sequence[ReferenceImage]) -> list[str]:
        """Each reference's name in ComfyUI's input folder, uploading only those not already there."""
        names = []
        for reference in references:
            name = upload_name(reference)
            names.append(name if await self.has_input(name) else await self.upload(reference))
        return names

    # --- one prompt --------------------------------------------------------------------------------

    async def start(
        self, provider: str, reference: ReferenceImage, graph_for: Callable[[str], Mapping[str, Any]]
    ) -> str:
        """Upload the reference if ComfyUI lacks it, open the websocket, submit the graph; keep the slot.

        The job id is `<provider>:<client id>:<prompt id>`: a restarted adapter follows the prompt again
        under the same client id.
        """

        async def submit() -> tuple[str, _Submitted]:
            (image,) = await self.ensure_uploaded([reference])  # ComfyUI may have been wiped
            client_id = uuid.uuid4().hex
            socket = await self._connect(client_id)
            try:
                prompt_id = await self._submit(provider, graph_for(image), client_id)
            except BaseException:
                if socket is not None:
                    await socket.close()
                raise
            return f"{provider}:{client_id}:{prompt_id}", _Submitted(socket)

        return await self._held.submit(self.http.slots, submit)

    async def finish(self, provider: str, job_id: str, on_progress: ProgressCallback | None) -> GeneratedImage:
        """Wait for the prompt (websocket, else /history), download its SaveImage output.

        A prompt that timed out is taken off ComfyUI's queue (ProviderJobFailed: a new attempt submits
        again); a failed poll or a cancelled wait leaves it queued for the next delivery to resume.
        """
        found = _PROMPT_JOB.match(job_id)
        if found is None or found["provider"] != provider:
            raise PermanentProviderError(f"{job_id!r} is not a {provider} prompt.")
        client_id, prompt_id = found["client_id"], found["prompt_id"]
        async with self._held.waiting(self.http.slots, job_id) as held:
            finished: _Finished | None = None
            if held.detail is None:  # submitted before a restart: it may be done already
                finished = await self._history(prompt_id)
                socket = None if finished is not None else await self._connect(client_id)
            else:
                socket = held.detail.socket
            try:
                await report(on_progress, 0.0, "queued on ComfyUI")
                try:
                    if finished is None and socket is not None:
                        finished = await self._follow(socket, prompt_id, on_progress)
                    if finished is None:
                        finished = await self._poll(prompt_id, on_progress)
                except ProviderJobFailed:  # gave up on it: ComfyUI need not run it
                    await self._delete(prompt_id)
                    raise
            finally:
                if socket is not None:
                    await socket.close()
            _raise_if_failed(provider, prompt_id, finished)
            await report(on_progress, 90.0, "completed on ComfyUI; fetching the image")
            image = _output_image(prompt_id, finished)
            download = await self.call("GET", "/view", what="image download", params=image)
            latency_ms = (self._clock() - held.started) * 1000.0
        await report(on_progress, 100.0, "done")
        return self._image(download, finished, latency_ms)

    async def _connect(self, client_id: str) -> ClientConnection | None:
        url = f"{self.settings.url.replace('http', 'ws', 1)}/ws?clientId={client_id}"
        token = self.settings.token.get_secret_value().strip() if self.settings.token is not None else ""
        try:
            return await connect(
                url,
                additional_headers={"Authorization": f"Bearer {token}"} if token else None,
                open_timeout=self.settings.ws_connect_s,
                proxy=None,
                max_size=None,
            )
        except (OSError, TimeoutError, WebSocketException) as error:
            log.info("ComfyUI websocket unavailable (%s: %s); polling /history", type(error).__name__, error)
            return None

    async def _submit(self, provider: str, graph: Mapping[str, Any], client_id: str) -> str:
        try:
            response = await self.call(
                "POST", "/prompt", what="prompt", json_body={"prompt": graph, "client_id": client_id}
            )
        except _Refused as refused:
            if refused.response is not None and refused.response.status_code == 400:
                raise PermanentProviderError(workflow_error(provider, refused.response)) from None
            raise
        body = _json(response, "prompt")
        prompt_id = body.get("prompt_id") if isinstance(body, Mapping) else None
        if not isinstance(prompt_id, str) or not prompt_id:
            raise TransientProviderError(f"ComfyUI's /prompt answer has no prompt_id: {response.text[:200]}")
        return prompt_id

    async def _follow(
        self, socket: ClientConnection, prompt_id: str, on_progress: ProgressCallback | None
    ) -> _Finished | None:
        """Read the websocket until the prompt is done; None when it drops (the caller polls instead)."""
        deadline = self._clock() + self.settings.timeout_s
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._timed_out(prompt_id)
            try:
                raw = await asyncio.wait_for(socket.recv(), timeout=min(self.settings.ws_idle_s, remaining))
            except TimeoutError:  # quiet for long: the socket may have stopped delivering
                finished = await self._history(prompt_id)
                if finished is not None:
                    return finished
                continue
            except ConnectionClosed as closed:
                log.info("ComfyUI websocket closed during %s (%s); polling /history", prompt_id, closed)
                return None
            if isinstance(raw, bytes):  # a preview image
                continue
            message = _message(raw)
            data, kind = message.get("data"), message.get("type")
            # This client id is this prompt's alone; older builds send `progress` without a prompt_id.
            ours = isinstance(data, Mapping) and data.get("prompt_id", prompt_id if kind == "progress" else None)
            if not isinstance(data, Mapping) or ours != prompt_id:
                continue
            if kind == "progress":
                value, most = data.get("value"), data.get("max")
                if isinstance(value, int) and isinstance(most, int) and most > 0:
                    percent = 5.0 + 85.0 * min(value, most) / most
                    await report(on_progress, percent, f"step {value}/{most} on ComfyUI")
            elif kind == "execution_start":
                await report(on_progress, 5.0, "running on ComfyUI")
            elif (kind == "executing" and data.get("node") is None) or kind in (
                "execution_error",
                "execution_interrupted",
            ):
                return await self._history(prompt_id)  # None: not written yet, and the caller polls

    async def _poll(self, prompt_id: str, on_progress: ProgressCallback | None) -> _Finished:
        """Poll /history until the prompt is there; a prompt in neither history nor queue was lost."""
        deadline = self._clock() + self.settings.timeout_s
        delay = self.settings.poll_s
        await report(on_progress, 5.0, "waiting for ComfyUI (polling /history)")
        while True:
            finished = await self._history(prompt_id)
            if finished is not None:
                return finished
            if not await self._queued(prompt_id):
                finished = await self._history(prompt_id)  # it may have finished between the two calls
                if finished is not None:
                    return finished
                raise ProviderJobFailed(
                    f"ComfyUI lost prompt {prompt_id}: not in its history or queue (did it restart?)"
                )
            if self._clock() > deadline:
                raise self._timed_out(prompt_id)
            await self._sleep(delay)
            delay = min(delay * 1.5, self.settings.poll_max_s)

    async def _history(self, prompt_id: str) -> _Finished | None:
        body = _json(await self.call("GET", f"/history/{prompt_id}", what="history"), "history")
        entry = body.get(prompt_id) if isinstance(body, Mapping) else None
        return _Finished(entry) if isinstance(entry, Mapping) else None

    async def _queued(self, prompt_id: str) -> bool:
        body = _json(await self.call("GET", "/queue", what="queue"), "queue")
        if not isinstance(body, Mapping):
            return True  # unreadable: assume it is still there and let the deadline decide
        items = [*(body.get("queue_running") or []), *(body.get("queue_pending") or [])]
        return any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in items)

    async def _delete(self, prompt_id: str) -> None:
        """Best effort: take a prompt we stopped waiting for off ComfyUI's queue."""
        try:
            await asyncio.wait_for(
                self.call("POST", "/queue", what="queue delete", json_body={"delete": [prompt_id]}, retries=0), 5.0
            )
        except (ProviderError, TimeoutError) as error:
            log.info("ComfyUI prompt %s: delete not accepted: %s", prompt_id, error)

    def _timed_out(self, prompt_id: str) -> ProviderJobFailed:
        return ProviderJobFailed(f"ComfyUI prompt {prompt_id} not done after {self.settings.timeout_s:.0f} s.")

    def _image(self, download: httpx.Response, finished: _Finished, latency_ms: float) -> GeneratedImage:
        data = download.content
        if len(data) > self.settings.max_image_bytes:
            raise PermanentProviderError(
                f"ComfyUI's image is {len(data)} bytes, over the {self.settings.max_image_bytes} byte limit."
            )
        content_type = sniff_content_type(data)
        if content_type is None:
            raise ProviderJobFailed(f"ComfyUI's image ({len(data)} bytes) is not a PNG, JPEG or WebP.")
        seconds = finished.gpu_seconds()
        seconds = latency_ms / 1000.0 if seconds is None else seconds
        simulation = None
        if FAKE_MARKER_HEADER in download.headers:
            transform = download.headers.get(FAKE_TRANSFORM_HEADER) or "a transformed reference"
            simulation = SimulationNote(
                transform=f"fake ComfyUI server on loopback, not ComfyUI: {transform}", drifted=False
            )
        return GeneratedImage(
            data=data,
            content_type=content_type,
            latency_ms=latency_ms,
            cost_usd=round(self.settings.usd_per_gpu_second * seconds, 6),
            simulation=simulation,
        )


def _raise_if_failed(provider: str, prompt_id: str, finished: _Finished) -> None:
    status = finished.entry.get("status") or {}
    if status.get("status_str", "success") == "success" and status.get("completed", True):
        return
    for kind, data in finished.messages:
        if kind == "execution_error":
            where = f"node {data.get('node_id')} ({data.get('node_type')})"
            reason = f"{data.get('exception_type')}: {data.get('exception_message')}".strip()
            message = f"{provider}: ComfyUI prompt {prompt_id} failed at {where}: {reason}"
            if "OutOfMemory" in str(data.get("exception_type")):
                raise ProviderJobFailed(message)
            if data.get("node_type") in ("ApplyInstantID", "InstantIDFaceAnalysis") and "face" in reason.lower():
                message += "; use a reference with one clear, frontal face"
            raise PermanentProviderError(message)
        if kind == "execution_interrupted":
            raise ProviderJobFailed(f"{provider}: ComfyUI prompt {prompt_id} was interrupted.")
    raise ProviderJobFailed(f"{provider}: ComfyUI prompt {prompt_id} ended {status.get('status_str')!r}.")


def _output_image(prompt_id: str, finished: _Finished) -> dict[str, str]:
    outputs = finished.entry.get("outputs") or {}
    ordered = [outputs.get(SAVE_NODE), *(value for key, value in outputs.items() if key != SAVE_NODE)]
    for output in ordered:
        for image in (output or {}).get("images") or []:
            if isinstance(image, Mapping) and image.get("filename") and image.get("type", "output") == "output":
                return {
                    "filename": str(image["filename"]),
                    "subfolder": str(image.get("subfolder") or ""),
                    "type": "output",
                }
    raise ProviderJobFailed(f"ComfyUI prompt {prompt_id} finished without an output image.")


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise TransientProviderError(f"ComfyUI's {what} answer is not JSON: {response.text[:200]}") from None


def _message(raw: str) -> Mapping[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        return {}
    return message if isinstance(message, Mapping) else {}


class ComfyUIProvider:
    """One ComfyUI workflow as a `ports.Provider`: the references are the identity, shots run its graph."""

    simulated = False  # shots from a Likeness fake server say so for themselves

    def __init__(self, name: str, settings: ComfyUISettings, client: ComfyUIClient | None) -> None:
        if name not in WORKFLOWS:
            raise ValueError(f"no ComfyUI workflow named {name!r}; known: {sorted(WORKFLOWS)}")
        self.name = name
        self._settings = settings
        self._client = client if settings.configured else None

    def __repr__(self) -> str:
        return f"ComfyUIProvider({self.name!r}, base_url={self._settings.base_url!r}, available={self.available()})"

    def available(self) -> bool:
        return self._client is not None

    def client(self) -> ComfyUIClient:
        if self._client is None:
            raise PermanentProviderError(f"{self.name} is not configured here: set {URL_SETTING}.")
        return self._client

    async def create_identity(self, request: IdentityRequest) -> str:
        if not request.references:
            raise PermanentProviderError("An identity needs at least one reference image; upload one.")
        await self.client().ensure_uploaded(request.references)
        return identity_for([reference.ref.sha256 for reference in request.references], self.name)

    async def identity_status(self, job_id: str) -> IdentityStatus:
        match = _DIGEST.match(job_id)
        if match is None or match["provider"] != self.name:
            raise PermanentProviderError(f"{job_id!r} is not a {self.name} identity.")
        return IdentityStatus(state="ready", percent=100.0, identity_ref=job_id)

    def workflow(self, request: ShotRequest, image: str) -> dict[str, Any]:
        """The shot's graph in ComfyUI's API format."""
        params = request.params
        width, height = SDXL_SIZES[params.aspect_ratio]
        fill = ShotFill(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            seed=params.seed,
            steps=params.steps,
            cfg=params.guidance,
            width=width,
            height=height,
            image=image,
        )
        return WORKFLOWS[self.name](fill, self._settings)

    async def start_shot(self, request: ShotRequest) -> str:
        client = self.client()
        if not request.references:
            raise PermanentProviderError("A shot needs at least one reference image.")
        if request.identity_ref != identity_for([reference.ref.sha256 for reference in request.references], self.name):
            raise PermanentProviderError(
                f"{request.identity_ref!r} is not the {self.name} identity of these references; rebuild it."
            )
        return await client.start(self.name, request.references[0], lambda image: self.workflow(request, image))

    async def finish_shot(
        self, job_id: str, request: ShotRequest, on_progress: ProgressCallback | None = None
    ) -> GeneratedImage:
        return await self.client().finish(self.name, job_id, on_progress)


def comfyui_providers(
    settings: ComfyUISettings,
    client: httpx.AsyncClient,
    *,
    concurrency: int,
    retry: RetryPolicy | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    wall_clock: Clock = time.time,
    draw: Callable[[], float] = random.random,
) -> dict[str, ComfyUIProvider]:
    """The three ComfyUI providers on one server, sharing one `ProviderHttp` (one GPU, one concurrency cap)."""
    comfy = None
    if settings.configured:
        token = settings.token if settings.token is not None else SecretStr("")
        has_token = bool(token.get_secret_value().strip())
        auth = ProviderKeyAuth(token, scheme="Bearer", origins=[settings.url] if has_token else [])
        http = ProviderHttp(
            "comfyui",
            client,
            auth=auth,
            concurrency=concurrency,
            key_setting=AUTH_SETTING,
            retry=retry,
            sleep=sleep,
            wall_clock=wall_clock,
            draw=draw,
        )
        comfy = ComfyUIClient(settings, http, clock=clock, sleep=sleep)
    return {name: ComfyUIProvider(name, settings, comfy) for name in WORKFLOWS}
