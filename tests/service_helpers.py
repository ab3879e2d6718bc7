"""Run the labeling service as a real process and drive it over HTTP: for the service tests and
for benchmarks.

``start_service(args)`` starts ``python -m labeler.app --host 127.0.0.1 --port 0 ...``, reads the
port uvicorn actually bound from its log (no free-port race with other test processes) and waits
until ``/healthz`` answers. ``run_load(...)`` sends a fixed list of requests with bounded
concurrency and reports throughput and latency percentiles.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass
class ServiceProcess:
    """A running ``python -m labeler.app``; its combined stdout/stderr goes to ``log_path``."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    token: str | None = None

    def client(self, *, token: str | None = None, timeout: float = 60.0) -> httpx.Client:
        token = token if token is not None else self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS from /proc, in KiB)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the process and wait for it; returns its exit code (kills it after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without inherited DENSEPREF_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENSEPREF_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def start_service(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    command: Sequence[str] | None = None,
) -> ServiceProcess:
    """Start the service on a free loopback port and wait until /healthz answers.

    ``args`` are the CLI options after ``--host/--port`` (judge, --media-root, --cache-dir, limits).
    ``token`` sets DENSEPREF_API_TOKEN for the process and is used by ``client()``. ``command``
    replaces ``python -m labeler.app --host 127.0.0.1 --port 0`` (e.g. to run uvicorn itself).
    """
    extra = dict(env or {})
    if token:
        extra["DENSEPREF_API_TOKEN"] = token
    fd, name = tempfile.mkstemp(prefix="densepref-service-", suffix=".log")
    log_path = Path(name)
    prefix = command or [sys.executable, "-m", "labeler.app", "--host", "127.0.0.1", "--port", "0"]
    cmd = [*prefix, *args]
    with os.fdopen(fd, "wb") as log_file:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=service_env(extra)
        )
    deadline = time.monotonic() + timeout
    base_url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}:\n{log_path.read_text()}")
        if base_url is None and (m := _LISTENING.search(log_path.read_text(errors="replace"))):
            base_url = f"http://127.0.0.1:{m.group(1)}"
        if base_url is not None:
            try:
                if httpx.get(base_url + "/healthz", timeout=2).status_code == 200:
                    return ServiceProcess(proc, base_url, log_path, token)
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the service did not become healthy within {timeout} s:\n{log_path.read_text()}")


@contextmanager
def running_service(args: Sequence[str], **kw: Any) -> Iterator[ServiceProcess]:
    service = start_service(args, **kw)
    try:
        yield service
    finally:
        service.stop()
        service.log_path.unlink(missing_ok=True)


def metric_value(text: str, name: str) -> float:
    """The value of an unlabeled series in Prometheus text (``/metrics``)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} missing from /metrics")


# --------------------------------------------------------------------------- request bodies


def b64_image(frame: np.ndarray, fmt: str = "PNG") -> str:
    """A base64 PNG/JPEG of an RGB uint8 frame, as the inline form takes it."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def inline_body(frames_a: np.ndarray, frames_b: np.ndarray, per_segment: int, prompt: str = "a test") -> dict:
    """An inline /label body cutting aligned frame arrays into segments of ``per_segment`` frames
    (one second each)."""
    segments = []
    for k, start in enumerate(range(0, len(frames_a), per_segment)):
        segments.append(
            {
                "frames_a": [b64_image(f) for f in frames_a[start : start + per_segment]],
                "frames_b": [b64_image(f) for f in frames_b[start : start + per_segment]],
                "start_s": float(k),
                "end_s": float(k + 1),
            }
        )
    return {"prompt": prompt, "segments": segments}


# --------------------------------------------------------------------------- load


def mixed_label_bodies(
    n: int, pairs: Sequence[tuple[str, str]], cached_share: float = 0.5, seed: int = 0, tag: str = "run"
) -> list[dict]:
    """``n`` by-path /label bodies over ``pairs``: a ``cached_share`` of them repeat one prompt per
    pair (answered from the judgment cache after the first), the rest carry a unique prompt each
    (the prompt is part of the cache key, so they are judged afresh; ``tag`` keeps them apart from
    other runs'). Shuffled deterministically."""
    n_cached = round(n * cached_share)
    bodies = []
    for i in range(n):
        a, b = pairs[i % len(pairs)]
        prompt = f"repeated prompt {i % len(pairs)}" if i < n_cached else f"{tag}: fresh prompt {i}"
        bodies.append({"prompt": prompt, "video_a": a, "video_b": b})
    order = np.random.default_rng(seed).permutation(n)
    return [bodies[k] for k in order]


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.requests - self.statuses.get(200, 0)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else float("inf")

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.2f} s: {self.requests_per_second:.1f} req/s, "
            f"p50 {self.percentile(50) * 1000:.1f} ms, p99 {self.percentile(99) * 1000:.1f} ms, "
            f"statuses {dict(self.statuses)}"
        )


async def _load(
    base_url: str,
    bodies: Sequence[dict],
    concurrency: int,
    path: str,
    headers: Mapping[str, str],
    timeout: float,
) -> LoadResult:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers=dict(headers), timeout=timeout, limits=limits
    ) as client:

        async def one(body: dict) -> None:
            async with gate:
                t0 = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                except httpx.HTTPError as exc:
                    statuses[-1] += 1
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return
                latencies.append(time.perf_counter() - t0)
                statuses[response.status_code] += 1
                if response.status_code != 200:
                    failures.append(response.text[:300])

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        elapsed = time.perf_counter() - start
    return LoadResult(len(bodies), elapsed, latencies, statuses, failures)


def run_load(
    base_url: str,
    bodies: Sequence[dict],
    *,
    concurrency: int = 16,
    path: str = "/label",
    headers: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> LoadResult:
    """POST every body to ``base_url + path`` with at most ``concurrency`` in flight; latency is
    per request, wall time over all of them."""
    return asyncio.run(_load(base_url, bodies, concurrency, path, headers or {}, timeout))
