"""Validation of uploaded reference photos, before anything is stored.

The order of checks is the defence: size in bytes first (nothing is decoded), then the format and
the dimensions read from the file's own header by the small parsers below (nothing is decoded),
and only then a full Pillow decode (`load()`), which catches truncated and corrupt files. Pillow's
decompression-bomb guard is a second line behind `ImageLimits.max_pixels`, never the first.

The original bytes are kept untouched: storage is content-addressed by their sha256.
`validate_reference` is CPU-bound (a full decode); call it from a worker thread in async code.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from PIL import Image, ImageFile

from contracts.values import ImageContentType

RejectReason = Literal[
    "empty",
    "too_large",
    "not_an_image",
    "unsupported_type",
    "truncated",
    "corrupt",
    "too_many_pixels",
    "side_too_long",
    "too_small",
]

ACCEPTED = "JPEG, PNG or WebP"
_MAX_SHOWN_NAME = 120


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 12_000
    min_side: int = 64

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_side, self.min_side) < 1:
            raise ValueError(f"image limits must be positive: {self}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} is above max_side {self.max_side}")
        pillow_max = Image.MAX_IMAGE_PIXELS
        if pillow_max is not None and self.max_pixels > pillow_max:
            # Above Pillow's own limit, Pillow would warn (or refuse) before this module could answer.
            raise ValueError(f"max_pixels {self.max_pixels} exceeds PIL.Image.MAX_IMAGE_PIXELS {pillow_max}")


@dataclass(frozen=True)
class ValidatedImage:
    data: bytes
    sha256: str
    content_type: ImageContentType
    width: int
    height: int


class ImageRejected(ValueError):
    """A reference photo the gateway will not store; `str(exc)` tells the user what to do."""

    def __init__(self, filename: str, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.filename = filename
        self.reason: RejectReason = reason
        self.message = message


@dataclass(frozen=True)
class _Header:
    """What a file's header says, before any pixel is decoded."""

    pillow_format: Literal["PNG", "JPEG", "WEBP"]
    content_type: ImageContentType
    label: str
    width: int
    height: int


class _HeaderProblem(Exception):
    def __init__(self, reason: RejectReason, label: str, detail: str) -> None:
        super().__init__(detail)
        self.reason: RejectReason = reason
        self.label = label
        self.detail = detail


@runtime_checkable
class AsyncReadable(Protocol):
    """A file-like upload with an async `read`, e.g. Starlette's `UploadFile`."""

    async def read(self, size: int = -1, /) -> bytes: ...


def shown_name(filename: str) -> str:
    """The file name as messages quote it: control characters escaped, long names shortened."""
    name = filename or "upload"
    if len(name) > _MAX_SHOWN_NAME:
        name = name[: _MAX_SHOWN_NAME - 1] + "…"
    return repr(name)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB".replace(".0 MiB", " MiB")


def _too_large(filename: str, limit: int, size: int | None) -> ImageRejected:
    how_big = f"is {_mib(size)} ({size} bytes)" if size is not None else "is larger than"
    over = f", over the {_mib(limit)} limit" if size is not None else f" the {_mib(limit)} limit"
    return ImageRejected(
        filename,
        "too_large",
        f"reference {shown_name(filename)} {how_big}{over}: "
        "upload a smaller file (export the photo as JPEG, or resize it)",
    )


async def read_limited(
    source: AsyncIterator[bytes] | AsyncReadable,
    limit: int,
    *,
    filename: str = "",
    chunk_size: int = 1024 * 1024,
) -> bytes:
    """Read a streamed upload, refusing it (`too_large`) as soon as it passes `limit` bytes.

    At most `limit` bytes plus one chunk are held in memory; the rest of the stream is never read.
    """
    if limit < 0 or chunk_size < 1:
        raise ValueError("limit must be >= 0 and chunk_size >= 1")
    received = bytearray()
    if isinstance(source, AsyncReadable):
        while True:
            chunk = await source.read(min(chunk_size, limit + 1 - len(received)))
            if not chunk:
                return bytes(received)
            if len(received) + len(chunk) > limit:
                raise _too_large(filename, limit, None)
            received += chunk
    async for chunk in source:
        if len(received) + len(chunk) > limit:
            if isinstance(source, AsyncGenerator):
                await source.aclose()
            raise _too_large(filename, limit, None)
        received += chunk
    return bytes(received)


def validate_reference(filename: str, data: bytes, limits: ImageLimits) -> ValidatedImage:
    """Accept a JPEG, PNG or WebP reference photo within `limits`, or raise `ImageRejected`."""
    name = shown_name(filename)
    if not data:
        raise ImageRejected(
            filename, "empty", f"reference {name} is empty (0 bytes): choose the photo again and re-upload it"
        )
    if len(data) > limits.max_bytes:
        raise _too_large(filename, limits.max_bytes, len(data))
    try:
        header = _read_header(data)
    except _HeaderProblem as problem:
        raise _rejection(filename, problem) from None
    _check_dimensions(filename, header, limits)
    _decode_fully(filename, data, header)
    return ValidatedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=header.content_type,
        width=header.width,
        height=header.height,
    )


def _rejection(filename: str, problem: _HeaderProblem) -> ImageRejected:
    name = shown_name(filename)
    if problem.reason == "not_an_image":
        message = (
            f"reference {name} is not a readable image (the file's bytes are not {ACCEPTED}): upload a {ACCEPTED} photo"
        )
    elif problem.reason == "unsupported_type":
        message = (
            f"reference {name} is {problem.detail}, which Likeness does not accept: "
            f"convert it to {ACCEPTED} and upload it again"
        )
    elif problem.reason == "truncated":
        message = (
            f"reference {name} is an incomplete {problem.label} file ({problem.detail}; "
            "often an interrupted download or copy): upload the complete file again"
        )
    else:
        message = (
            f"reference {name} looks like a {problem.label} but cannot be decoded ({problem.detail}): "
            f"re-export the photo as {ACCEPTED} and upload it again"
        )
    return ImageRejected(filename, problem.reason, message)


def _check_dimensions(filename: str, header: _Header, limits: ImageLimits) -> None:
    name = shown_name(filename)
    width, height = header.width, header.height
    size = f"{width}x{height} pixels"
    pixels = width * height
    if pixels > limits.max_pixels:
        scale = math.sqrt(limits.max_pixels / pixels)
        fits = f"{max(1, math.floor(width * scale))}x{max(1, math.floor(height * scale))}"
        raise ImageRejected(
            filename,
            "too_many_pixels",
            f"reference {name} is {size} ({pixels / 1e6:.1f} megapixels), over the "
            f"{limits.max_pixels / 1e6:g} megapixel limit: resize it to at most {fits} pixels and upload it again",
        )
    if max(width, height) > limits.max_side:
        raise ImageRejected(
            filename,
            "side_too_long",
            f"reference {name} is {size}, longer than {limits.max_side} px on one side: "
            f"resize or crop it so neither side exceeds {limits.max_side} px and upload it again",
        )
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            filename,
            "too_small",
            f"reference {name} is {size}, smaller than {limits.min_side} px on its short side: "
            f"upload a larger photo (at least {limits.min_side}x{limits.min_side} px, the face clearly visible)",
        )


def _decode_fully(filename: str, data: bytes, header: _Header) -> None:
    """Decode every pixel once, so truncated or corrupt data is refused now, not when scoring."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated uploads would be "
            "accepted; leave it False"
        )
    label = header.label
    try:
        with Image.open(io.BytesIO(data), formats=[header.pillow_format]) as image:
            if image.size != (header.width, header.height):
                raise _HeaderProblem(
                    "corrupt", label, f"header says {header.width}x{header.height}, decoder {image.size}"
                )
            if header.pillow_format != "JPEG" and getattr(image, "n_frames", 1) > 1:
                raise _HeaderProblem("unsupported_type", label, f"an animated {label}")
            image.load()
    except _HeaderProblem as problem:
        raise _rejection(filename, problem) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Only reachable if PIL.Image.MAX_IMAGE_PIXELS was lowered below ImageLimits.max_pixels.
        raise ImageRejected(
            filename,
            "too_many_pixels",
            f"reference {shown_name(filename)} has more pixels than the image decoder allows ({error}): "
            "resize it and upload it again",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Warning) as error:
        # Warning: Pillow warns on malformed APNG/MPO data; where warnings are errors they land here.
        reason: RejectReason = "truncated" if "truncated" in str(error) else "corrupt"
        detail = "the image data stops early" if reason == "truncated" else str(error) or type(error).__name__
        raise _rejection(filename, _HeaderProblem(reason, label, detail)) from None


# --- header parsers: dimensions without decoding ---------------------------------------------------

_UNSUPPORTED_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"8BPS", "a Photoshop (PSD) file"),
    (0, b"\x00\x00\x01\x00", "an icon (ICO) file"),
    (0, b"\xff\x0a", "a JPEG XL image"),
    (0, b"\x00\x00\x00\x0cJXL ", "a JPEG XL image"),
    (0, b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (0, b"%PDF", "a PDF document"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _read_header(data: bytes) -> _Header:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_header(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_header(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_header(data)
    raise _HeaderProblem(*_identify_other(data))


def _identify_other(data: bytes) -> tuple[RejectReason, str, str]:
    for offset, magic, what in _UNSUPPORTED_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return "unsupported_type", what, what
    if data[:2] == b"BM" and len(data) >= 18 and struct.unpack_from("<I", data, 14)[0] in _BMP_DIB_SIZES:
        return "unsupported_type", "BMP", "a BMP image"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIF_BRANDS:
            return "unsupported_type", "HEIC", "a HEIC/HEIF image (the iPhone default)"
        if brand in _AVIF_BRANDS:
            return "unsupported_type", "AVIF", "an AVIF image"
    return "not_an_image", "file", "unrecognised"


def _png_header(data: bytes) -> _Header:
    if len(data) < 33:
        raise _HeaderProblem("truncated", "PNG", "the file ends inside its header")
    if data[12:16] != b"IHDR":
        raise _HeaderProblem("corrupt", "PNG", "the first chunk is not IHDR")
    width, height = struct.unpack_from(">II", data, 16)
    return _sized("PNG", "image/png", "PNG", width, height)


def _jpeg_header(data: bytes) -> _Header:
    """Walk the JPEG markers up to the first scan; the last frame header seen wins, as in Pillow."""
    size: tuple[int, int] | None = None
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            pos += 1  # junk between segments: tolerated by decoders
            continue
        while pos < end and data[pos] == 0xFF:
            pos += 1  # fill bytes
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8 or marker == 0x00:
            continue  # standalone markers carry no length
        if marker == 0xD9:
            raise _HeaderProblem("corrupt", "JPEG", "the file ends before any image data")
        if pos + 2 > end:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise _HeaderProblem("corrupt", "JPEG", f"a segment has an invalid length {length}")
        if marker == 0xDA:
            if size is None:
                raise _HeaderProblem("corrupt", "JPEG", "image data starts before the frame header")
            return _sized("JPEG", "image/jpeg", "JPEG", size[0], size[1])
        if pos + length > end:
            break
        if marker in _JPEG_SOF:
            if length < 8:
                raise _HeaderProblem("corrupt", "JPEG", "the frame header is too short")
            height, width = struct.unpack_from(">HH", data, pos + 3)
            size = (width, height)
        pos += length
    raise _HeaderProblem("truncated", "JPEG", "the file ends before the image data starts")


def _webp_header(data: bytes) -> _Header:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if len(data) < 30 or len(data) < riff_size + 8:
        raise _HeaderProblem("truncated", "WebP", f"{len(data)} of {riff_size + 8} bytes present")
    chunk, payload = data[12:16], 20
    if chunk == b"VP8 ":
        if data[payload + 3 : payload + 6] != b"\x9d\x01\x2a":
            raise _HeaderProblem("corrupt", "WebP", "bad VP8 start code")
        width, height = struct.unpack_from("<HH", data, payload + 6)
        return _sized("WEBP", "image/webp", "WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if data[payload] != 0x2F:
            raise _HeaderProblem("corrupt", "WebP", "bad VP8L signature")
        (bits,) = struct.unpack_from("<I", data, payload + 1)
        return _sized("WEBP", "image/webp", "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        if data[payload] & 0x02:
            raise _HeaderProblem("unsupported_type", "WebP", "an animated WebP")
        width = int.from_bytes(data[payload + 4 : payload + 7], "little") + 1
        height = int.from_bytes(data[payload + 7 : payload + 10], "little") + 1
        return _sized("WEBP", "image/webp", "WebP", width, height)
    raise _HeaderProblem("corrupt", "WebP", f"unknown first chunk {chunk!r}")


def _sized(
    pillow_format: Literal["PNG", "JPEG", "WEBP"],
    content_type: ImageContentType,
    label: str,
    width: int,
    height: int,
) -> _Header:
    if width < 1 or height < 1:
        raise _HeaderProblem("corrupt", label, f"the header gives a size of {width}x{height}")
    return _Header(pillow_format, content_type, label, width, height)
