"""Loopback fakes of provider APIs, speaking their documented contracts: for tests and the demo, never real."""

from typing import Final

# provider name: the fake that plays it (infra.fakes.fleet starts them all)
FAKED_PROVIDERS: Final = {
    "fal-instant-character": "fal",
    "fal-flux-lora": "fal",
    "fal-flux-redux": "fal",
    "leonardo-character-reference": "leonardo",
    "astria-tune": "astria",
    "replicate-flux-lora": "replicate",
    "comfyui-ipadapter": "comfyui",
    "comfyui-instantid": "comfyui",
    "comfyui-reference-only": "comfyui",
}
