"""Dense preference data for training: read labels, filter pairs, cache latents, batch.

1. ``select_pairs`` reads a dense preference JSONL (DESIGN §2.3) and keeps the pairs worth training
   on: more than ``min_nontie_fraction`` of their segments non-tie (the DenseDPO paper samples only
   clips with > 20 % non-tie segments), and for vanilla DPO a non-tie video label.
2. ``build_dataset`` encodes every video once with the VAE and every prompt once with the text
   encoder, caching the tensors on disk (``<cache>/latents``, ``<cache>/text``) under a key of the
   file's content hash, the encoder's identity and the clip geometry, so training never runs the
   VAE or the text encoder again and a second run starts from the cache.
3. ``PreferenceDataset`` / ``collate`` give batches of A latents, B latents, text embeddings,
   per-latent-frame labels and segment ids (``trainer.latents``) and the video label.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labeler.schemas import LABEL_VALUE, DensePreferenceRecord, read_records
from trainer.latents import latent_frame_labels, num_latent_frames
from trainer.media import MediaError, file_sha256, fit_frames, read_video

if TYPE_CHECKING:
    import torch

    from trainer.models import VideoModelAdapter

__all__ = [
    "DataError",
    "Geometry",
    "LatentCache",
    "PreferenceDataset",
    "build_dataset",
    "collate",
    "nontie_fraction",
    "resolve_video",
    "select_pairs",
]


class DataError(ValueError):
    """A preference record that cannot be trained on; the message names the pair."""


@dataclass(frozen=True)
class Geometry:
    """The clip every video is cut and scaled to: the first ``num_frames`` frames at ``height`` x ``width``."""

    num_frames: int
    height: int
    width: int


def nontie_fraction(record: DensePreferenceRecord) -> float:
    return sum(s.label != "tie" for s in record.segments) / len(record.segments)


def select_pairs(
    prefs_path: str | os.PathLike, *, min_nontie_fraction: float = 0.2, mode: str = "dense"
) -> tuple[list[DensePreferenceRecord], Counter[str]]:
    """The records to train on and a count of the others by reason (``few_nontie``, ``tie_video``)."""
    try:
        records = read_records(prefs_path)
    except (OSError, ValueError) as exc:  # missing file, or a bad line (the message names it)
        raise DataError(f"cannot read preferences: {exc}") from exc
    if not records:
        raise DataError(f"{prefs_path}: no preference records")
    kept, skipped = [], Counter()
    for record in records:
        if nontie_fraction(record) <= min_nontie_fraction:
            skipped["few_nontie"] += 1
        elif mode == "vanilla" and record.video_label == "tie":
            skipped["tie_video"] += 1
        else:
            kept.append(record)
    return kept, skipped


def resolve_video(path: str, base_dir: Path, pair_id: str) -> Path:
    """A record's video path, relative ones resolved against the label file's directory."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.is_file():
        raise DataError(f"pair {pair_id}: video {p} not found")
    return p


class LatentCache:
    """safetensors files under a directory, written atomically (a killed run leaves no torn file)."""

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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"data": tensor.contiguous()}, str(tmp))
        os.replace(tmp, path)
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
) -> tuple[list[int], list[int]]:
    if record.num_frames < geometry.num_frames:
        raise DataError(
            f"pair {record.pair_id}: labels cover {record.num_frames} frames, training needs {geometry.num_frames}"
        )
    r = adapter.temporal_compression
    segments = [(s.start_frame, s.end_frame, LABEL_VALUE[s.label]) for s in record.segments]
    mapped = latent_frame_labels(segments, num_latent_frames(geometry.num_frames, r), r, geometry.num_frames)
    return mapped.labels, mapped.segment_ids


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
        labels, seg_ids = _labels_for(record, adapter, geometry)
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
            PairItem(record.pair_id, paths[0], paths[1], text_paths[record.prompt], labels, seg_ids,
                     LABEL_VALUE[record.video_label])
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
        """Latent frames by label over the whole set: how much signal the dense loss gets."""
        flat = [lab for item in self.items for lab in item.labels]
        return {"A": flat.count(1), "B": flat.count(-1), "masked_or_tie": flat.count(0)}


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
