"""Run the mux gateway: ``python app.py [--config PATH] [--host H] [--port P] [--workers N]``.

With no config file, providers come from the environment (``OPENAI_API_KEY`` and the like). ``app`` is also
an ASGI app for ``uvicorn app:app``, configured by the file named in ``MUX_CONFIG`` (or the environment);
``MUX_STATE_PATH`` names the routing state file when the config sets no ``server.state_path``.

SIGHUP reloads the config file. With ``--workers N`` the workers share the routing state file (a temporary
one that lasts as long as the gateway when the config names none), and a reload or rollback made by any of
them, or SIGHUP to the supervisor, is served by every worker within a second.

SIGTERM (and SIGINT) is a graceful shutdown, run by uvicorn (with ``--workers N``, the supervisor passes it to
every worker): it stops accepting connections, lets the requests in flight finish, then runs the lifespan
shutdown, where the gateway closes its resources; the ledger writer writes every queued row before the process
exits (``ledger.shutdown_timeout_s`` at most).
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
from typing import Any

import msgspec
import structlog
import uvicorn
from uvicorn.supervisors import Multiprocess

import mux
from mux.config import check_state
from mux.routing.versions import SQLiteVersions

STATE_ENV = "MUX_STATE_PATH"


def load(path: str | None) -> mux.Config:
    """Answer the config from ``path``, or from the environment when there is none; ``MUX_STATE_PATH`` fills
    in ``server.state_path`` when the config leaves it unset."""
    config = mux.load_config(path) if path else mux.config_from_env()
    state = os.environ.get(STATE_ENV)
    if state and not config.server.state_path:
        config = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, state_path=state))
    return config


def secrets_of(config: mux.Config) -> list[str | None]:
    """Answer what the log must never show: provider keys, configured virtual keys, the admin token and the
    key secret."""
    return [
        *(p.api_key for p in config.providers),
        *(k.key for k in config.keys),
        config.server.admin_token,
        config.server.key_secret,
        *(config.ledger.secrets if config.ledger else []),
    ]


def create_app() -> mux.Gateway:
    """The ASGI app for ``uvicorn app:app`` (and for each worker of ``python app.py --workers N``).

    SIGHUP re-reads the config file and serves it from the next request on (handled on the event loop once
    the gateway starts); a bad file is logged and the running config keeps serving."""
    path = os.environ.get("MUX_CONFIG") or None
    config = load(path)
    mux.configure_logging(level=os.environ.get("MUX_LOG_LEVEL", "info"), secrets=secrets_of(config))
    gateway = mux.build_app(config, source=lambda: load(path))
    if hasattr(signal, "SIGHUP"):
        gateway.reload_on(signal.SIGHUP)
    return gateway


def reload_workers(path: str | None, state_path: str) -> None:
    """What SIGHUP to the supervisor of several workers does: read the config file and, if it is good, record a
    reload in the shared state file; every worker then re-reads the file (``LiveRouting.sync``). A bad file
    is logged and changes nothing."""
    logger = structlog.get_logger("mux.admin")
    try:
        config = load(path)
        versions = SQLiteVersions(state_path)
        try:
            routes = {name: versions.assign(name, route)[0] for name, route in config.routes.items()}
            served = versions.record_reload()
        finally:
            versions.close()
    except (mux.ConfigError, sqlite3.Error) as exc:
        logger.error("config_reload_failed", error=str(exc))
    else:
        logger.info("config_reloaded", routes=routes, generation=served.generation)


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, except that SIGHUP reloads the config in every worker (through the shared
    state file) instead of restarting them."""

    def __init__(self, *args: Any, config_path: str | None, state_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_path = config_path
        self.state_path = state_path

    def handle_hup(self) -> None:  # called from the supervisor's loop, not from the signal handler
        reload_workers(self.config_path, self.state_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py", description="mux: an LLM gateway")
    parser.add_argument("--config", help="YAML config file (default: providers from environment keys)")
    parser.add_argument("--host", help="bind address (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: server.port, 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (default: server.workers, 1)")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
        check_state(config, args.workers or config.server.workers)  # memory state is not shared by workers
    except mux.ConfigError as exc:
        print(f"mux: bad configuration: {exc}", file=sys.stderr)
        return 2
    if not config.providers:
        print(
            "mux: no provider is configured; set OPENAI_API_KEY (or ANTHROPIC_API_KEY, GEMINI_API_KEY), "
            "or pass --config with a providers list.",
            file=sys.stderr,
        )
    path = os.path.abspath(args.config) if args.config else None
    if path:
        os.environ["MUX_CONFIG"] = path
    workers = args.workers or config.server.workers
    state_path, scratch = config.server.state_path, None
    if workers > 1 and not state_path:  # the workers need one state file to follow each other's reloads
        scratch = tempfile.mkdtemp(prefix="mux-state-")
        state_path = os.environ[STATE_ENV] = os.path.join(scratch, "state.sqlite")
    try:
        if state_path:  # a start serves the file as it is: rollbacks recorded by an earlier run end here
            try:
                store = SQLiteVersions(state_path)
                store.record_reload()
                store.close()
            except sqlite3.Error as exc:
                print(f"mux: cannot use the state file {state_path}: {exc}", file=sys.stderr)
                return 2
        options: dict[str, Any] = {
            "app": "app:create_app",
            "factory": True,
            "host": args.host or config.server.host,
            "port": args.port if args.port is not None else config.server.port,
            "workers": workers,
            "loop": "uvloop",
            "http": "httptools",
            "access_log": config.server.access_log,
            "log_level": "warning",
            "app_dir": os.path.dirname(os.path.abspath(__file__)),
        }
        if workers == 1:
            uvicorn.run(**options)
        else:
            mux.configure_logging(level=os.environ.get("MUX_LOG_LEVEL", "info"), secrets=secrets_of(config))
            assert state_path is not None  # several workers always have one (above)
            sys.path.insert(0, options.pop("app_dir"))  # as uvicorn.run does
            _supervise(uvicorn.Config(**options), path, state_path)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _supervise(settings: uvicorn.Config, path: str | None, state_path: str) -> None:
    """Run ``settings.workers`` workers under ``Supervisor`` (what ``uvicorn.run`` does with its own)."""
    extra = {"target": uvicorn.Server(settings).run} if "target" in inspect.signature(Multiprocess).parameters else {}
    try:
        Supervisor(settings, sockets=[settings.bind_socket()], config_path=path, state_path=state_path, **extra).run()
    except KeyboardInterrupt:
        pass


def __getattr__(name: str) -> Any:
    """``app``, for ``uvicorn app:app``: built on first use, so importing this module (as uvicorn's workers
    and the ``app:create_app`` factory do) builds nothing."""
    if name != "app":
        raise AttributeError(name)
    try:
        gateway = create_app()
    except mux.ConfigError as exc:  # ``uvicorn app:app`` with a bad MUX_CONFIG: fail before serving
        raise SystemExit(f"mux: bad configuration: {exc}") from None
    globals()["app"] = gateway
    return gateway


if __name__ == "__main__":
    sys.exit(main())
