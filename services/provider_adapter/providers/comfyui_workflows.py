"""What a self-hosted ComfyUI is asked to run: the three identity workflows, and what its refusals mean.

Each workflow is a graph in ComfyUI's API ("prompt") format, filled per shot from `ShotFill`; the
node class names and inputs follow provider-contracts.md section 5 and the custom node packs named in
`CUSTOM_NODES`. `workflow_error` turns ComfyUI's 400 (`node_errors`) into one line saying which node
failed and what to install or where to put a model file. The client and the providers are in `comfyui.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import httpx
from pydantic import SecretStr

from contracts.values import AspectRatio

IPADAPTER: Final = "comfyui-ipadapter"
INSTANTID: Final = "comfyui-instantid"
REFERENCE_ONLY: Final = "comfyui-reference-only"
AUTH_SETTING: Final = "COMFYUI_TOKEN (or LIKENESS_PROVIDER_ADAPTER_COMFYUI_TOKEN)"
URL_SETTING: Final = "COMFYUI_URL (or LIKENESS_PROVIDER_ADAPTER_COMFYUI_URL)"
SAVE_NODE: Final = "save"  # every workflow's SaveImage node id

# SDXL's trained resolutions (about 1 MP) for our aspect ratios.
SDXL_SIZES: Final[Mapping[AspectRatio, tuple[int, int]]] = MappingProxyType(
    {
        "1:1": (1024, 1024),
        "3:4": (896, 1152),
        "4:3": (1152, 896),
        "2:3": (832, 1216),
        "3:2": (1216, 832),
        "9:16": (768, 1344),
        "16:9": (1344, 768),
    }
)
# Where a class_type comes from, for "install it" messages.
CUSTOM_NODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "IPAdapterUnifiedLoader": "cubiq/ComfyUI_IPAdapter_plus",
        "IPAdapterAdvanced": "cubiq/ComfyUI_IPAdapter_plus",
        "InstantIDModelLoader": "cubiq/ComfyUI_InstantID",
        "InstantIDFaceAnalysis": "cubiq/ComfyUI_InstantID",
        "ApplyInstantID": "cubiq/ComfyUI_InstantID",
        "ReferenceOnlySimple": "comfyanonymous/ComfyUI_experiments",
    }
)
# Inputs naming a model file: the ComfyUI folder it must be in and our setting that names it.
MODEL_INPUTS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "ckpt_name": ("models/checkpoints", "COMFYUI_*_CHECKPOINT"),
        "control_net_name": ("models/controlnet", "COMFYUI_INSTANTID_CONTROLNET"),
        "instantid_file": ("models/instantid", "COMFYUI_INSTANTID_MODEL"),
        "preset": ("models/ipadapter and models/clip_vision", "COMFYUI_IPADAPTER_PRESET"),
    }
)
_MAX_ERRORS: Final = 4


@dataclass(frozen=True)
class ComfyUISettings:
    """Where ComfyUI is (None: not configured), the model files each workflow loads, pacing and price."""

    base_url: str | None
    token: SecretStr | None = None
    ipadapter_checkpoint: str = "sd_xl_base_1.0.safetensors"
    ipadapter_preset: str = "PLUS FACE (portraits)"
    ipadapter_weight: float = 0.8
    instantid_checkpoint: str = "sd_xl_base_1.0.safetensors"
    instantid_model: str = "ip-adapter.bin"
    instantid_controlnet: str = "instantid/diffusion_pytorch_model.safetensors"
    instantid_weight: float = 0.8
    face_analysis_provider: str = "CPU"  # InstantIDFaceAnalysis: CPU, CUDA, ROCM or CoreML
    reference_only_checkpoint: str = "sd_xl_base_1.0.safetensors"
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    usd_per_gpu_second: float = 0.0
    poll_s: float = 0.5
    poll_max_s: float = 3.0
    timeout_s: float = 600.0
    ws_connect_s: float = 5.0
    ws_idle_s: float = 15.0  # no websocket message for this long: look at /history (the socket may be stuck)
    max_image_bytes: int = 50 * 1024 * 1024

    @property
    def configured(self) -> bool:
        return self.base_url is not None and bool(self.base_url.strip())

    @property
    def url(self) -> str:
        return (self.base_url or "").strip().rstrip("/")


@dataclass(frozen=True)
class ShotFill:
    """What one shot puts into a workflow template."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    cfg: float
    width: int
    height: int
    image: str  # the uploaded reference's name in ComfyUI's input folder


Workflow = Callable[[ShotFill, ComfyUISettings], dict[str, Any]]


def _sampling(
    fill: ShotFill, settings: ComfyUISettings, model: list[Any], positive: list[Any], negative: list[Any]
) -> dict[str, Any]:
    """KSampler's inputs: the model and conditioning links plus the shot's numbers."""
    return {
        "model": model,
        "seed": fill.seed,
        "steps": fill.steps,
        "cfg": fill.cfg,
        "sampler_name": settings.sampler,
        "scheduler": settings.scheduler,
        "positive": positive,
        "negative": negative,
        "denoise": 1.0,
    }


def _common(fill: ShotFill, checkpoint: str) -> dict[str, Any]:
    """Checkpoint, reference, both prompts, decode and save: the nodes every workflow shares."""
    return {
        "checkpoint": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "reference": {"class_type": "LoadImage", "inputs": {"image": fill.image}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": fill.prompt, "clip": ["checkpoint", 1]}},
        "negative": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": fill.negative_prompt, "clip": ["checkpoint", 1]},
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["checkpoint", 2]}},
        SAVE_NODE: {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "likeness"}},
    }


def _empty_latent(fill: ShotFill) -> dict[str, Any]:
    return {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": fill.width, "height": fill.height, "batch_size": 1},
    }


def ipadapter_workflow(fill: ShotFill, settings: ComfyUISettings) -> dict[str, Any]:
    """SDXL + IPAdapterUnifiedLoader (preset) + IPAdapterAdvanced on the reference."""
    graph = _common(fill, settings.ipadapter_checkpoint)
    graph["loader"] = {
        "class_type": "IPAdapterUnifiedLoader",
        "inputs": {"model": ["checkpoint", 0], "preset": settings.ipadapter_preset},
    }
    graph["apply"] = {
        "class_type": "IPAdapterAdvanced",
        "inputs": {
            "model": ["loader", 0],
            "ipadapter": ["loader", 1],
            "image": ["reference", 0],
            "weight": settings.ipadapter_weight,
            "weight_type": "linear",
            "combine_embeds": "concat",
            "start_at": 0.0,
            "end_at": 1.0,
            "embeds_scaling": "V only",
        },
    }
    graph["latent"] = _empty_latent(fill)
    inputs = _sampling(fill, settings, ["apply", 0], ["positive", 0], ["negative", 0])
    graph["sampler"] = {"class_type": "KSampler", "inputs": {**inputs, "latent_image": ["latent", 0]}}
    return graph


def instantid_workflow(fill: ShotFill, settings: ComfyUISettings) -> dict[str, Any]:
    """SDXL + InstantID: its IP-Adapter, insightface and ControlNet applied to model and conditioning."""
    graph = _common(fill, settings.instantid_checkpoint)
    graph["instantid"] = {"class_type": "InstantIDModelLoader", "inputs": {"instantid_file": settings.instantid_model}}
    graph["faces"] = {"class_type": "InstantIDFaceAnalysis", "inputs": {"provider": settings.face_analysis_provider}}
    graph["controlnet"] = {
        "class_type": "ControlNetLoader",
        "inputs": {"control_net_name": settings.instantid_controlnet},
    }
    graph["apply"] = {
        "class_type": "ApplyInstantID",
        "inputs": {
            "instantid": ["instantid", 0],
            "insightface": ["faces", 0],
            "control_net": ["controlnet", 0],
            "image": ["reference", 0],
            "model": ["checkpoint", 0],
            "positive": ["positive", 0],
            "negative": ["negative", 0],
            "weight": settings.instantid_weight,
            "start_at": 0.0,
            "end_at": 1.0,
        },
    }
    graph["latent"] = _empty_latent(fill)
    inputs = _sampling(fill, settings, ["apply", 0], ["apply", 1], ["apply", 2])
    graph["sampler"] = {"class_type": "KSampler", "inputs": {**inputs, "latent_image": ["latent", 0]}}
    return graph


def reference_only_workflow(fill: ShotFill, settings: ComfyUISettings) -> dict[str, Any]:
    """ReferenceOnlySimple: the reference, scaled to the shot's size and VAE-encoded, shares self-attention.

    The node samples the reference latent and the new one as a batch; `LatentFromBatch` keeps the new one.
    """
    graph = _common(fill, settings.reference_only_checkpoint)
    graph["scale"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["reference", 0],
            "upscale_method": "lanczos",
            "width": fill.width,
            "height": fill.height,
            "crop": "center",
        },
    }
    graph["encode"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["scale", 0], "vae": ["checkpoint", 2]}}
    graph["apply"] = {
        "class_type": "ReferenceOnlySimple",
        "inputs": {"model": ["checkpoint", 0], "reference": ["encode", 0], "batch_size": 1},
    }
    inputs = _sampling(fill, settings, ["apply", 0], ["positive", 0], ["negative", 0])
    graph["sampler"] = {"class_type": "KSampler", "inputs": {**inputs, "latent_image": ["apply", 1]}}
    graph["pick"] = {
        "class_type": "LatentFromBatch",
        "inputs": {"samples": ["sampler", 0], "batch_index": 1, "length": 1},
    }
    graph["decode"]["inputs"]["samples"] = ["pick", 0]
    return graph


WORKFLOWS: Final[Mapping[str, Workflow]] = MappingProxyType(
    {IPADAPTER: ipadapter_workflow, INSTANTID: instantid_workflow, REFERENCE_ONLY: reference_only_workflow}
)


def workflow_error(provider: str, response: httpx.Response) -> str:
    """ComfyUI's 400 to /prompt in one line: each failing node, what is wrong, and what to do about it."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, Mapping):
        return f"ComfyUI refused the {provider} workflow (HTTP 400): {response.text[:300]}"
    found = body.get("error")
    error: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    problems = []
    for node_id, node in (body.get("node_errors") or {}).items():
        class_type = node.get("class_type", "?") if isinstance(node, Mapping) else "?"
        for item in (node.get("errors") or [])[:_MAX_ERRORS] if isinstance(node, Mapping) else []:
            problems.append(f"node {node_id} ({class_type}): {_node_problem(class_type, item)}")
    if not problems:
        message = str(error.get("message") or "invalid prompt")
        missing = re.search(r"node (\S+) does not exist", message)
        hint = ""
        if missing is not None:
            pack = CUSTOM_NODES.get(missing.group(1))
            hint = f"; install the custom node pack {pack} in ComfyUI and restart it" if pack else ""
        details = f" ({error['details']})" if error.get("details") else ""
        problems.append(f"{message}{details}{hint}")
    kind = error.get("type") or "invalid_prompt"
    return f"ComfyUI refused the {provider} workflow ({kind}): " + "; ".join(problems)


def _node_problem(class_type: str, item: Any) -> str:
    if not isinstance(item, Mapping):
        return str(item)
    kind, message, details = item.get("type", ""), item.get("message", ""), item.get("details", "")
    found = item.get("extra_info")
    extra: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    input_name = str(extra.get("input_name") or "")
    text = f"{message}: {details}" if details else str(message)
    if kind == "value_not_in_list" and input_name in MODEL_INPUTS:
        folder, setting = MODEL_INPUTS[input_name]
        return f"{text}; put that file in ComfyUI's {folder} or set {setting} to one it has"
    if class_type == "LoadImage":
        return f"{text}; the reference is not in ComfyUI's input folder: rebuild the identity"
    if kind == "required_input_missing":
        return f"{text}; the workflow template is out of date for this ComfyUI or custom node version"
    return text
