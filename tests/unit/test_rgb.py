"""Every PIL mode reaches the models as upright 8-bit RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.scoring.adapters.rgb import to_rgb, to_rgb_array


def test_rgb_passes_through_unchanged() -> None:
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image))


def test_grayscale_becomes_three_equal_channels() -> None:
    pixels = to_rgb_array(Image.new("L", (4, 3), 77))
    assert pixels.shape == (3, 4, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags["C_CONTIGUOUS"]
    assert (pixels == 77).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_become_white_not_the_hidden_colour(mode: str) -> None:
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))  # transparent black
    image.putpixel((1, 0), (200, 0, 0, 255))  # opaque red
    pixels = to_rgb_array(image.convert(mode))
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 1].tolist() == ([200, 0, 0] if mode == "RGBA" else [60, 60, 60])


def test_palette_with_transparency_is_composited() -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    assert to_rgb_array(image).tolist() == [[[255, 255, 255], [0, 0, 255]]]


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    pixels = to_rgb_array(image)
    assert pixels[0, :, 0].tolist() == [0, 128, 255]


def test_float_in_unit_range_is_scaled_up() -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    image = Image.fromarray(values)
    assert image.mode == "F"
    pixels = to_rgb_array(image)
    assert pixels[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 2), (0, 0, 0)).save(buffer, format="JPEG", exif=exif.tobytes())
    stored = Image.open(buffer)

    assert stored.size == (4, 2)
    assert to_rgb(stored).size == (2, 4)
