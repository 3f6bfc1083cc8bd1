"""A shot with two people in it: the astronaut (left) beside Grace Hopper (right, the larger face)."""

from __future__ import annotations

from PIL import Image

from tests.sample_images import astronaut, grace_hopper

ASTRONAUT_SIDE = (0, 0, 512, 512)  # where each photo lies in the composite
GRACE_HOPPER_SIDE = (512, 0, 1024, 600)


def side_by_side() -> Image.Image:
    """1024 x 600: both faces are found without upsampling; Grace Hopper's is the larger, so it is the primary."""
    left, right = astronaut(), grace_hopper().convert("RGB")
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas
