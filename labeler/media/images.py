"""Image helpers shared by the judges and the HTTP service: composites, JPEG encoding (with a
thread-safe cache of data URIs), safe decoding.

Pillow is imported inside the functions so ``import labeler.media.images`` stays cheap.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

import numpy as np

__all__ = [
    "GAP_VALUE",
    "JpegUriCache",
    "data_uri_bytes",
    "decode_image",
    "encode_jpeg",
    "image_size",
    "jpeg_data_uri",
    "side_by_side",
]

#: Colour of the separator stripe between the two halves of a side-by-side composite. White is
#: unambiguous for a VLM, and the stand-in server uses the stripe to recognise the layout.
GAP_VALUE = 255


def _check_rgb(image: np.ndarray, name: str) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.ndim != 3
        or image.shape[-1] != 3
        or image.dtype != np.uint8
    ):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{name} must be an [H, W, 3] uint8 array, got {shape} {dtype}")


def side_by_side(first: np.ndarray, second: np.ndarray, gap: int = 8) -> np.ndarray:
    """``first | white gap | second`` as one [H, W1 + gap + W2, 3] image (both must share H)."""
    _check_rgb(first, "first")
    _check_rgb(second, "second")
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"side_by_side needs equal heights, got {first.shape[0]} and {second.shape[0]}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    stripe = np.full((first.shape[0], gap, 3), GAP_VALUE, dtype=np.uint8)
    return np.concatenate([first, stripe, second], axis=1)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG bytes of an RGB uint8 image (4:2:0, what every VLM endpoint accepts)."""
    from PIL import Image

    _check_rgb(image, "image")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg_data_uri(image: np.ndarray, quality: int = 90) -> str:
    """``data:image/jpeg;base64,...`` for an OpenAI-style ``image_url`` part."""
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(image, quality)).decode("ascii")


class JpegUriCache:
    """JPEG data URIs of recently encoded frames, so that a frame sent twice is encoded once (the
    engine sends the two orders of a segment, "ab" and "ba", at once, built from the very same
    frame arrays).

    Keyed by the frame's memory (data address, shape, strides) and the quality, not its content:
    hashing the pixels would cost about as much as encoding them. An entry holds the frame itself,
    so that memory cannot be freed and reused by another frame while the entry lives; callers must
    not modify a frame in place after asking for it (SegmentRequest is frozen, the engine only
    slices). The ``size`` most recently used entries are kept. A second thread asking for a frame
    being encoded waits for that encoding instead of repeating it; a failed encoding is raised to
    every waiter and not cached.
    """

    def __init__(self, size: int = 128) -> None:
        if size < 1:
            raise ValueError(f"JpegUriCache size must be >= 1, got {size}")
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[Any, ...], tuple[np.ndarray, Future[str]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def data_uri(self, image: np.ndarray, quality: int = 90) -> str:
        """``jpeg_data_uri(image, quality)``, encoded only if this frame is not cached yet."""
        key = (image.__array_interface__["data"][0], image.shape, image.strides, quality)
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if entry is None:
                entry = self._entries[key] = (image, Future())
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
        future = entry[1]
        if owner:
            try:
                future.set_result(jpeg_data_uri(image, quality))
            except BaseException as exc:
                future.set_exception(exc)
                with self._lock:
                    self._entries.pop(key, None)
        return future.result()


def data_uri_bytes(uri: str) -> bytes:
    """The decoded payload of a base64 ``data:`` URI; ValueError for anything else."""
    if not uri.startswith("data:"):
        raise ValueError(f"not a data URI: {uri[:40]!r}")
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValueError(f"data URI is not base64-encoded: {header[:60]!r}")
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise ValueError(f"data URI holds invalid base64: {exc}") from exc


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the image header only, without decoding the pixels. ValueError
    for non-images and for headers Pillow already refuses as decompression bombs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image refused as a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a readable image ({len(data)} bytes): {exc}") from exc


def decode_image(data: bytes, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG/WebP... bytes to an RGB uint8 [H, W, 3] array.

    The size is checked from the header *before* the pixels are decoded, so a small file that
    claims a huge canvas (a decompression bomb) is refused without allocating it.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ValueError("image data is empty")
    # Without an explicit limit, Pillow's own bomb threshold applies; checking it here (instead of
    # relying on Pillow's DecompressionBombWarning) keeps this thread-safe: no warnings filters.
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            width, height = img.size
            if limit is not None and width * height > limit:
                raise ValueError(f"image of {width}x{height} pixels exceeds the limit of {limit} pixels")
            rgb = img.convert("RGB")
            rgb.load()
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image refused as a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({len(data)} bytes): {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8)
