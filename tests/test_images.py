"""labeler.media.images: composites, JPEG data URIs, and safe decoding of untrusted image bytes."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

import labeler.media.images
from labeler.media.images import (
    GAP_VALUE,
    JpegUriCache,
    data_uri_bytes,
    decode_image,
    encode_jpeg,
    image_size,
    jpeg_data_uri,
    side_by_side,
)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but carries almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_side_by_side_places_first_left_second_right_with_white_gap():
    first, second = _rgb(10, 12, 1), _rgb(10, 7, 2)
    out = side_by_side(first, second, gap=5)
    assert out.shape == (10, 12 + 5 + 7, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:, :12], first)
    assert np.array_equal(out[:, 17:], second)
    assert (out[:, 12:17] == GAP_VALUE).all()


def test_side_by_side_rejects_unequal_heights_and_bad_arrays():
    with pytest.raises(ValueError, match="equal heights"):
        side_by_side(_rgb(10, 8), _rgb(11, 8))
    with pytest.raises(ValueError, match="uint8"):
        side_by_side(_rgb(10, 8).astype(np.float32), _rgb(10, 8))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        side_by_side(_rgb(10, 8)[..., 0], _rgb(10, 8))


def test_jpeg_round_trip_keeps_size_and_content():
    yy, xx = np.mgrid[0:48, 0:64]
    image = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    data = encode_jpeg(image, quality=95)
    assert data[:2] == b"\xff\xd8"  # JPEG magic
    back = decode_image(data)
    assert back.shape == image.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - image.astype(int)).mean() < 6


def test_lower_quality_gives_smaller_files():
    image = _rgb(64, 64)
    assert len(encode_jpeg(image, quality=30)) < len(encode_jpeg(image, quality=95))
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(image, quality=0)


def test_data_uri_wraps_base64_jpeg():
    image = _rgb(16, 24)
    uri = jpeg_data_uri(image, quality=80)
    assert uri.startswith("data:image/jpeg;base64,")
    payload = data_uri_bytes(uri)
    assert payload == base64.b64decode(uri.split(",", 1)[1])
    assert image_size(payload) == (24, 16)
    assert decode_image(payload).shape == (16, 24, 3)


def test_data_uri_bytes_rejects_non_data_uris():
    with pytest.raises(ValueError, match="not a data URI"):
        data_uri_bytes("https://example.com/a.jpg")
    with pytest.raises(ValueError, match="base64"):
        data_uri_bytes("data:image/jpeg,rawbytes")
    with pytest.raises(ValueError, match="invalid base64"):
        data_uri_bytes("data:image/jpeg;base64,@@@@")


def test_decode_image_converts_png_and_grayscale_to_rgb():
    image = _rgb(9, 5)
    assert np.array_equal(decode_image(_png(image)), image)
    gray = io.BytesIO()
    Image.fromarray(image[..., 0]).save(gray, format="PNG")
    out = decode_image(gray.getvalue())
    assert out.shape == (9, 5, 3) and np.array_equal(out[..., 1], image[..., 0])


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\ngarbage"])
def test_decode_image_rejects_non_images(data):
    with pytest.raises(ValueError):
        decode_image(data)


def test_decode_image_enforces_pixel_limit_before_decoding():
    data = _png(_rgb(100, 100))
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(ValueError, match="exceeds the limit of 9999 pixels"):
        decode_image(data, max_pixels=9_999)


def test_decode_image_refuses_decompression_bomb_header():
    bomb = _png_header_only(100_000, 100_000)  # 10 gigapixels claimed in < 100 bytes
    assert len(bomb) < 100
    with pytest.raises(ValueError, match=r"exceeds the limit|decompression bomb"):
        decode_image(bomb)
    with pytest.raises(ValueError, match=r"exceeds the limit|decompression bomb"):
        decode_image(bomb, max_pixels=1_000_000)
    with pytest.raises(ValueError, match="decompression bomb"):
        image_size(bomb)
    moderate = _png_header_only(9_000, 9_000)  # under Pillow's own bomb limit, over ours
    with pytest.raises(ValueError, match="exceeds the limit of 1000000 pixels"):
        decode_image(moderate, max_pixels=1_000_000)
    assert image_size(moderate) == (9_000, 9_000)  # the header alone is cheap to read


@pytest.fixture
def encodes(monkeypatch) -> list[tuple[int, int]]:
    """Every real JPEG encoding JpegUriCache asks for, as (id of the array, quality)."""
    calls: list[tuple[int, int]] = []
    real = labeler.media.images.jpeg_data_uri

    def counting(image: np.ndarray, quality: int = 90) -> str:
        calls.append((id(image), quality))
        return real(image, quality)

    monkeypatch.setattr(labeler.media.images, "jpeg_data_uri", counting)
    return calls


def test_jpeg_uri_cache_encodes_each_frame_once_per_quality(encodes):
    cache = JpegUriCache()
    frame = _rgb(16, 24, seed=1)
    uri = cache.data_uri(frame, 80)
    assert uri == jpeg_data_uri(frame, 80)
    assert cache.data_uri(frame, 80) == uri and len(encodes) == 1
    assert cache.data_uri(frame, 60) != uri and len(encodes) == 2  # the quality is part of the key
    # Keyed by memory, not content: an equal copy elsewhere and a view of the same memory with
    # another shape are other frames.
    assert cache.data_uri(frame.copy(), 80) == uri and len(encodes) == 3
    assert cache.data_uri(frame[:8], 80) == jpeg_data_uri(frame[:8], 80) and len(encodes) == 4


def test_jpeg_uri_cache_evicts_the_least_recently_used(encodes):
    cache = JpegUriCache(size=2)
    a, b, c = (_rgb(8, 8, seed=s) for s in range(3))
    cache.data_uri(a)
    cache.data_uri(b)
    cache.data_uri(a)  # a hit: a becomes the most recently used
    cache.data_uri(c)  # evicts b
    assert len(cache) == 2 and len(encodes) == 3
    cache.data_uri(a)
    assert len(encodes) == 3
    cache.data_uri(b)
    assert len(encodes) == 4 and encodes[-1][0] == id(b)
    with pytest.raises(ValueError, match="size must be >= 1"):
        JpegUriCache(size=0)


def test_jpeg_uri_cache_does_not_keep_failed_encodings(monkeypatch):
    cache = JpegUriCache()
    frame = _rgb(8, 8)
    failures = [RuntimeError("disk full")]
    real = labeler.media.images.jpeg_data_uri

    def flaky(image: np.ndarray, quality: int = 90) -> str:
        if failures:
            raise failures.pop()
        return real(image, quality)

    monkeypatch.setattr(labeler.media.images, "jpeg_data_uri", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        cache.data_uri(frame)
    assert len(cache) == 0
    assert cache.data_uri(frame) == real(frame)
    with pytest.raises(ValueError, match="JPEG quality"):
        cache.data_uri(frame, quality=0)


class _WatchedLock:
    """The cache's lock, reporting when a given number of critical sections have finished."""

    def __init__(self, after: int) -> None:
        self._lock = threading.Lock()
        self._left = after
        self.passed = threading.Event()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._left -= 1
        if self._left == 0:
            self.passed.set()
        self._lock.release()


def test_jpeg_uri_cache_second_thread_waits_for_the_first_encoding(monkeypatch):
    cache = JpegUriCache()
    frame = _rgb(16, 16)
    started, release = threading.Event(), threading.Event()
    calls = []
    real = labeler.media.images.jpeg_data_uri

    def slow(image: np.ndarray, quality: int = 90) -> str:
        calls.append(id(image))
        started.set()
        release.wait(10)  # held until the second thread has looked the frame up
        return real(image, quality)

    monkeypatch.setattr(labeler.media.images, "jpeg_data_uri", slow)
    # Both threads' lookups (one critical section each) must be done before the encoding ends,
    # so the second thread finds the frame in flight rather than finished.
    cache._lock = watched = _WatchedLock(after=2)  # type: ignore[assignment]
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.data_uri(frame))) for _ in range(2)]
    threads[0].start()
    assert started.wait(10)
    threads[1].start()
    assert watched.passed.wait(10)
    release.set()
    for t in threads:
        t.join(10)
    assert calls == [id(frame)]
    assert results == [real(frame)] * 2
