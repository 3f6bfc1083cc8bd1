"""Reference photo validation: every way an upload can be refused, and what the user is told."""

from __future__ import annotations

import hashlib
import io
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from PIL import Image, ImageFile

from services.gateway.images import ImageLimits, ImageRejected, read_limited, validate_reference

LIMITS = ImageLimits()


def photo(fmt: str, size: tuple[int, int] = (160, 120), **save: Any) -> bytes:
    image = Image.effect_noise(size, 48).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def black_bilevel_png(width: int, height: int, *, complete: bool = True) -> bytes:
    """A 1-bit PNG built without Pillow; `complete=False` keeps the header but only one row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = bytes(1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    rows = height if complete else 1
    idat = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def rejected(filename: str, data: bytes, limits: ImageLimits = LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        validate_reference(filename, data, limits)
    error = caught.value
    message = str(error)
    assert error.filename == filename
    assert repr(filename) in message, "the message names the file"
    assert ": " in message, "the message says what is wrong, then what to do"
    action = message.rsplit(": ", 1)[1]
    assert any(verb in action for verb in ("upload", "convert", "resize", "choose", "re-export")), message
    return error


# --- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "save", "content_type"),
    [
        ("JPEG", {"quality": 90}, "image/jpeg"),
        ("JPEG", {"progressive": True}, "image/jpeg"),
        ("PNG", {}, "image/png"),
        ("WEBP", {"quality": 80}, "image/webp"),  # lossy: VP8
        ("WEBP", {"lossless": True}, "image/webp"),  # VP8L
        ("WEBP", {"exif": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00"}, "image/webp"),  # VP8X
    ],
)
def test_valid_photo_passes_with_original_bytes_hash_size_and_type(
    fmt: str, save: dict[str, Any], content_type: str
) -> None:
    data = photo(fmt, (321, 123), **save)

    image = validate_reference("me.bin", data, LIMITS)

    assert image.data is data, "the original bytes are kept, not re-encoded"
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert (image.width, image.height) == (321, 123)
    assert image.content_type == content_type


def test_type_comes_from_the_bytes_not_the_file_name() -> None:
    image = validate_reference("holiday.jpg", photo("PNG"), LIMITS)

    assert image.content_type == "image/png"


def test_validation_leaves_pillow_truncated_loading_off() -> None:
    validate_reference("a.jpg", photo("JPEG"), LIMITS)

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- refused -------------------------------------------------------------------------------------


def test_text_file_named_jpg_is_not_an_image() -> None:
    error = rejected("a.jpg", b"name,age\nalice,30\n")

    assert error.reason == "not_an_image"
    assert str(error) == (
        "reference 'a.jpg' is not a readable image (the file's bytes are not JPEG, PNG or WebP): "
        "upload a JPEG, PNG or WebP photo"
    )


def test_empty_file() -> None:
    error = rejected("empty.png", b"")

    assert error.reason == "empty"


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_jpeg_is_refused_after_a_full_decode(keep: float) -> None:
    data = photo("JPEG", (400, 300))
    cut = data[: int(len(data) * keep)]
    header = Image.open(io.BytesIO(cut))
    assert header.size == (400, 300), "the header alone looks fine"

    error = rejected("cut.jpg", cut)

    assert error.reason == "truncated"
    assert "incomplete JPEG" in str(error)


def test_jpeg_cut_inside_its_header_is_truncated() -> None:
    error = rejected("cut.jpg", photo("JPEG")[:40])

    assert error.reason == "truncated"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_truncated_png_and_webp(fmt: str) -> None:
    data = photo(fmt, (300, 200))

    error = rejected(f"cut.{fmt.lower()}", data[: len(data) * 2 // 3])

    assert error.reason == "truncated"


def test_refuses_to_run_when_someone_enabled_truncated_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        validate_reference("a.jpg", photo("JPEG"), LIMITS)


def test_png_with_garbage_pixel_data_is_corrupt() -> None:
    header = struct.pack(">IIBBBBB", 100, 100, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", bytes(range(256)) * 4)  # not a zlib stream
        + png_chunk(b"IEND", b"")
    )

    error = rejected("broken.png", data)

    assert error.reason == "corrupt"
    assert "looks like a PNG but cannot be decoded" in str(error)


def test_50_mb_upload_is_too_large_before_any_decoding() -> None:
    data = photo("JPEG") + bytes(50 * 1024 * 1024)

    error = rejected("huge.jpg", data)

    assert error.reason == "too_large"
    assert "20 MiB limit" in str(error)


def test_20000_by_20000_png_is_refused_from_its_header() -> None:
    data = black_bilevel_png(20_000, 20_000)  # a genuine 400-megapixel PNG of ~50 kB
    started = time.perf_counter()

    error = rejected("bomb.png", data)

    assert error.reason == "too_many_pixels"
    assert "20000x20000" in str(error)
    assert time.perf_counter() - started < 0.5, "nothing was decoded"


def test_pixel_limit_does_not_lean_on_pillows_bomb_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    # Only one row of pixel data: any decode would say "truncated", the header check says "too many".
    data = black_bilevel_png(20_000, 20_000, complete=False)

    assert rejected("bomb.png", data).reason == "too_many_pixels"


def test_size_between_pillows_warning_and_error_does_not_leak_a_warning() -> None:
    # 10000x10000 is above Pillow's warning threshold (~89 Mpx); warnings are errors in this suite.
    data = black_bilevel_png(10_000, 10_000)

    assert rejected("big.png", data).reason == "too_many_pixels"


def test_limits_above_pillows_own_limit_are_refused() -> None:
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        ImageLimits(max_pixels=200_000_000)


def test_one_very_long_side_is_refused() -> None:
    error = rejected("panorama.png", black_bilevel_png(13_000, 100))

    assert error.reason == "side_too_long"


@pytest.mark.parametrize(
    ("filename", "make"),
    [
        ("anim.gif", lambda: photo("GIF")),
        ("scan.bmp", lambda: photo("BMP")),
        ("scan.tiff", lambda: photo("TIFF")),
        ("IMG_0001.HEIC", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)),
    ],
)
def test_other_image_formats_are_unsupported(filename: str, make: Callable[[], bytes]) -> None:
    error = rejected(filename, make())

    assert error.reason == "unsupported_type"
    assert "convert it to JPEG, PNG or WebP" in str(error)


def test_animated_png_is_unsupported() -> None:
    frames = [Image.new("RGB", (100, 100), colour) for colour in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, "PNG", save_all=True, append_images=frames[1:])

    error = rejected("anim.png", out.getvalue())

    assert error.reason == "unsupported_type"
    assert "animated PNG" in str(error)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_image_smaller_than_min_side(fmt: str) -> None:
    error = rejected("tiny.img", photo(fmt, (200, 40)))

    assert error.reason == "too_small"
    assert "200x40" in str(error)
    assert "at least 64x64" in str(error)


def test_unprintable_file_names_are_quoted_safely() -> None:
    error = rejected("evil\n\x1b[31m.jpg", b"not an image")

    assert "\n" not in str(error)
    assert "\x1b" not in str(error)


# --- streaming uploads -----------------------------------------------------------------------------


class Upload:
    """A file-like upload with an async read, like Starlette's UploadFile; counts what was read."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)
        self.bytes_read = 0
        self.largest_read = 0

    async def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self.bytes_read += len(chunk)
        self.largest_read = max(self.largest_read, len(chunk))
        return chunk


async def test_read_limited_returns_small_uploads_whole() -> None:
    data = photo("PNG")

    assert await read_limited(Upload(data), LIMITS.max_bytes) == data


async def test_read_limited_stops_a_50_mb_file_upload_just_past_the_limit() -> None:
    limit = 20 * 1024 * 1024
    upload = Upload(bytes(50 * 1024 * 1024))

    with pytest.raises(ImageRejected) as caught:
        await read_limited(upload, limit, filename="huge.jpg")

    assert caught.value.reason == "too_large"
    assert "'huge.jpg'" in str(caught.value)
    assert upload.bytes_read <= limit + 1, "never holds more than the limit plus one byte"


async def test_read_limited_stops_consuming_a_chunk_stream() -> None:
    chunk = 1024 * 1024
    sent = 0
    finished = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent, finished
        try:
            for _ in range(50):
                sent += 1
                yield bytes(chunk)
        finally:
            finished = True

    with pytest.raises(ImageRejected) as caught:
        await read_limited(body(), 20 * chunk, filename="huge.jpg")

    assert caught.value.reason == "too_large"
    assert sent == 21, "reading stopped at the first chunk over the limit"
    assert finished, "the stream was closed"


async def test_read_limited_accepts_exactly_the_limit() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 10
        yield b"y" * 10

    assert await read_limited(body(), 20) == b"x" * 10 + b"y" * 10
    assert await read_limited(Upload(b"z" * 20), 20, chunk_size=7) == b"z" * 20
