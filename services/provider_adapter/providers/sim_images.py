"""Pure image transformations behind the offline simulator: a reference reframed for a scenario.

Nothing here is a generative model. Each "shot" is one reference photo cropped, scaled,
regraded, rotated or blurred so that it looks like the scenario asked for, and every PNG
says so in a text chunk. A drifted shot applies the same treatment to a photo of a
different real person (Grace Hopper, public domain, shipped with matplotlib).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from matplotlib import cbook
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, PngImagePlugin

from contracts.values import AspectRatio

SIMULATED_NOTICE: Final = "Likeness offline simulator: transformed reference, not model output"
LONG_SIDE: Final = 512

CLOSE_UP: Final = "close-up portrait"
WIDE: Final = "wide shot"
NOIR: Final = "profile noir"
LOW_LIGHT: Final = "low light"
ACTION: Final = "action"
REFRAME: Final = "reframed reference"
SCENARIOS: Final = (CLOSE_UP, WIDE, NOIR, LOW_LIGHT, ACTION)

# Checked in order: the first scenario with a keyword in the text wins.
_KEYWORDS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (NOIR, ("noir", "profile", "black and white", "black-and-white", "monochrome", "b&w")),
    (LOW_LIGHT, ("low light", "low-light", "night", "dark", "dim ", "candle", "moonlight")),
    (ACTION, ("action", "running", "jump", "fight", "motion", "dynamic", "sprint")),
    (WIDE, ("wide", "full body", "full-body", "establishing", "landscape", "far away", "distant")),
    (CLOSE_UP, ("close-up", "close up", "closeup", "headshot", "portrait", "face")),
)

# Where a portrait's face usually is, as fractions of width and height.
_FACE_FOCUS: Final = (0.5, 0.34)

FloatImage = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Shot:
    """One simulated shot: the image and what was done to make it."""

    image: Image.Image
    scenario: str
    transform: str


def scenario_for(label: str | None, prompt: str) -> str:
    """The scenario named by `label` if it names one, else the one the prompt suggests."""
    for text in (label, prompt):
        if text:
            found = _match_keywords(text)
            if found is not None:
                return found
    return REFRAME


def _match_keywords(text: str) -> str | None:
    lowered = f" {text.lower()} "
    for scenario, words in _KEYWORDS:
        if any(word in lowered for word in words):
            return scenario
    return None


def output_size(aspect_ratio: AspectRatio) -> tuple[int, int]:
    """Width and height for an aspect ratio such as "3:4", LONG_SIDE pixels on the long side."""
    w_part, h_part = (int(part) for part in aspect_ratio.split(":"))
    if w_part >= h_part:
        return LONG_SIDE, round(LONG_SIDE * h_part / w_part)
    return round(LONG_SIDE * w_part / h_part), LONG_SIDE


def decode_image(data: bytes) -> Image.Image:
    """Decode an uploaded reference into RGB. Raises ValueError when it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"not a readable image: {exc}") from exc


@lru_cache(maxsize=1)
def stand_in_face() -> Image.Image:
    """A different real person for drifted shots: Grace Hopper (public domain, ships with matplotlib)."""
    path = Path(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    with Image.open(path) as opened:
        return opened.convert("RGB")


def encode_png(shot: Shot) -> bytes:
    """PNG bytes carrying text chunks that say the image is simulated. Same shot, same bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", SIMULATED_NOTICE)
    info.add_text("Software", "Likeness offline simulator")
    info.add_text("Comment", f"{shot.scenario}: {shot.transform}")
    buffer = io.BytesIO()
    shot.image.save(buffer, format="PNG", pnginfo=info, optimize=False, compress_level=3)
    return buffer.getvalue()


def render(
    source: Image.Image,
    scenario: str,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    mirror: bool = True,
) -> Shot:
    """Transform `source` to look like `scenario`, at exactly `size`, with variation drawn from `rng`.

    `mirror=False` keeps the source's orientation in scenarios that would flip it; the same numbers
    are drawn from `rng` either way, so a shot differs only in that flip.
    """
    renderers = {
        CLOSE_UP: _close_up,
        WIDE: _wide_shot,
        NOIR: _profile_noir,
        LOW_LIGHT: _low_light,
        ACTION: _action,
    }
    image, transform = renderers.get(scenario, _reframe)(source.convert("RGB"), size, rng, mirror)
    assert image.size == size, (image.size, size)
    return Shot(image=image, scenario=scenario, transform=transform)


# --- scenarios ---------------------------------------------------------------------------------


def _close_up(
    src: Image.Image, size: tuple[int, int], rng: np.random.Generator, mirror: bool
) -> tuple[Image.Image, str]:
    fraction = float(rng.uniform(0.48, 0.56))
    cx, cy = _jittered_focus(rng, 0.02)
    box = _frame_box(src.size, size, fraction, (cx, cy))
    image = src.resize(size, Image.Resampling.LANCZOS, box=box)
    warmth = float(rng.uniform(1.0, 1.06))
    image = _channel_gains(ImageEnhance.Color(image).enhance(1.1), (warmth, 1.0, 2.0 - warmth))
    image = _vignette(image, strength=0.25)
    return image, (
        f"tight crop ({fraction:.0%} of the short side) around ({cx:.2f}, {cy:.2f}), warmth {warmth:.2f}, vignette"
    )


def _wide_shot(
    src: Image.Image, size: tuple[int, int], rng: np.random.Generator, mirror: bool
) -> tuple[Image.Image, str]:
    width, height = size
    canvas = _backdrop(size, rng)
    # Scale by the long side, not the height, so the face stays about 50 px in every aspect ratio:
    # small enough to read as a wide shot, large enough for a face detector.
    scale = float(rng.uniform(0.58, 0.64))
    subject_h = round(LONG_SIDE * scale)
    # In narrow frames keep only the middle of the reference (around the face) so the backdrop shows.
    crop_w = min(float(src.width), 0.85 * width / subject_h * src.height)
    crop_left = min(max(_FACE_FOCUS[0] * src.width - crop_w / 2, 0.0), src.width - crop_w)
    subject_w = round(crop_w * subject_h / src.height)
    subject = src.resize(
        (subject_w, subject_h),
        Image.Resampling.LANCZOS,
        box=(crop_left, 0.0, crop_left + crop_w, float(src.height)),
    )
    feather = max(6, subject_w // 14)
    mask = _feathered_mask(subject.size, feather)
    left = round(float(rng.uniform(0.15, 0.85)) * (width - subject_w))
    # Stand the subject on the ground (its feathered lower edge below the frame), head never cut.
    top = max(round(0.04 * height), height - subject_h + feather + int(rng.integers(0, feather + 1)))
    canvas.paste(subject, (left, top), mask)
    return canvas, (f"subject scaled to {subject_h} px ({scale:.0%} of {LONG_SIDE}) on a painted backdrop at x={left}")


def _profile_noir(
    src: Image.Image, size: tuple[int, int], rng: np.random.Generator, mirror: bool
) -> tuple[Image.Image, str]:
    fraction = float(rng.uniform(0.62, 0.72))
    cx, cy = _jittered_focus(rng, 0.02)
    box = _frame_box(src.size, size, fraction, (cx, cy))
    gray = ImageOps.grayscale(src.resize(size, Image.Resampling.LANCZOS, box=box))
    contrast = float(rng.uniform(1.35, 1.6))
    gray = ImageEnhance.Contrast(ImageOps.autocontrast(gray, cutoff=1)).enhance(contrast)
    image = (ImageOps.mirror(gray) if mirror else gray).convert("RGB")
    side = float(rng.uniform(0.25, 0.4))
    image = _side_light(image, shadow=side, from_left=bool(rng.random() < 0.5))
    image = _vignette(image, strength=0.45)
    return image, (
        f"{_flip_note(mirror, 'mirrored')}grayscale, contrast x{contrast:.2f}, side shadow {side:.0%}, "
        f"crop {fraction:.0%} of the short side"
    )


def _low_light(
    src: Image.Image, size: tuple[int, int], rng: np.random.Generator, mirror: bool
) -> tuple[Image.Image, str]:
    fraction = float(rng.uniform(0.7, 0.82))
    cx, cy = _jittered_focus(rng, 0.03)
    box = _frame_box(src.size, size, fraction, (cx, cy))
    image = src.resize(size, Image.Resampling.LANCZOS, box=box)
    # Night: a gamma curve crushes shadows, a pool of light falls on the face, the rest sinks into blue.
    gamma = float(rng.uniform(1.9, 2.3))
    brightness = float(rng.uniform(0.5, 0.6))
    noise_sigma = float(rng.uniform(2.0, 3.5))
    pixels = _as_float(ImageEnhance.Color(image).enhance(0.7)) / 255.0
    pixels = pixels**gamma * (255.0 * brightness)
    face = (
        (cx * src.width - box[0]) / (box[2] - box[0]) * size[0],
        (cy * src.height - box[1]) / (box[3] - box[1]) * size[1],
    )
    pool = 0.3 + 0.7 * np.exp(-((_distance_from(pixels.shape, face) / (0.45 * min(size))) ** 2))
    pixels *= pool[..., None] * np.array([0.8, 0.92, 1.2], dtype=np.float32)
    pixels += rng.normal(0.0, noise_sigma, size=pixels.shape).astype(np.float32)
    return _from_float(pixels), (
        f"gamma {gamma:.2f}, brightness x{brightness:.2f}, light pool on the face, blue cast, "
        f"sensor noise sigma {noise_sigma:.1f}"
    )


def _action(src: Image.Image, size: tuple[int, int], rng: np.random.Generator, mirror: bool) -> tuple[Image.Image, str]:
    angle = float(rng.uniform(8.0, 12.0)) * (1.0 if rng.random() < 0.5 else -1.0)
    blur_px = int(rng.integers(18, 28))
    fraction = float(rng.uniform(0.62, 0.72))
    cx, cy = _jittered_focus(rng, 0.02)
    # Pad by reflection so rotating never shows empty corners, then rotate about the face.
    pad = max(src.size) // 4
    padded = Image.fromarray(np.pad(np.asarray(src), ((pad, pad), (pad, pad), (0, 0)), mode="reflect"))
    if mirror:
        padded, cx = ImageOps.mirror(padded), 1.0 - cx
    focus = (pad + cx * src.width, pad + cy * src.height)
    rotated = _as_float(padded.rotate(angle, resample=Image.Resampling.BICUBIC, center=focus))
    # A panning shot: the surroundings streak, the face (followed by the camera) stays almost sharp.
    streaks = _motion_blur(rotated, blur_px)
    face_r = 0.2 * min(src.size)
    ramp = np.clip((_distance_from(rotated.shape, focus) - face_r) / face_r, 0.0, 1.0)
    panned = rotated + (streaks - rotated) * (0.1 + 0.9 * ramp)[..., None]
    left, top, right, bottom = _frame_box(src.size, size, fraction, (cx, cy))
    box = (left + pad, top + pad, right + pad, bottom + pad)
    image = _from_float(panned).resize(size, Image.Resampling.LANCZOS, box=box)
    image = ImageEnhance.Color(ImageEnhance.Contrast(image).enhance(1.15)).enhance(1.2)
    return image, (
        f"{_flip_note(mirror, 'flipped')}rotated {angle:+.1f} degrees, "
        f"{blur_px} px panning blur around a near-sharp face, punchier colour"
    )


def _reframe(
    src: Image.Image, size: tuple[int, int], rng: np.random.Generator, mirror: bool
) -> tuple[Image.Image, str]:
    fraction = float(rng.uniform(0.8, 0.95))
    box = _frame_box(src.size, size, fraction, _FACE_FOCUS)
    image = src.resize(size, Image.Resampling.LANCZOS, box=box)
    return image, f"crop {fraction:.0%} of the short side, no scenario keyword found"


# --- geometry and tone helpers -----------------------------------------------------------------


def _flip_note(mirror: bool, verb: str) -> str:
    return f"{verb}, " if mirror else "orientation kept, "


def _jittered_focus(rng: np.random.Generator, spread: float) -> tuple[float, float]:
    cx = _FACE_FOCUS[0] + float(rng.uniform(-spread, spread))
    cy = _FACE_FOCUS[1] + float(rng.uniform(-spread, spread))
    return cx, cy


def _frame_box(
    src_size: tuple[int, int], out_size: tuple[int, int], fraction: float, focus: tuple[float, float]
) -> tuple[float, float, float, float]:
    """A crop box with the output's aspect ratio inside the source, around `focus`.

    Its area is that of a square `fraction` of the source's short side, whatever the aspect ratio
    (shrunk when it would not fit), and it is shifted, never shrunk further, to stay inside the source.
    """
    src_w, src_h = src_size
    out_w, out_h = out_size
    side = fraction * min(src_w, src_h)
    stretch = math.sqrt(out_w / out_h)
    box_w, box_h = side * stretch, side / stretch
    shrink = min(1.0, src_w / box_w, src_h / box_h)
    box_w, box_h = box_w * shrink, box_h * shrink
    left = min(max(focus[0] * src_w - box_w / 2, 0.0), src_w - box_w)
    top = min(max(focus[1] * src_h - box_h / 2, 0.0), src_h - box_h)
    return left, top, left + box_w, top + box_h


def _as_float(image: Image.Image) -> FloatImage:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _from_float(pixels: FloatImage) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def _channel_gains(image: Image.Image, gains: tuple[float, float, float]) -> Image.Image:
    return _from_float(_as_float(image) * np.array(gains, dtype=np.float32))


def _radial(size: tuple[int, int]) -> FloatImage:
    """Distance from the centre, 0 there and about 1 in the corners."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = (xs - (width - 1) / 2) / (width / 2)
    dy = (ys - (height - 1) / 2) / (height / 2)
    result: FloatImage = np.sqrt((dx**2 + dy**2) / 2).astype(np.float32)
    return result


def _distance_from(shape: tuple[int, ...], point: tuple[float, float]) -> FloatImage:
    """Per-pixel distance in pixels from `point` (x, y), for an array of `shape` (height, width, ...)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    result: FloatImage = np.hypot(xs - point[0], ys - point[1]).astype(np.float32)
    return result


def _vignette(image: Image.Image, strength: float) -> Image.Image:
    falloff = 1.0 - strength * np.clip(_radial(image.size) - 0.35, 0.0, None) / 0.65
    return _from_float(_as_float(image) * falloff[..., None])


def _side_light(image: Image.Image, shadow: float, from_left: bool) -> Image.Image:
    width = image.width
    ramp = np.linspace(1.0 - shadow, 1.0, width, dtype=np.float32)
    if not from_left:
        ramp = ramp[::-1]
    return _from_float(_as_float(image) * ramp[None, :, None])


def _motion_blur(pixels: FloatImage, length: int) -> FloatImage:
    """Horizontal motion blur: the mean of `length` shifted copies (edges wrap; crop them away)."""
    total = np.zeros_like(pixels)
    for shift in range(length):
        total += np.roll(pixels, shift - length // 2, axis=1)
    result: FloatImage = (total / length).astype(np.float32)
    return result


def _feathered_mask(size: tuple[int, int], feather: int) -> Image.Image:
    mask = Image.new("L", size, 0)
    inner = Image.new("L", (size[0] - 2 * feather, size[1] - 2 * feather), 255)
    mask.paste(inner, (feather, feather))
    return mask.filter(ImageFilter.GaussianBlur(feather / 2))


def _backdrop(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A painted landscape: sky gradient, a hazy horizon and ground, with a little grain."""
    width, height = size
    sky_top = rng.uniform([40, 80, 140], [90, 130, 200]).astype(np.float32)
    sky_low = rng.uniform([170, 180, 190], [230, 215, 220]).astype(np.float32)
    ground = rng.uniform([60, 70, 40], [120, 110, 70]).astype(np.float32)
    horizon = float(rng.uniform(0.55, 0.7))
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    sky = sky_top + (sky_low - sky_top) * np.clip(t / horizon, 0.0, 1.0)[..., None]
    below = np.clip((t - horizon) / (1.0 - horizon), 0.0, 1.0)[..., None]
    column = np.where(t[..., None] < horizon, sky, sky_low + (ground - sky_low) * np.sqrt(below))
    pixels = np.broadcast_to(column, (height, width, 3)).astype(np.float32)
    pixels = pixels + rng.normal(0.0, 3.0, size=pixels.shape).astype(np.float32)
    return _from_float(pixels).filter(ImageFilter.GaussianBlur(1))
