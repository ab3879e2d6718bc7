"""What made an output file: the settings sidecar ``OUT.settings.json`` (docs/contracts.md).

A rerun on the same ``--out`` skips the pairs already there, which is only right when they were
labelled the way this run would label them. So every job records the settings that shape a label
(judge, model, prompt, the judge's own fingerprint such as ``--tie-margin``, frames per segment,
segment length, frame size, swap, the swap-disagreement margin, and a cascade's cheap judge with its
fingerprint and escalation rule) beside OUT, and a rerun whose settings differ is refused naming what
differs, unless ``--relabel``, which moves the old files aside (``OUT.before-<UTC time>.jsonl`` and
its errors, settings and the cascade's cheap labels) and labels again.

The package version is recorded but not compared: an upgrade alone does not void the labels.
An OUT written before this sidecar existed is compared on what its first record's ``labeler``
block holds, and adopted when that agrees.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from labeler import __version__
from labeler.engine import Engine
from labeler.errors import SettingsChanged
from labeler.fileio import atomic_write_json, iter_jsonl

SETTINGS_FORMAT = 1

#: The fields of a record's ``labeler`` block that the sidecar also holds (an OUT without sidecar).
_LEGACY_FIELDS = ("judge", "model", "prompt_id", "frames_per_segment", "swap", "max_side", "answer_order")


def settings_path_for(out: str | Path) -> Path:
    """``OUT.jsonl`` -> ``OUT.settings.json``."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".settings.json")


def job_settings(engine: Engine, cascade: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every setting of this engine that changes a label, as plain JSON values; ``cascade`` is the
    cascade's own (``labeler.cascade.options.cascade_settings``), None without one."""
    judge, cfg = engine.judge, engine.config
    settings = {
        "judge": judge.name,
        "model": judge.model,
        "prompt_id": judge.prompt_id,
        "answer_order": judge.answer_order,
        "judge_settings": judge.fingerprint(),
        "frames_per_segment": cfg.frames_per_segment,
        "segment_seconds": cfg.segment_seconds,
        "max_side": cfg.max_side,
        "swap": cfg.swap,
        "decisive_margin": cfg.decisive_margin,
        "align_to_latent": cfg.align_to_latent,  # moves segment boundaries (absent before: None)
        # A sidecar written before cascades were recorded has no key: read as None, i.e. no cascade.
        "cascade": cascade,
    }
    # Through JSON and back, so a tuple and the list it is read back as compare equal.
    plain: dict[str, Any] = json.loads(json.dumps(settings, sort_keys=True, default=str))
    return plain


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(
    previous: dict[str, Any], current: dict[str, Any], *, only: set[str] | None = None
) -> list[str]:
    """``name: <previous> before, <current> now`` for each setting that differs."""
    old, new = _flatten(previous), _flatten(current)
    names = sorted((old.keys() | new.keys()) if only is None else only)
    return [
        f"{name}: {json.dumps(old.get(name))} before, {json.dumps(new.get(name))} now"
        for name in names
        if old.get(name) != new.get(name)
    ]


def _legacy_settings(out: Path) -> dict[str, Any] | None:
    """The settings the first record of an OUT without sidecar names (None: OUT holds no record)."""
    for _, text in iter_jsonl(out):
        try:
            labeler = json.loads(text).get("labeler")
        except (ValueError, AttributeError):
            return None  # not a record: prepare_output refuses the file with its line number
        return {k: labeler.get(k) for k in _LEGACY_FIELDS} if isinstance(labeler, dict) else None
    return None


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        settings = data["settings"]
        if not isinstance(settings, dict):
            raise TypeError("settings is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SettingsChanged(
            f"{path} cannot be read ({exc}); it records how the labels beside it were made: "
            "restore it, or rerun with --relabel to label again (the old files are kept aside)"
        ) from None
    return settings


def _write_sidecar(path: Path, settings: dict[str, Any]) -> None:
    atomic_write_json(
        path, {"format": SETTINGS_FORMAT, "densepref_version": __version__, "settings": settings}
    )


def _aside(path: Path, stamp: str) -> Path:
    name = path.name
    for suffix in (".cheap.errors.jsonl", ".cheap.jsonl", ".errors.jsonl", ".settings.json", ".jsonl"):
        if name.endswith(suffix):
            return path.with_name(f"{name[: -len(suffix)]}.before-{stamp}{suffix}")
    return path.with_name(f"{name}.before-{stamp}")


def settle(out: str | Path, settings: dict[str, Any], *, relabel: bool) -> list[Path]:
    """Make OUT's sidecar hold ``settings``; returns the files moved aside (by ``relabel``).

    Raises SettingsChanged when OUT holds labels made with other settings and ``relabel`` is off.
    Call it holding OUT's lock (``jobfiles.lock_output``), before any pair is labelled.
    """
    from labeler.cascade.runner import cheap_path_for
    from labeler.jobfiles import errors_path_for

    out = Path(out)
    sidecar = settings_path_for(out)
    cheap = cheap_path_for(out)  # a cascade's pass 1 resumes from it: it is labels of these settings too
    has_labels = any(p.is_file() and p.stat().st_size > 0 for p in (out, cheap))
    diffs: list[str] = []
    if has_labels:
        if sidecar.exists():
            try:
                diffs = differences(_read_sidecar(sidecar), settings)
            except SettingsChanged:
                if not relabel:
                    raise
                diffs = [f"{sidecar.name}: unreadable"]
        else:
            legacy = _legacy_settings(out) if out.is_file() else None
            if legacy is not None:
                diffs = differences(legacy, settings, only=set(_LEGACY_FIELDS))
    if diffs and not relabel:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise SettingsChanged(
            f"{out} holds labels made with other settings ({shown}); rerun with the settings it was "
            "made with to resume, add --relabel to label again (the old files are kept aside), "
            "or choose another --out"
        )
    moved: list[Path] = []
    if diffs:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for path in (out, errors_path_for(out), sidecar, cheap, errors_path_for(cheap)):
            if path.exists():
                target = _aside(path, stamp)
                path.rename(target)
                moved.append(target)
    _write_sidecar(sidecar, settings)
    return moved
