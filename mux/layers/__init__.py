"""The request-path layers. Each is a pure-ASGI class usable alone; none imports another."""

from .errors import ErrorLayer
from .router import RouterLayer
from .tags import TagsLayer
from .trace import TraceLayer

__all__ = ["ErrorLayer", "RouterLayer", "TagsLayer", "TraceLayer"]
