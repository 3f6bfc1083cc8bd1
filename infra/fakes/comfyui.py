"""A fake of a self-hosted ComfyUI server, on loopback: a test and demo tool, never ComfyUI.

It speaks the routes of provider-contracts.md section 5: `POST /upload/image` (multipart `image`,
`overwrite`, `type`, `subfolder`; answers `{name, subfolder, type}`), `POST /prompt` (validates the
graph as ComfyUI does: known class_types, required inputs, links to existing nodes and matching
output types, values in their lists, an output node; 400 with `error` and `node_errors` in
ComfyUI's shape otherwise), `GET /history[/{prompt_id}]` (`{}` until done), `GET /view`, `GET /queue`,
`POST /queue` (`delete`) and the websocket `/ws?clientId=` (status, execution_start,
execution_cached, executing, progress per sampling step, executed, executing with `node: null`,
execution_success). Serve it with `LoopbackServer(fake.app, name="comfyui", ws="websockets")`; with
the default `ws="none"` the websocket is unavailable and clients must poll.

Prompts run one at a time, `step_s` seconds per sampling step. The images are real: the LoadImage
reference is transformed as the offline simulator does (`sim_images`) at the EmptyLatentImage or
ImageScale size, so scoring downstream sees the reference person. Faults are scripted per endpoint
(`inject`). Nothing here is ComfyUI's output, and every HTTP answer says so: the `X-Likeness-Fake:
comfyui` header, and output file names starting "fake-comfyui-".
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from infra.fakes.faults import Fault, FaultScript
from services.provider_adapter.providers import sim_images
from services.provider_adapter.providers.http import FAKE_MARKER_HEADER, FAKE_TRANSFORM_HEADER

FILE_PREFIX: Final = "fake-comfyui-"
Endpoint = Literal["upload", "prompt", "history", "view", "queue"]
SAMPLERS: Final = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "ddim")
SCHEDULERS: Final = ("normal", "karras", "exponential", "sgm_uniform", "simple")
WEIGHT_TYPES: Final = ("linear", "ease in", "ease out", "ease in-out", "style transfer", "composition")
IPADAPTER_PRESETS: Final = (
    "LIGHT - SD1.5 only (low strength)",
    "STANDARD (medium strength)",
    "VIT-G (medium strength)",
    "PLUS (high strength)",
    "PLUS FACE (portraits)",
    "FULL FACE - SD1.5 only (portraits stronger)",
)

# What an input takes: a socket type (a link), a primitive, or a list of values (`files:` a model folder).
Spec = str | tuple[str, ...]


@dataclass(frozen=True)
class NodeClass:
    required: Mapping[str, Spec]
    outputs: tuple[str, ...]
    output_node: bool = False


NODE_CLASSES: Final[Mapping[str, NodeClass]] = {
    "CheckpointLoaderSimple": NodeClass({"ckpt_name": "files:checkpoints"}, ("MODEL", "CLIP", "VAE")),
    "LoadImage": NodeClass({"image": "files:input"}, ("IMAGE", "MASK")),
    "CLIPTextEncode": NodeClass({"text": "STRING", "clip": "CLIP"}, ("CONDITIONING",)),
    "EmptyLatentImage": NodeClass({"width": "INT", "height": "INT", "batch_size": "INT"}, ("LATENT",)),
    "KSampler": NodeClass(
        {
            "model": "MODEL",
            "seed": "INT",
            "steps": "INT",
            "cfg": "FLOAT",
            "sampler_name": SAMPLERS,
            "scheduler": SCHEDULERS,
            "positive": "CONDITIONING",
            "negative": "CONDITIONING",
            "latent_image": "LATENT",
            "denoise": "FLOAT",
        },
        ("LATENT",),
    ),
    "VAEDecode": NodeClass({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "VAEEncode": NodeClass({"pixels": "IMAGE", "vae": "VAE"}, ("LATENT",)),
    "ImageScale": NodeClass(
        {
            "image": "IMAGE",
            "upscale_method": ("nearest-exact", "bilinear", "area", "bicubic", "lanczos"),
            "width": "INT",
            "height": "INT",
            "crop": ("disabled", "center"),
        },
        ("IMAGE",),
    ),
    "LatentFromBatch": NodeClass({"samples": "LATENT", "batch_index": "INT", "length": "INT"}, ("LATENT",)),
    "ControlNetLoader": NodeClass({"control_net_name": "files:controlnet"}, ("CONTROL_NET",)),
    "SaveImage": NodeClass({"images": "IMAGE", "filename_prefix": "STRING"}, (), output_node=True),
    # cubiq/ComfyUI_IPAdapter_plus
    "IPAdapterUnifiedLoader": NodeClass({"model": "MODEL", "preset": IPADAPTER_PRESETS}, ("MODEL", "IPADAPTER")),
    "IPAdapterAdvanced": NodeClass(
        {
            "model": "MODEL",
            "ipadapter": "IPADAPTER",
            "image": "IMAGE",
            "weight": "FLOAT",
            "weight_type": WEIGHT_TYPES,
            "combine_embeds": ("concat", "add", "subtract", "average", "norm average"),
            "start_at": "FLOAT",
            "end_at": "FLOAT",
            "embeds_scaling": ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"),
        },
        ("MODEL",),
    ),
    # cubiq/ComfyUI_InstantID
    "InstantIDModelLoader": NodeClass({"instantid_file": "files:instantid"}, ("INSTANTID",)),
    "InstantIDFaceAnalysis": NodeClass({"provider": ("CPU", "CUDA", "ROCM", "CoreML")}, ("FACEANALYSIS",)),
    "ApplyInstantID": NodeClass(
        {
            "instantid": "INSTANTID",
            "insightface": "FACEANALYSIS",
            "control_net": "CONTROL_NET",
            "image": "IMAGE",
            "model": "MODEL",
            "positive": "CONDITIONING",
            "negative": "CONDITIONING",
            "weight": "FLOAT",
            "start_at": "FLOAT",
            "end_at": "FLOAT",
        },
        ("MODEL", "CONDITIONING", "CONDITIONING"),
    ),
    # comfyanonymous/ComfyUI_experiments
    "ReferenceOnlySimple": NodeClass(
        {"model": "MODEL", "reference": "LATENT", "batch_size": "INT"}, ("MODEL", "LATENT")
    ),
}
DEFAULT_MODELS: Final[Mapping[str, tuple[str, ...]]] = {
    "checkpoints": ("sd_xl_base_1.0.safetensors", "juggernautXL_v9.safetensors"),
    "controlnet": ("instantid/diffusion_pytorch_model.safetensors",),
    "instantid": ("ip-adapter.bin",),
}


@dataclass
class _Prompt:
    prompt_id: str
    number: int
    graph: dict[str, Any]
    client_id: str | None
    state: Literal["pending", "running", "done"] = "pending"


@dataclass
class ComfyUIFake:
    """The fake's state, scripts and counters; `app` is the ASGI app to serve (see infra.fakes.server)."""

    step_s: float = 0.0  # seconds per sampling step (slow runs)
    node_classes: dict[str, NodeClass] = field(default_factory=lambda: dict(NODE_CLASSES))  # drop one: not installed
    models: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    fail_at: str | None = None  # a class_type whose execution fails (execution_error), e.g. "ApplyInstantID"
    ws_drop_at_step: int | None = None  # close the client's websocket after this sampling step
    token: str | None = field(default=None, repr=False)  # a proxy in front wants `Authorization: Bearer <token>`
    unauthorized: int = field(default=0, init=False)
    uploads: int = field(default=0, init=False)  # accepted uploads
    prompt_posts: int = field(default=0, init=False)  # every POST /prompt, whatever it was answered
    accepted: int = field(default=0, init=False)
    history_gets: int = field(default=0, init=False)
    queue_gets: int = field(default=0, init=False)
    view_gets: int = field(default=0, init=False)
    ws_connections: int = field(default=0, init=False)
    received: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)  # accepted graphs
    inputs: dict[str, bytes] = field(default_factory=dict, init=False, repr=False)  # the input folder
    outputs: dict[str, tuple[bytes, str]] = field(default_factory=dict, init=False, repr=False)  # name: (png, how)
    history: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    _faults: FaultScript = field(default_factory=FaultScript, init=False, repr=False)
    _queue: dict[str, _Prompt] = field(default_factory=dict, init=False, repr=False)
    _sockets: dict[str, list[WebSocket]] = field(default_factory=dict, init=False, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _worker: asyncio.Lock | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def inject(self, endpoint: Endpoint, *faults: Fault) -> None:
        """The next requests to `endpoint` meet these faults, one each, in order."""
        self._faults.inject(endpoint, *faults)

    @property
    def app(self) -> ASGIApp:
        routes: list[Route | WebSocketRoute] = [
            Route("/upload/image", self._upload, methods=["POST"]),
            Route("/prompt", self._prompt, methods=["POST"]),
            Route("/history", self._history_all, methods=["GET"]),
            Route("/history/{prompt_id}", self._history_one, methods=["GET"]),
            Route("/view", self._view, methods=["GET"]),
            Route("/queue", self._queue_get, methods=["GET"]),
            Route("/queue", self._queue_post, methods=["POST"]),
            WebSocketRoute("/ws", self._ws),
        ]
        return _marked(self._guarded(Starlette(routes=routes)))

    def _guarded(self, app: ASGIApp) -> ASGIApp:
        """With a `token`, HTTP requests without it get a 401 and websocket handshakes are refused (403)."""

        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            headers = dict(scope.get("headers") or [])
            if self.token is None or headers.get(b"authorization") == f"Bearer {self.token}".encode():
                await app(scope, receive, send)
                return
            self.unauthorized += 1
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            elif scope["type"] == "http":
                await JSONResponse({"error": "Unauthorized (fake proxy)"}, status_code=401)(scope, receive, send)

        return guarded

    # --- endpoints ---------------------------------------------------------------------------------

    async def _upload(self, request: Request) -> Response:
        faulted = await self._fault("upload")
        if faulted is not None:
            return faulted
        form = await request.form()
        image = form.get("image")
        if not isinstance(image, UploadFile) or not image.filename:
            return Response(status_code=400)
        name = image.filename.rsplit("/", 1)[-1]
        data = await image.read()
        subfolder = str(form.get("subfolder") or "")
        key = f"{subfolder}/{name}" if subfolder else name
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
        if key in self.inputs and self.inputs[key] != data and not overwrite:
            stem, _, ext = name.rpartition(".")
            counter = 1
            while f"{stem} ({counter}).{ext}" in self.inputs:
                counter += 1
            name = f"{stem} ({counter}).{ext}"
            key = f"{subfolder}/{name}" if subfolder else name
        self.inputs[key] = data
        self.uploads += 1
        return JSONResponse({"name": name, "subfolder": subfolder, "type": str(form.get("type") or "input")})

    async def _prompt(self, request: Request) -> Response:
        self.prompt_posts += 1
        faulted = await self._fault("prompt")
        if faulted is not None:
            return faulted
        try:
            body = await request.json()
        except ValueError:
            body = None
        graph = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(graph, dict):
            error = {"type": "invalid_prompt", "message": "Invalid prompt: no prompt", "details": "", "extra_info": {}}
            return JSONResponse({"error": error, "node_errors": {}}, status_code=400)
        refused = self._validate(graph)
        if refused is not None:
            return JSONResponse(refused, status_code=400)
        self.accepted += 1
        self.received.append(graph)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        job = _Prompt(prompt_id, self.accepted, graph, body.get("client_id"))
        self._queue[prompt_id] = job
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return JSONResponse({"prompt_id": prompt_id, "number": job.number, "node_errors": {}})

    async def _history_all(self, request: Request) -> Response:
        faulted = await self._fault("history")
        if faulted is not None:
            return faulted
        most = int(request.query_params.get("max_items") or len(self.history) or 1)
        return JSONResponse(dict(list(self.history.items())[-most:]))

    async def _history_one(self, request: Request) -> Response:
        self.history_gets += 1
        faulted = await self._fault("history")
        if faulted is not None:
            return faulted
        prompt_id = request.path_params["prompt_id"]
        entry = self.history.get(prompt_id)
        return JSONResponse({prompt_id: entry} if entry is not None else {})

    async def _view(self, request: Request) -> Response:
        self.view_gets += 1
        faulted = await self._fault("view")
        if faulted is not None:
            return faulted
        name, subfolder = request.query_params.get("filename", ""), request.query_params.get("subfolder", "")
        key = f"{subfolder}/{name}" if subfolder else name
        if request.query_params.get("type", "output") == "input":
            data = self.inputs.get(key)
            return Response(data, media_type="image/png") if data is not None else Response(status_code=404)
        served = self.outputs.get(key)
        if served is None:
            return Response(status_code=404)
        headers = {FAKE_TRANSFORM_HEADER: served[1].encode("ascii", "replace").decode("ascii")}
        return Response(served[0], media_type="image/png", headers=headers)

    async def _queue_get(self, request: Request) -> Response:
        self.queue_gets += 1
        faulted = await self._fault("queue")
        if faulted is not None:
            return faulted
        listed = {"running": [], "pending": []}  # type: dict[str, list[list[Any]]]
        for job in self._queue.values():
            if job.state != "done":
                listed[job.state].append([job.number, job.prompt_id, job.graph, {"client_id": job.client_id}, [SAVE]])
        return JSONResponse({"queue_running": listed["running"], "queue_pending": listed["pending"]})

    async def _queue_post(self, request: Request) -> Response:
        body = await request.json()
        for prompt_id in body.get("delete") or [] if isinstance(body, dict) else []:
            job = self._queue.get(prompt_id)
            if job is not None and job.state == "pending":
                del self._queue[prompt_id]
        return Response(status_code=200)

    async def _ws(self, socket: WebSocket) -> None:
        client_id = socket.query_params.get("clientId") or uuid.uuid4().hex
        await socket.accept()
        self.ws_connections += 1
        self._sockets.setdefault(client_id, []).append(socket)
        try:
            pending = sum(1 for job in self._queue.values() if job.state != "done")
            await socket.send_json(
                {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": pending}}, "sid": client_id}}
            )
            while True:
                await socket.receive_text()
        except (WebSocketDisconnect, RuntimeError):  # the client left, or we closed it
            pass
        finally:
            self._sockets[client_id].remove(socket)

    # --- running a prompt --------------------------------------------------------------------------

    async def _run(self, job: _Prompt) -> None:
        if self._worker is None:
            self._worker = asyncio.Lock()
        async with self._worker:  # one prompt at a time, as ComfyUI's single worker
            if job.prompt_id not in self._queue:  # deleted while pending
                return
            job.state = "running"
            messages: list[list[Any]] = []
            await self._send(job, "execution_start", {"timestamp": _ms()}, messages)
            await self._send(job, "execution_cached", {"nodes": [], "timestamp": _ms()}, messages)
            error: dict[str, Any] | None = None
            for node_id, node in job.graph.items():
                await self._send(job, "executing", {"node": node_id, "display_node": node_id}, None)
                if node["class_type"] == self.fail_at:
                    error = {
                        "node_id": node_id,
                        "node_type": node["class_type"],
                        "executed": [],
                        "exception_message": "No face detected in the reference image (fake)",
                        "exception_type": "Exception",
                        "traceback": [],
                        "current_inputs": {},
                        "current_outputs": {},
                    }
                    await self._send(job, "execution_error", {**error, "timestamp": _ms()}, messages)
                    break
                if node["class_type"] == "KSampler":
                    steps = int(node["inputs"]["steps"])
                    for step in range(1, steps + 1):
                        await asyncio.sleep(self.step_s)
                        await self._send(job, "progress", {"value": step, "max": steps, "node": node_id}, None)
            outputs: dict[str, Any] = {}
            if error is None:
                saved = await asyncio.to_thread(self._render, job)
                save_id = next(key for key, node in job.graph.items() if node["class_type"] == "SaveImage")
                outputs[save_id] = {"images": [{"filename": saved, "subfolder": "", "type": "output"}]}
                await self._send(
                    job, "executed", {"node": save_id, "display_node": save_id, "output": outputs[save_id]}, None
                )
                await self._send(job, "execution_success", {"timestamp": _ms()}, messages)
            status = {"status_str": "error" if error else "success", "completed": error is None, "messages": messages}
            self.history[job.prompt_id] = {
                "prompt": [job.number, job.prompt_id, job.graph, {"client_id": job.client_id}, [SAVE]],
                "outputs": outputs,
                "status": status,
                "meta": {},
            }
            job.state = "done"
            del self._queue[job.prompt_id]
        await self._send(job, "executing", {"node": None}, None)

    async def _send(self, job: _Prompt, kind: str, data: dict[str, Any], messages: list[list[Any]] | None) -> None:
        data = {**data, "prompt_id": job.prompt_id}
        if messages is not None:
            messages.append([kind, data])
        for socket in list(self._sockets.get(job.client_id or "", [])):
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # a client that left
                await socket.send_json({"type": kind, "data": data})
                if kind == "progress" and self.ws_drop_at_step is not None and data["value"] >= self.ws_drop_at_step:
                    await socket.close(code=1011)

    def _render(self, job: _Prompt) -> str:
        """The LoadImage reference transformed for the prompt's scenario at the graph's size (a thread)."""
        graph = job.graph
        by_class = {node["class_type"]: node["inputs"] for node in graph.values()}
        source = sim_images.decode_image(self.inputs[by_class["LoadImage"]["image"]])
        size_from = by_class.get("EmptyLatentImage") or by_class.get("ImageScale") or {"width": 1024, "height": 1024}
        size = (int(size_from["width"]), int(size_from["height"]))
        sampler = by_class["KSampler"]
        prompt = _text(graph, sampler["positive"])
        scenario = sim_images.scenario_for(None, prompt)
        shot = sim_images.render(source, scenario, size, np.random.default_rng(int(sampler["seed"])), mirror=True)
        identity = next(
            (c for c in ("IPAdapterAdvanced", "ApplyInstantID", "ReferenceOnlySimple") if c in by_class), "?"
        )
        name = f"{FILE_PREFIX}{job.prompt_id}_00001_.png"
        how = f"{scenario} via {identity} from the LoadImage reference: {shot.transform}; {size[0]}x{size[1]}"
        self.outputs[name] = (sim_images.encode_png(shot), how)
        return name

    # --- validation, as ComfyUI's validate_prompt answers ----------------------------------------

    def _validate(self, graph: dict[str, Any]) -> dict[str, Any] | None:
        for node_id, node in graph.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type is None:
                return _prompt_error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
            if class_type not in self.node_classes:
                return _prompt_error(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{node_id}'",
                )
        outputs = [node_id for node_id, node in graph.items() if self.node_classes[node["class_type"]].output_node]
        if not outputs:
            return _prompt_error("prompt_no_outputs", "Prompt has no outputs", "")
        node_errors: dict[str, Any] = {}
        for node_id, node in graph.items():
            errors = self._node_errors(graph, node)
            if errors:
                node_errors[node_id] = {
                    "errors": errors,
                    "dependent_outputs": outputs,
                    "class_type": node["class_type"],
                }
        if not node_errors:
            return None
        failed = _prompt_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", "")
        return {**failed, "node_errors": node_errors}

    def _node_errors(self, graph: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
        spec = self.node_classes[node["class_type"]]
        inputs = node.get("inputs") or {}
        errors = []
        for name, wants in spec.required.items():
            if name not in inputs:
                errors.append(_node_error("required_input_missing", "Required input is missing", name, name))
                continue
            value = inputs[name]
            if isinstance(wants, str) and wants.isupper() and wants not in ("INT", "FLOAT", "STRING"):
                problem = self._link_problem(graph, value, wants)
                if problem is not None:
                    errors.append(_node_error(problem[0], problem[1], f"{name}, {problem[2]}", name))
                continue
            allowed: tuple[str, ...] | None = None
            if isinstance(wants, tuple):
                allowed = wants
            elif wants.startswith("files:"):
                folder = wants.removeprefix("files:")
                allowed = tuple(self.inputs) if folder == "input" else self.models.get(folder, ())
            if allowed is not None and value not in allowed:
                if wants == "files:input":
                    errors.append(
                        _node_error(
                            "custom_validation_failed",
                            "Custom validation failed for node",
                            f"image - Invalid image file: {value}",
                            name,
                        )
                    )
                else:
                    shown = ", ".join(f"'{item}'" for item in allowed[:8])
                    errors.append(
                        _node_error(
                            "value_not_in_list", "Value not in list", f"{name}: '{value}' not in [{shown}]", name
                        )
                    )
            elif wants in ("INT", "FLOAT") and (isinstance(value, bool) or not isinstance(value, int | float)):
                errors.append(
                    _node_error(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {wants} value",
                        f"{name}, {value!r}",
                        name,
                    )
                )
        return errors

    def _link_problem(self, graph: dict[str, Any], value: Any, wants: str) -> tuple[str, str, str] | None:
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)):
            return "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", repr(value)
        source = graph.get(str(value[0]))
        if source is None:
            return "bad_linked_input", "Linked node does not exist", f"node '{value[0]}' is not in the prompt"
        produces = self.node_classes[source["class_type"]].outputs
        got = produces[value[1]] if 0 <= value[1] < len(produces) else None
        if got != wants:
            return (
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                f"received_type({got}) mismatch input_type({wants})",
            )
        return None

    # --- plumbing ----------------------------------------------------------------------------------

    async def _fault(self, endpoint: Endpoint) -> Response | None:
        return await self._faults.meet(
            endpoint,
            lambda fault, headers: Response(
                f"injected fault (fake): HTTP {fault.status}", status_code=fault.status or 500, headers=headers
            ),
        )


SAVE: Final = "save"


def _text(graph: Mapping[str, Any], link: Any) -> str:
    """The text of the CLIPTextEncode a conditioning link leads back to (through ApplyInstantID)."""
    for _ in range(len(graph)):
        if not isinstance(link, list):
            return ""
        node = graph.get(str(link[0])) or {}
        if node.get("class_type") == "CLIPTextEncode":
            return str(node["inputs"].get("text", ""))
        link = (node.get("inputs") or {}).get("positive" if link[1] == 1 else "negative")
    return ""


def _prompt_error(kind: str, message: str, details: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}


def _node_error(kind: str, message: str, details: str, input_name: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {"input_name": input_name}}


def _ms() -> int:
    return int(time.time() * 1000)


def _marked(app: ASGIApp) -> ASGIApp:
    """Every HTTP response, errors included, carries `X-Likeness-Fake: comfyui`."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (FAKE_MARKER_HEADER.lower().encode(), b"comfyui")]
            await send(message)

        await app(scope, receive, send_marked)

    return marked
