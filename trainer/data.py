"""Dense preference data for training: read labels, cut them to the training window, filter, cache.

1. ``read_preferences`` reads a dense preference JSONL (the labeler's output; docs/contracts.md) with
   ``labeler.fileio.iter_jsonl``: lines are split on ``\\n`` only, so a prompt holding U+2028, U+2029
   or U+0085 is one record, not three broken ones.
2. ``select_pairs`` cuts every record to the **training window** (``window_record``): the first
   ``num_frames`` frames, and of their segments those that hold at least one whole latent frame
   (a segment with none gives the loss nothing). It keeps the pairs worth training on *inside that
   window*: more than ``min_nontie_fraction`` of the window's segments non-tie (the DenseDPO paper
   samples only clips with > 20 % non-tie segments), and for vanilla DPO a non-tie video label of
   the window. The others are counted by reason (``SKIP_REASONS``). Judging the whole video instead
   would keep pairs whose only signal lies after the window, and give a pair labelled
   (B, tie, tie, A, A) the video label A although the only preference a 49-frame window of 16 fps
   one-second segments holds is B.
3. ``build_dataset`` encodes every video once with the VAE and every prompt once with the text
   encoder, caching the tensors on disk (``<cache>/latents``, ``<cache>/text``) under a key of the
   file's content hash, the encoder's identity and the clip geometry, so training never runs the
   VAE or the text encoder again and a second run starts from the cache.
4. ``PreferenceDataset`` / ``collate`` give batches of A latents, B latents, text embeddings,
   per-latent-frame labels and segment ids (``trainer.latents``) and the window's video label.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from labeler.errors import DenseprefError
from labeler.fileio import atomic_path, iter_jsonl
from labeler.schemas import LABEL_VALUE, DensePreferenceRecord, video_level
from trainer.latents import LatentLabels, latent_frame_labels, latent_frame_ranges, num_latent_frames
from trainer.media import MediaError, file_sha256, fit_frames, read_video

if TYPE_CHECKING:
    import torch

    from trainer.models import VideoModelAdapter

__all__ = [
    "SKIP_REASONS",
    "DataError",
    "Geometry",
    "LatentCache",
    "PreferenceDataset",
    "build_dataset",
    "collate",
    "nontie_fraction",
    "read_preferences",
    "resolve_video",
    "select_pairs",
    "window_record",
]

#: Why ``select_pairs`` skips a pair. The ``*_in_window`` reasons are pairs that would pass over the
#: whole video but not over the frames training sees.
SKIP_REASONS: dict[str, str] = {
    "shorter_than_window": "the labels cover fewer frames than the training window",
    "few_nontie": "too few non-tie segments, in the whole video as in the window",
    "few_nontie_in_window": "enough non-tie segments in the whole video, too few inside the window",
    "tie_video": "vanilla: the video label is a tie, in the whole video as in the window",
    "tie_video_in_window": "vanilla: the video label is a tie inside the window only",
}


class DataError(DenseprefError, ValueError):
    """A preference record that cannot be trained on; the message names the pair."""


@dataclass(frozen=True)
class Geometry:
    """The clip every video is cut and scaled to: the first ``num_frames`` frames at ``height`` x ``width``."""

    num_frames: int
    height: int
    width: int


def nontie_fraction(record: DensePreferenceRecord) -> float:
    return sum(s.label != "tie" for s in record.segments) / len(record.segments)


def read_preferences(path: str | os.PathLike) -> list[DensePreferenceRecord]:
    """The records of a dense preference JSONL. A last line cut short by a killed writer is ignored;
    any other bad line is a ``DataError`` naming ``path:line``."""
    path = Path(path)
    try:
        lines = list(iter_jsonl(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read preferences {path}: {exc}") from exc
    records = []
    for i, (lineno, text) in enumerate(lines):
        try:
            records.append(DensePreferenceRecord.model_validate_json(text))
        except ValidationError as exc:
            if i == len(lines) - 1 and any(e["type"] == "json_invalid" for e in exc.errors()):
                break  # the torn last line of a killed writer
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '<record>'}: {e['msg']}" for e in exc.errors()
            )
            raise DataError(f"{path}:{lineno}: {problems}") from exc
    return records


def window_record(record: DensePreferenceRecord, num_frames: int, r: int) -> DensePreferenceRecord:
    """``record`` as training sees it through the first ``num_frames`` frames of a causal VAE with
    temporal compression ``r``: only the segments that hold at least one whole latent frame inside
    the window (``trainer.latents``; the others give the loss nothing), the last one cut at the
    window's end, re-indexed, with the video label and score of those segments by the labeler's own
    rule (``labeler.schemas.video_level``)."""
    if record.num_frames < num_frames:
        raise DataError(
            f"pair {record.pair_id}: labels cover {record.num_frames} frames, training needs {num_frames}"
        )
    ranges = latent_frame_ranges(num_latent_frames(num_frames, r), r, num_frames)
    seen = [
        s
        for s in record.segments
        if any(s.start_frame <= start and end <= min(s.end_frame, num_frames) for start, end in ranges)
    ]
    inside = [
        s.model_copy(update={"index": i, "end_frame": min(s.end_frame, num_frames)})
        for i, s in enumerate(seen)
    ]
    label, score = video_level(inside)
    return record.model_copy(
        update={"num_frames": num_frames, "segments": inside, "video_label": label, "video_score": score}
    )


def _skip_reason(
    whole: DensePreferenceRecord, window: DensePreferenceRecord, min_nontie_fraction: float, mode: str
) -> str | None:
    if nontie_fraction(window) <= min_nontie_fraction:
        return "few_nontie" if nontie_fraction(whole) <= min_nontie_fraction else "few_nontie_in_window"
    if mode == "vanilla" and window.video_label == "tie":
        return "tie_video" if whole.video_label == "tie" else "tie_video_in_window"
    return None


def select_pairs(
    prefs_path: str | os.PathLike,
    *,
    num_frames: int,
    temporal_compression: int,
    min_nontie_fraction: float = 0.2,
    mode: str = "dense",
) -> tuple[list[DensePreferenceRecord], Counter[str]]:
    """The records to train on, cut to the first ``num_frames`` frames (``window_record``), and a count
    of the others by reason (``SKIP_REASONS``)."""
    records = read_preferences(prefs_path)
    if not records:
        raise DataError(f"{prefs_path}: no preference records")
    kept: list[DensePreferenceRecord] = []
    skipped: Counter[str] = Counter()
    for record in records:
        if record.num_frames < num_frames:
            skipped["shorter_than_window"] += 1
            continue
        window = window_record(record, num_frames, temporal_compression)
        reason = _skip_reason(record, window, min_nontie_fraction, mode)
        if reason:
            skipped[reason] += 1
        else:
            kept.append(window)
    return kept, skipped


def resolve_video(path: str, base_dir: Path, pair_id: str) -> Path:
    """A record's video path, relative ones resolved against the label file's directory."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.is_file():
        raise DataError(
            f"pair {pair_id}: video {p} not found (relative paths resolve against the label file's "
            "folder; --video-root names another)"
        )
    return p


class LatentCache:
    """safetensors files under a directory, written atomically (``labeler.fileio.atomic_path``: a killed
    run leaves no torn file)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.safetensors"

    def get_path(self, kind: str, key: str) -> Path | None:
        path = self._path(kind, key)
        return path if path.is_file() else None

    def put(self, kind: str, key: str, tensor: torch.Tensor) -> Path:
        from safetensors.torch import save_file

        path = self._path(kind, key)
        with atomic_path(path) as tmp:
            save_file({"data": tensor.contiguous()}, str(tmp))
        return path

    @staticmethod
    def load(path: Path) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(path))["data"]


def _key(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PairItem:
    pair_id: str
    latents_a: Path
    latents_b: Path
    text: Path
    labels: list[int]  # per latent frame, +1 / -1 / 0
    segment_ids: list[int]  # per latent frame, -1 = in no single segment
    video_label: int  # +1 / -1 / 0
    straddling: int = 0  # latent frames masked for straddling segments with different labels


def _encode_video(
    adapter: VideoModelAdapter, cache: LatentCache, path: Path, geometry: Geometry, pair_id: str, vae_id: str
) -> Path:
    key = _key(file_sha256(path), vae_id, geometry)
    if cached := cache.get_path("latents", key):
        return cached
    try:
        video = read_video(path, max_frames=geometry.num_frames)
    except MediaError as exc:
        raise DataError(f"pair {pair_id}: {exc}") from exc
    if video.num_frames < geometry.num_frames:
        raise DataError(
            f"pair {pair_id}: {path} has {video.num_frames} frames, training needs {geometry.num_frames}"
        )
    frames = fit_frames(video.frames, geometry.height, geometry.width)
    return cache.put("latents", key, adapter.encode_video(frames))


def _labels_for(
    record: DensePreferenceRecord, adapter: VideoModelAdapter, geometry: Geometry
) -> LatentLabels:
    if record.num_frames < geometry.num_frames:
        raise DataError(
            f"pair {record.pair_id}: labels cover {record.num_frames} frames, training needs {geometry.num_frames}"
        )
    # Segments past the window overlap no latent frame; select_pairs has already cut them off.
    r = adapter.temporal_compression
    segments = [(s.start_frame, s.end_frame, LABEL_VALUE[s.label]) for s in record.segments]
    return latent_frame_labels(segments, num_latent_frames(geometry.num_frames, r), r, geometry.num_frames)


def build_dataset(
    records: Sequence[DensePreferenceRecord],
    adapter: VideoModelAdapter,
    geometry: Geometry,
    cache_dir: str | os.PathLike,
    base_dir: str | os.PathLike,
    *,
    progress: bool = False,
) -> PreferenceDataset:
    """Encode (or find in the cache) every video and prompt of ``records``; see the module docstring."""
    from tqdm.auto import tqdm

    adapter.check_geometry(geometry.num_frames, geometry.height, geometry.width)
    cache, base = LatentCache(cache_dir), Path(base_dir)
    vae_id, text_id = adapter.identity("vae"), adapter.identity("text")
    items, text_paths = [], {}
    for record in tqdm(records, desc="encoding pairs", disable=not progress):
        mapped = _labels_for(record, adapter, geometry)
        paths = [
            _encode_video(
                adapter, cache, resolve_video(side, base, record.pair_id), geometry, record.pair_id, vae_id
            )
            for side in (record.video_a, record.video_b)
        ]
        if record.prompt not in text_paths:
            key = _key(record.prompt, text_id)
            text_paths[record.prompt] = cache.get_path("text", key) or cache.put(
                "text", key, adapter.encode_prompts([record.prompt])[0]
            )
        items.append(
            PairItem(record.pair_id, paths[0], paths[1], text_paths[record.prompt], mapped.labels,
                     mapped.segment_ids, LABEL_VALUE[record.video_label], mapped.straddling)
        )  # fmt: skip
    return PreferenceDataset(items)


class PreferenceDataset:
    """Pairs whose tensors live in the on-disk cache; items load lazily (real latents are large)."""

    def __init__(self, items: Sequence[PairItem]):
        if not items:
            raise DataError("no pairs to train on")
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        item = self.items[index]
        return {
            "pair_id": item.pair_id,
            "latents_a": LatentCache.load(item.latents_a),
            "latents_b": LatentCache.load(item.latents_b),
            "text": LatentCache.load(item.text),
            "labels": torch.tensor(item.labels, dtype=torch.long),
            "segment_ids": torch.tensor(item.segment_ids, dtype=torch.long),
            "video_label": torch.tensor(item.video_label, dtype=torch.long),
        }

    def label_counts(self) -> dict[str, int]:
        """Latent frames by label over the whole set: how much signal the dense loss gets, and how
        many latent frames were masked because they straddle segments with different labels."""
        flat = [lab for item in self.items for lab in item.labels]
        straddling = sum(item.straddling for item in self.items)
        return {
            "A": flat.count(1),
            "B": flat.count(-1),
            "masked_or_tie": flat.count(0),
            "masked_straddling": straddling,
        }


def collate(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack examples into a batch; tensors of different shapes are an error naming the pairs."""
    import torch

    batch: dict[str, Any] = {"pair_id": [e["pair_id"] for e in examples]}
    for key in ("latents_a", "latents_b", "text", "labels", "segment_ids", "video_label"):
        shapes = {tuple(e[key].shape) for e in examples}
        if len(shapes) > 1:
            raise DataError(f"pairs {batch['pair_id']} have different {key} shapes {sorted(shapes)}")
        batch[key] = torch.stack([e[key] for e in examples])
    return batch
