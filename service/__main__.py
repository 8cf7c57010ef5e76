"""``python -m service --store DIR [--host H] [--port P] [--default-model NAME]``.

Flags override the ``ACTREC_*`` environment (see :class:`service.settings.Settings`), which
sets everything else.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the model bundles of a store over HTTP (POST /recognize). Every "
        "setting also comes from the environment as ACTREC_<NAME>.",
        allow_abbrev=False,
    )
    parser.add_argument("--store", type=Path, help="directory of model bundles (ACTREC_STORE)")
    parser.add_argument("--host", help="interface to listen on (ACTREC_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (ACTREC_PORT, default 8000)")
    parser.add_argument("--default-model", help="bundle used when a request names none")
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        help="backend for every bundle (ACTREC_BACKEND, default auto)",
    )
    return parser


def serve(overrides: dict | None = None) -> None:
    """Run uvicorn over :func:`service.app.create_app` with settings from the environment
    plus ``overrides``."""
    import uvicorn

    from service.app import create_app
    from service.lifecycle import DrainingServer
    from service.settings import Settings

    settings = Settings(**(overrides or {}))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # The app logs one line per request with its id; uvicorn's access log would double it.
        access_log=False,
        log_level=settings.log_level,
        # uvicorn's own wait comes after the drain (which waits shutdown_grace_s for the
        # requests in flight): only a request still running past the grace waits this too.
        timeout_graceful_shutdown=2,
    )
    DrainingServer(config, app.state.service.drain, settings.shutdown_grace_s).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    serve(overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
