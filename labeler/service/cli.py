"""``python -m labeler.app``: the service's command line (every setting also from ``DENSEPREF_*``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from labeler.service.app import build_engine_parser, create_app
from labeler.service.http_protocol import protocol_with_header_timeout
from labeler.service.settings import ServiceSettings

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labeler.app",
        parents=[build_engine_parser()],
        allow_abbrev=False,
        description="Serve dense preference labeling over HTTP (POST /label, /label/batch, /metrics, /docs). "
        "Every setting can also come from DENSEPREF_<NAME> environment variables; auth is on when "
        "DENSEPREF_API_TOKEN is set. One worker process: to scale, run several behind a load balancer "
        "with the same --cache-dir (the judgment cache is safe to share between processes).",
    )
    _add_service_arguments(parser)
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    return parser


def _add_service_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("service and limits")
    for name, field in ServiceSettings.model_fields.items():
        if name in ("api_token", "engine_args"):
            continue  # the token only from the environment (not visible in `ps`); engine options above
        kind = {int: int, float: float}.get(field.annotation, Path if name == "media_root" else str)  # type: ignore[arg-type]
        g.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=None,
            help=f"{field.description} (default: {field.default if field.default is not None else 'none'})",
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse, check everything before serving (usage errors: one line, exit 2), then serve."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # validates everything, prints --help
    service_only = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_service_arguments(service_only)
    service_only.add_argument("--log-level")
    _, engine_args = service_only.parse_known_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in ServiceSettings.model_fields}
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = ServiceSettings.from_env(**overrides, engine_args=engine_args or None)
        if settings.media_root is not None and not settings.media_root.is_dir():
            raise ValueError(f"--media-root {settings.media_root} is not a folder")
        app = create_app(settings)  # builds the engine: a bad judge option fails here, not per request
    except ValueError as exc:
        parser.error(str(exc))  # one line on stderr, exit 2
    import uvicorn

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        http=protocol_with_header_timeout(settings.header_timeout_seconds),
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]
    )
