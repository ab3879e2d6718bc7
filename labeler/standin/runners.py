"""Running the stand-in: in a background thread (StandinServer), in its own process, or as a CLI."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from labeler.standin.app import create_app
from labeler.standin.behaviour import Policy, StandinConfig
from labeler.standin.state import StandinState

# --------------------------------------------------------------------------- runners


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) only on connections
    # whose socket says it is TCP, and accepted sockets inherit the listener's proto. With Nagle on,
    # the response body (written after the headers) waited for the client's delayed ACK: +40 ms on
    # every request of a kept-alive connection (benchmarks/throughput.py, rows at L > 0).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class StandinServer:
    """The stand-in on 127.0.0.1 and a free port, served by uvicorn in a background thread.

    ``with StandinServer(policy="first") as server: OpenAIJudge("m", base_url=server.base_url)``
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        import uvicorn

        self.app = create_app(StandinConfig(**config))
        self._socket = _bind(host, port)
        self.host, self.port = self._socket.getsockname()[:2]
        uv_config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def state(self) -> StandinState:
        return self.app.state.standin

    def start(self) -> StandinServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the stand-in server did not start")
            time.sleep(0.01)
        return self

    def control(self, **changes: Any) -> dict[str, Any]:
        """Change settings (see StandinConfig; ``reset=True`` clears counters, faults and rules)."""
        import httpx

        response = httpx.post(self.url + "/_control", json=changes, timeout=10)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.url + "/_stats", timeout=10).json()

    def requests(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recent request bodies (images replaced by hashes) with their status and text."""
        import httpx

        return httpx.get(self.url + "/_requests", params={"limit": limit}, timeout=10).json()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_standin_process(timeout: float = 30.0, **config: Any) -> tuple[subprocess.Popen[str], str]:
    """Run the stand-in in its own process (so it does not share a GIL with the client under test);
    returns (process, base_url) once GET /v1/models answers. Settings beyond the CLI flags are
    applied through /_control. The caller terminates the process."""
    import httpx

    flags = {"policy": "--policy", "latency_ms": "--latency-ms", "max_concurrency": "--max-concurrency"}
    cmd = [sys.executable, "-m", "labeler.standin", "--host", "127.0.0.1", "--port", "0"]
    for key, flag in flags.items():
        if key in config:
            cmd += [flag, str(config.pop(key))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("http"):
        proc.kill()
        raise RuntimeError(f"the stand-in process did not print its URL (got {line!r}, exit {proc.poll()})")
    base_url = line
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(base_url + "/models", timeout=2).raise_for_status()
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the stand-in process did not become ready") from None
            time.sleep(0.05)
    if config:
        httpx.post(base_url.removesuffix("/v1") + "/_control", json=config, timeout=10).raise_for_status()
    return proc, base_url


def main(argv: list[str] | None = None) -> None:
    """``python -m labeler.standin``: serve until interrupted, after printing the base URL."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--policy", default="hash", choices=list(Policy.__args__))  # type: ignore[attr-defined]
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--no-logprobs", action="store_true", help="never return logprobs")
    parser.add_argument("--api-key", default=None, help="demand this bearer key")
    args = parser.parse_args(argv)
    config = StandinConfig(
        policy=args.policy, latency_ms=args.latency_ms, max_concurrency=args.max_concurrency,
        logprobs=not args.no_logprobs, api_key=args.api_key,
    )  # fmt: skip
    sock = _bind(args.host, args.port)
    print(f"http://{args.host}:{sock.getsockname()[1]}/v1", flush=True)
    uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="off")).run(
        sockets=[sock]
    )


if __name__ == "__main__":
    main()
