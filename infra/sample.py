"""The demo's sample character: the public-domain NASA astronaut portrait that ships in scikit-image."""

from __future__ import annotations

import io

from PIL import Image

from contracts import ShotParams

SAMPLE_NAME = "Eileen (sample astronaut)"

SCENARIOS: dict[str, str] = {
    "close-up portrait": "close-up portrait of {name}, soft studio light, 85mm",
    "wide shot": "wide shot of {name} standing in a spacecraft hangar",
    "profile noir": "{name} in profile, film noir, black and white, hard shadows",
    "low light": "{name} at night, low light, lit by a single lamp",
    "action": "{name} running towards the camera, action shot, motion blur",
}
VARIATIONS = 3


def sample_reference_png() -> bytes:
    """Eileen Collins, NASA astronaut (public domain), as a PNG."""
    from skimage import data  # heavy import, only when the demo runs

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


def demo_shots(name: str = "the astronaut") -> list[ShotParams]:
    """5 scenarios x 3 variations, seeds 1..15: the same request every run, so results repeat."""
    shots = []
    seed = 1
    for scenario, prompt in SCENARIOS.items():
        for _ in range(VARIATIONS):
            shots.append(ShotParams(prompt=prompt.format(name=name), scenario=scenario, seed=seed))
            seed += 1
    return shots
