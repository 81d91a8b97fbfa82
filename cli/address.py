"""Where the running server listens: ``{output}/server.json``, for the CLI to find it.

``illustrator serve`` writes the file (mode 0600) once it is ready and removes it when
it stops. Commands that talk to a server (``watch``, ``sessions show``...) take, in
order: ``--url``, the address in this file if the process that wrote it is alive, and
``http://{server.host}:{server.port}`` from the configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from config import Config
from domain import FORMAT_VERSION, isoformat, utcnow

ADDRESS_FILE = "server.json"


def address_path(config: Config) -> Path:
    """``{output}/server.json``."""
    return config.output_dir / ADDRESS_FILE


def url_for(host: str, port: int) -> str:
    """A URL a client on this host can reach a server bound to ``host``:``port`` at."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_address(config: Config, host: str, port: int) -> Path:
    """Record our address (atomically, readable by our user only); returns the path."""
    path = address_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format_version": FORMAT_VERSION,
        "url": url_for(host, port),
        "host": host,
        "port": port,
        "pid": os.getpid(),
        "started_at": isoformat(utcnow()),
    }
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    os.replace(temp, path)
    return path


def remove_address(config: Config) -> None:
    """Remove the file if we wrote it (another server may have replaced it since)."""
    path = address_path(config)
    if _read(path).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def running_server_url(config: Config) -> str | None:
    """The address a live server recorded, or None (no file, or its writer is gone)."""
    document = _read(address_path(config))
    pid, url = document.get("pid"), document.get("url")
    if not isinstance(pid, int) or not isinstance(url, str) or not _alive(pid):
        return None
    return url


def server_url(config: Config, explicit: str | None) -> tuple[str, str]:
    """(base URL, where it came from) of the server a command talks to."""
    if explicit:
        return explicit.rstrip("/"), "--url"
    recorded = running_server_url(config)
    if recorded is not None:
        return recorded, str(address_path(config))
    return url_for(config.server.host, config.server.port), "the configuration"


def _read(path: Path) -> dict[str, object]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
