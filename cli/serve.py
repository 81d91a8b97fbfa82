"""``illustrator serve``: the HTTP/WebSocket server in the foreground.

The listening socket is bound before anything else starts, so a bad or taken port is a
one-line error that never touches the database. Once the engine is up the server records
its address in ``{output}/server.json`` (cli.address) for the other commands, and removes
it when it shuts down.
"""

from __future__ import annotations

import argparse
import socket
import sys
from dataclasses import replace
from typing import Any

from cli.address import address_path, remove_address, write_address
from config import Config


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0: any free port), got {port}")
    return port


def register(commands: Any) -> None:
    """``illustrator serve``."""
    serve = commands.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument(
        "--host", help="address to listen on (default: server.host from the config, 127.0.0.1)"
    )
    serve.add_argument(
        "--port",
        type=port_number,
        help="port to listen on, 0 for any free one (default: server.port from the config, 8080)",
    )
    serve.set_defaults(handler=_serve)


def _serve(config: Config, args: argparse.Namespace) -> int:
    from aiohttp import web

    from web.app import create_app

    server = replace(
        config.server,
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
    )
    config = replace(config, server=server)
    try:
        listening = _bind(server.host, server.port)
    except OSError as exc:
        print(
            f"illustrator: cannot listen on {server.host}:{server.port}:"
            f" {exc.strerror or exc}\nChoose another port: --port N or ILLUSTRATOR_SERVER_PORT=N",
            file=sys.stderr,
        )
        return 1
    host, port = listening.getsockname()[:2]
    app = create_app(config)

    async def record_address(app: web.Application) -> None:
        # on_startup handlers run after cleanup_ctx's: the engine is up and recovered.
        write_address(config, host, port)

    async def forget_address(app: web.Application) -> None:
        remove_address(config)

    app.on_startup.append(record_address)
    app.on_shutdown.insert(0, forget_address)
    try:
        # run_app turns SIGINT and SIGTERM into a graceful shutdown (cleanup_ctx runs).
        web.run_app(
            app,
            sock=listening,
            print=lambda text: print(
                text.replace("(Press CTRL+C to quit)", "(Ctrl-C pauses sessions and stops)")
                + f"\nAddress recorded in {address_path(config)}",
                flush=True,
            ),
            shutdown_timeout=30,
        )
    finally:
        remove_address(config)  # also when start-up failed after writing it
        listening.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound (not yet listening) to ``host``:``port``."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock
