"""Bring any PIL image to what both models expect: upright, 8-bit RGB, no alpha."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return `image` as an upright 8-bit RGB image.

    - EXIF orientation is applied, so a phone photo is scored the way every viewer shows it.
    - Transparency is composited over white (dropping alpha would expose whatever colour the
      encoder left under transparent pixels).
    - 16- and 32-bit integer images are scaled down to 8 bits rather than clipped; float
      images in [0, 1] are scaled up to [0, 255].
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_high_depth_to_uint8(image)).convert("RGB")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_rgb_array(image: Image.Image) -> np.ndarray[tuple[int, int, int], np.dtype[np.uint8]]:
    """`to_rgb` as a C-contiguous (height, width, 3) uint8 array, the layout dlib wants."""
    array = np.ascontiguousarray(np.asarray(to_rgb(image), dtype=np.uint8))
    assert array.ndim == 3
    return array


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray[tuple[int, int], np.dtype[np.uint8]]:
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
    elif image.mode.startswith("I;16") or (values.size and values.max() > 255):
        values = values / 257.0  # 65535 -> 255
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
