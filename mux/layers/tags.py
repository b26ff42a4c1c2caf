"""TagsLayer: collects the request's annotations into ``ctx.mlx``.

On any HTTP request it reads the headers ``x-mux-tags: k=v,k=v``, ``x-mux-end-user`` and ``x-session-id``; on
a request to an LLM front door (``mux.ingress``) it also reads and validates the body fields ``mlx:tags``,
``mlx:end_user``, ``mlx:cache``, ``mlx:trace``, ``user``, ``metadata``
and ``session_id`` (an embeddings body has only ``user``). So the layer also works on an app's own routes,
with no chat body. Writes ``ctx.mlx``. Answers 400 for malformed values, naming the parameter or header.

Precedence: body tags override header tags key by key; the end user is ``mlx:end_user``, else the
``x-mux-end-user`` header, else OpenAI's ``user``; the session is the body's ``session_id``, else the
``x-session-id`` header. ``metadata`` entries become tags too (explicit tags win). None of the ``mlx:*``
fields is forwarded upstream (Dispatch drops them when it builds the upstream body).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from mux.asgi import ASGIApp, Receive, Scope, Send
from mux.context import Context, Mlx, context_of
from mux.errors import InvalidRequest, MuxError
from mux.ingress import deny, ingress_of, with_request
from mux.wire.openai import ChatRequest

if TYPE_CHECKING:
    from mux.wire.openai import CacheControl

MAX_TAGS = 32
MAX_KEY = 64
MAX_VALUE = 256
MAX_ID = 256


class TagsLayer:
    reads: frozenset[str] = frozenset()
    writes = frozenset({"mlx"})

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = 10 * 1024 * 1024) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        if ingress_of(scope) is None:  # an app's own route: the headers are all there is
            return self._annotate(context_of(scope), None, scope, receive, send)
        return with_request(scope, receive, send, self.max_body_bytes, self._annotate)

    def _annotate(self, ctx: Context, request: Any, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        tags = end_user = session = None
        for name, value in scope["headers"]:  # one pass for the three headers this layer reads
            if name == b"x-mux-tags":
                tags = value
            elif name == b"x-mux-end-user":
                end_user = value
            elif name == b"x-session-id":
                session = value
        try:
            if type(request) is ChatRequest and not (tags or end_user or session or request.metadata):
                # the common case, without the general merge: a chat request's own fields, no header, no metadata
                ctx.mlx = body_annotations(request)
                return self.app(scope, receive, send)
            ctx.mlx = merged_annotations(
                body_tags=getattr(request, "mlx_tags", None),
                metadata=getattr(request, "metadata", None),
                body_end_user=getattr(request, "mlx_end_user", None),
                user=getattr(request, "user", None),
                cache=getattr(request, "mlx_cache", None),
                trace=getattr(request, "mlx_trace", None),
                body_session=getattr(request, "session_id", None),
                header_tags=tags,
                header_end_user=end_user,
                header_session=session,
            )
        except MuxError as error:
            return deny(scope, send, error)
        return self.app(scope, receive, send)


def merged_annotations(
    *,
    body_tags: dict[str, str] | None,
    metadata: dict[str, str] | None,
    body_end_user: str | None,
    user: str | None,
    cache: CacheControl | None,
    trace: bool | None,
    body_session: str | None,
    header_tags: bytes | None,
    header_end_user: bytes | None,
    header_session: bytes | None,
) -> Mlx:
    """Answer the merged annotations (pure); raise ``InvalidRequest`` naming the bad field."""
    if metadata or header_tags:
        tags: dict[str, str] = dict(metadata) if metadata else {}
        if header_tags:
            tags.update(parse_tag_header(header_tags))
        if body_tags:
            tags.update(body_tags)
    else:
        tags = body_tags or {}
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"At most {MAX_TAGS} tags are allowed.", param="mlx:tags")
    end_user = body_end_user or _header_text(header_end_user, "x-mux-end-user", MAX_ID) or user
    session = body_session or _header_text(header_session, "x-session-id", 128)
    return Mlx(tags=tags, end_user=end_user, cache=cache, trace=bool(trace), session_id=session)


def body_annotations(request: ChatRequest) -> Mlx:
    """Answer ``merged_annotations`` of a chat request without annotation headers or ``metadata`` (pure); raise
    ``InvalidRequest`` naming the bad field."""
    tags = request.mlx_tags or {}
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"At most {MAX_TAGS} tags are allowed.", param="mlx:tags")
    return Mlx(
        tags=tags,
        end_user=request.mlx_end_user or request.user,
        cache=request.mlx_cache,
        trace=bool(request.mlx_trace),
        session_id=request.session_id,
    )


def parse_tag_header(raw: bytes) -> dict[str, str]:
    """Parse ``k=v,k=v`` (values may be percent-encoded); raise ``InvalidRequest`` for malformed pairs."""
    text = _header_text(raw, "x-mux-tags", 8192) or ""
    tags: dict[str, str] = {}
    for pair in text.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, eq, value = pair.partition("=")
        key, value = unquote(key.strip()), unquote(value.strip())
        if not eq or not key:
            raise InvalidRequest(f"Header x-mux-tags: '{pair}' is not of the form key=value.", param="x-mux-tags")
        if len(key) > MAX_KEY or len(value) > MAX_VALUE:
            raise InvalidRequest(
                f"Header x-mux-tags: tag keys are limited to {MAX_KEY} characters and values to {MAX_VALUE}.",
                param="x-mux-tags",
            )
        tags[key] = value
    return tags


def _header_text(raw: bytes | None, name: str, limit: int) -> str | None:
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequest(f"Header {name} is not valid UTF-8.", param=name) from None
    if len(text) > limit:
        raise InvalidRequest(f"Header {name} is longer than {limit} characters.", param=name)
    return text or None
