"""Run the mux gateway: ``python app.py [--config PATH] [--host H] [--port P] [--workers N]``.

With no config file, providers come from the environment (``OPENAI_API_KEY`` and the like). ``app`` is also
an ASGI app for ``uvicorn app:app``, configured by the file named in ``MUX_CONFIG`` (or the environment).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import mux


def load(path: str | None) -> mux.Config:
    """Answer the config from ``path``, or from the environment when there is none."""
    return mux.load_config(path) if path else mux.config_from_env()


def create_app() -> mux.Gateway:
    """The ASGI app for ``uvicorn app:app`` (and for each worker of ``python app.py --workers N``).

    SIGHUP re-reads the config file and serves it from the next request on; a bad file is logged and the
    running config keeps serving."""
    path = os.environ.get("MUX_CONFIG") or None
    config = load(path)
    mux.configure_logging(level=os.environ.get("MUX_LOG_LEVEL", "info"),
                          secrets=[p.api_key for p in config.providers])
    gateway = mux.build_app(config, source=lambda: load(path))
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: _reload(gateway))
    return gateway


def _reload(gateway: mux.Gateway) -> None:
    import structlog

    logger = structlog.get_logger("mux.admin")
    try:
        versions = gateway.routing.reload()
    except mux.ConfigError as exc:
        logger.error("config_reload_failed", error=str(exc))
    else:
        logger.info("config_reloaded", routes=versions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py", description="mux: an LLM gateway")
    parser.add_argument("--config", help="YAML config file (default: providers from environment keys)")
    parser.add_argument("--host", help="bind address (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: server.port, 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (default: server.workers, 1)")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except mux.ConfigError as exc:
        print(f"mux: bad configuration: {exc}", file=sys.stderr)
        return 2
    if not config.providers:
        print("mux: no provider is configured; set OPENAI_API_KEY (or ANTHROPIC_API_KEY, GEMINI_API_KEY), "
              "or pass --config with a providers list.", file=sys.stderr)
    if args.config:
        os.environ["MUX_CONFIG"] = os.path.abspath(args.config)

    import uvicorn

    uvicorn.run(
        "app:create_app",
        factory=True,
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
        workers=args.workers or config.server.workers,
        loop="uvloop",
        http="httptools",
        access_log=config.server.access_log,
        log_level="warning",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
else:
    try:
        app = create_app()
    except mux.ConfigError as exc:  # ``uvicorn app:app`` with a bad MUX_CONFIG: fail before serving
        raise SystemExit(f"mux: bad configuration: {exc}") from None
