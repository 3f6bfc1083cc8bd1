"""Public-domain face photos that ship inside installed packages, and variants of them.

- `astronaut()`: NASA portrait of Eileen Collins, from scikit-image (public domain).
- `grace_hopper()`: US Navy portrait of Grace Hopper, from matplotlib's sample data (public domain).
"""

from __future__ import annotations

import io

from matplotlib import cbook
from PIL import Image, ImageEnhance, ImageOps
from skimage import data


def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def grace_hopper() -> Image.Image:
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        image.load()
        return image


def plain_gray(size: int = 512) -> Image.Image:
    return Image.new("RGB", (size, size), (128, 128, 128))


def darkened(image: Image.Image, brightness: float) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(brightness)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = Image.open(buffer)
    decoded.load()
    return decoded


def astronaut_variants() -> dict[str, Image.Image]:
    """Shots of the same person that the face model must still call "same" (measured <= 0.34)."""
    photo = astronaut()
    return {
        "mirrored": ImageOps.mirror(photo),
        "cropped to the head": photo.crop((100, 0, 400, 300)),
        "downscaled to 224 px": photo.resize((224, 224), Image.Resampling.LANCZOS),
        "grayscale (mode L)": photo.convert("L"),
        "with alpha (mode RGBA)": photo.convert("RGBA"),
        "rotated 10 degrees": photo.rotate(10),
        "rotated -30 degrees": photo.rotate(-30),
        "JPEG quality 10": jpeg(photo, 10),
        "darkened to 30%": darkened(photo, 0.3),
        "darkened to 4%": darkened(photo, 0.04),
        "contrast cut to 5%": ImageEnhance.Contrast(photo).enhance(0.05),
    }
