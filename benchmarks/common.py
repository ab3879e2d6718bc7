"""Shared pieces of the benchmarks: the video set, the stand-in server process, CPU clocks, machine
and version facts, markdown tables and the JSON result files.

Absolute times on the shared 2-core machines these run on are noise; every benchmark therefore
reports ratios measured within one run, and CPU seconds (which another process's load barely
changes) beside wall-clock rates.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, overload

__all__ = [
    "Column",
    "StandinProcess",
    "add_common_args",
    "default_work_dir",
    "machine_info",
    "markdown_table",
    "process_cpu_seconds",
    "replicate_manifest",
    "result_envelope",
    "versions",
    "video_manifest",
    "write_result",
]

#: Packages whose versions every result file records (those importable at the time of writing).
_VERSIONED = (
    "numpy",
    "pydantic",
    "decord",
    "av",
    "PIL",
    "openai",
    "httpx",
    "diskcache",
    "torch",
    "diffusers",
)


class BenchmarkError(RuntimeError):
    """A benchmark cannot run as configured (bad grid, missing video set, server that won't start)."""


# --------------------------------------------------------------------------- facts about the run


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU count and model, platform, and the load average when the benchmark started (a high load
    means other processes shared the cores: read the CPU-second figures, not the wall-clock ones)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python_implementation": platform.python_implementation(),
        "load_average": load,
    }


def versions() -> dict[str, str]:
    """python and densepref, plus every package in ``_VERSIONED`` that is already imported (a
    benchmark never imports torch just to print its version)."""
    import labeler

    out = {"python": platform.python_version(), "densepref": labeler.__version__}
    for name in _VERSIONED:
        module = sys.modules.get(name)
        if module is not None:
            out[name if name != "PIL" else "pillow"] = str(getattr(module, "__version__", "unknown"))
    return out


def result_envelope(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The fields every result file carries besides its figures."""
    return {
        "benchmark": name,
        "settings": settings,
        "machine": machine_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(out_dir: str | Path, name: str, result: dict[str, Any]) -> Path:
    """Write ``OUT_DIR/<name>.json`` (versions added at write time, after the benchmark imported
    what it uses)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {**result, "versions": versions()}
    from labeler.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=False, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --------------------------------------------------------------------------- tables


Column = tuple[str, str, str]  # (key in the row, header, format spec or "" for str())


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "–"
    if spec and isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A GitHub markdown table of ``rows`` (dicts) with the given columns."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" if spec else "---" for _, _, spec in columns) + "|"
    body = ["| " + " | ".join(_cell(row.get(k), spec) for k, _, spec in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


# --------------------------------------------------------------------------- the video set


def default_work_dir() -> Path:
    """Where the demo set and scratch files go (reused between runs: building the demo takes ~15 s)."""
    env = os.environ.get("DENSEPREF_BENCH_WORK")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("densepref")) / "benchmarks"


def video_manifest(manifest: str | Path | None, work_dir: Path) -> Path:
    """The benchmark's video set: ``manifest`` if given, else the demo set (labeler.demo, real clips)
    built once under ``work_dir``."""
    if manifest is not None:
        path = Path(manifest)
        if not path.is_file():
            raise BenchmarkError(f"manifest {path} does not exist")
        return path
    from labeler.demo.build import build_demo

    return build_demo(work_dir / "demo").manifest


def replicate_manifest(source: Path, dest: Path, *, pairs: int, tag: str = "") -> int:
    """Write a manifest of ``pairs`` entries cycling through ``source``'s pairs, each copy with its own
    pair_id and prompt (the prompt enters the cache key, so no two copies share a judgment) and
    absolute video paths. Returns the number of segment-bearing entries written."""
    from labeler.schemas import read_manifest

    entries = read_manifest(source)
    if not entries:
        raise BenchmarkError(f"manifest {source} holds no pairs")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", encoding="utf-8") as fh:
        for n in range(pairs):
            entry = entries[n % len(entries)]
            copy = n // len(entries)
            row = entry.model_copy(
                update={
                    "pair_id": f"{entry.pair_id}~{tag}{copy}",
                    "prompt": f"{entry.prompt} (take {tag}{copy})",
                }
            )
            fh.write(row.model_dump_json(exclude_none=True) + "\n")
    return pairs


# --------------------------------------------------------------------------- CPU clocks


@overload
def process_cpu_seconds(pid: None = None) -> float: ...
@overload
def process_cpu_seconds(pid: int) -> float | None: ...
def process_cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of a process (all its threads): ours when ``pid`` is None, another's
    read from /proc (None where /proc is unavailable)."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class StandinProcess:
    """labeler.standin in its own process (it must not share the engine's GIL; it still shares the
    cores, and its CPU seconds are read from /proc so they can be reported apart)."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.proc: Any = None
        self.base_url = ""

    def __enter__(self) -> StandinProcess:
        from labeler.standin import start_standin_process

        try:
            self.proc, self.base_url = start_standin_process(**self.config)
        except RuntimeError as exc:
            raise BenchmarkError(f"the stand-in server did not start: {exc}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:  # it did not stop in time: kill the process we started
                self.proc.kill()
                self.proc.wait(timeout=10)

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def control(self, **changes: Any) -> dict[str, Any]:
        import httpx

        response = httpx.post(self.root + "/_control", json=changes, timeout=30)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.root + "/_stats", timeout=30).json()

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.proc.pid) if self.proc is not None else None


# --------------------------------------------------------------------------- command lines


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="folder for the JSON file"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (the smoke test's)")
    parser.add_argument(
        "--manifest", type=Path, default=None,
        help="pair manifest to use as the video set (default: the demo set, built once under --work)",
    )  # fmt: skip
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: the user cache)")
    return parser


class BenchmarkMain(Protocol):
    def __call__(self, argv: list[str] | None = None) -> int: ...


def report_errors(main: BenchmarkMain) -> BenchmarkMain:
    """Wrap a benchmark's ``main``: a BenchmarkError (bad settings, no video set...) becomes a one-line
    ``error:`` message and exit status 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


def load_module(name: str) -> Any:
    return importlib.import_module(f"benchmarks.{name}")
