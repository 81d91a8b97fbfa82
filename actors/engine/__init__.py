"""The Engine, the async front end the web app and the CLI hold (see :mod:`.core`)."""

from actors.engine.core import Engine

__all__ = ["Engine"]
