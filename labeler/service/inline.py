"""Inline frames of ``POST /label``: base64 images to RGB arrays, under the limits.

Decoding is split in two so memory stays bounded across requests: :func:`read_inline_headers`
reads every image's size from its header (no pixel decoded) and checks the per-image and
per-request limits; the caller then reserves those pixels in the service's pixel budget before
:func:`decode_inline_frames` decodes them. Both are blocking: run them in a worker thread.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
from PIL import Image

from labeler.engine import FrameSegment
from labeler.media.images import decode_image, image_size
from labeler.service.errors import ServiceError, clean_message
from labeler.service.models import LabelInlineRequest
from labeler.service.settings import ServiceSettings

__all__ = ["InlineImages", "decode_inline_frames", "read_inline_headers"]

#: Encoded images of a request by field name (``segments.0.frames_a.3``).
InlineImages = dict[str, bytes]


def _image_bytes(text: str, field: str) -> bytes:
    payload = text.partition(",")[2] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(
            400, "InvalidFrame", f"{field}: not valid base64 (nor a base64 data: URI)"
        ) from None


def _header_pixels(data: bytes, field: str, s: ServiceSettings) -> int:
    """Pixels of an image from its header alone, refused if over the per-image limits."""
    try:
        width, height = image_size(data)
    except (ValueError, Image.DecompressionBombError) as exc:
        # A header over Pillow's own bomb limit (far above ours) is too large, not unreadable.
        bomb = isinstance(exc, Image.DecompressionBombError) or isinstance(
            exc.__cause__, Image.DecompressionBombError
        )
        kind = "ImageTooLarge" if bomb else "InvalidImage"
        raise ServiceError(400, kind, f"{field}: {clean_message(str(exc))}") from None
    if max(width, height) > s.max_image_side or width * height > s.max_image_pixels:
        limit = f"{s.max_image_side} px a side and {s.max_image_pixels} pixels"
        raise ServiceError(400, "ImageTooLarge", f"{field}: {width}x{height} is over the limit of {limit}")
    return width * height


def _decode(data: bytes, field: str, max_pixels: int) -> np.ndarray:
    try:
        return decode_image(data, max_pixels=max_pixels)
    except Exception as exc:  # untrusted bytes: any failure to decode them is the client's bad image
        raise ServiceError(400, "InvalidImage", f"{field}: {clean_message(str(exc))}") from None


def read_inline_headers(request: LabelInlineRequest, s: ServiceSettings) -> tuple[InlineImages, int]:
    """The request's images (base64-decoded) and their pixels in all, read from the headers and
    checked against the limits (segments, frames, side, pixels, the request's total) *before* any
    pixel is decoded, so decompression bombs are refused without allocating them."""
    if len(request.segments) > s.max_segments:
        raise ServiceError(
            400, "TooManySegments", f"segments: {len(request.segments)} over the limit of {s.max_segments}"
        )
    for i, seg in enumerate(request.segments):
        if len(seg.frames_a) > s.max_frames_per_segment:
            n, limit = len(seg.frames_a), s.max_frames_per_segment
            raise ServiceError(
                400, "TooManyFrames", f"segments.{i}.frames_a: {n} frames over the limit of {limit}"
            )
    blobs: InlineImages = {}
    total = 0
    for i, seg in enumerate(request.segments):
        for side, frames in (("frames_a", seg.frames_a), ("frames_b", seg.frames_b)):
            for j, text in enumerate(frames):
                field = f"segments.{i}.{side}.{j}"
                blobs[field] = _image_bytes(text, field)
                total += _header_pixels(blobs[field], field, s)
                if total > s.max_request_pixels:
                    limit = s.max_request_pixels
                    raise ServiceError(
                        400, "TooManyPixels", f"{field}: the frames exceed {limit} pixels in all"
                    )
    return blobs, total


def decode_inline_frames(
    request: LabelInlineRequest, blobs: InlineImages, s: ServiceSettings
) -> list[FrameSegment]:
    """Decode the images :func:`read_inline_headers` checked into aligned frame segments."""
    segments = []
    for i, seg in enumerate(request.segments):
        arrays = {
            side: [
                _decode(blobs[f"segments.{i}.{side}.{j}"], f"segments.{i}.{side}.{j}", s.max_image_pixels)
                for j in range(len(seg.frames_a))
            ]
            for side in ("frames_a", "frames_b")
        }
        shapes = sorted({a.shape[:2] for frames in arrays.values() for a in frames})
        if len(shapes) > 1:
            message = f"segments.{i}: the frames of a segment (A and B) must share one size, got {shapes}"
            raise ServiceError(400, "FrameSizeMismatch", message)
        segments.append(
            FrameSegment(np.stack(arrays["frames_a"]), np.stack(arrays["frames_b"]), seg.start_s, seg.end_s)
        )
    return segments
