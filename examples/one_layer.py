"""One mux layer alone in a FastAPI app: TraceLayer and TagsLayer around the app's own routes.

Run it with ``uvicorn examples.one_layer:app``. Every response carries ``x-mux-request-id``; every request is
annotated with the caller's tags, end user and session (headers ``x-mux-tags``, ``x-mux-end-user``,
``x-session-id``), and on an LLM route such as ``/v1/chat/completions`` TagsLayer also validates the body's
``mlx:*`` fields, answering a bad one with a 400 in OpenAI's error shape before the endpoint runs.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request

import mux
from mux.layers.tags import TagsLayer
from mux.layers.trace import TraceLayer

app = FastAPI()
app.add_middleware(TagsLayer)
app.add_middleware(TraceLayer)  # added last, so outermost: denials get a request id and a log record too


@app.get("/whoami")
async def whoami(request: Request) -> dict:
    ctx = mux.context_of(request.scope)
    return {"request_id": ctx.request_id, "end_user": ctx.mlx.end_user, "tags": ctx.mlx.tags}


@app.post("/v1/chat/completions")
async def chat(request: Request) -> dict:
    """A toy model that answers with the caller's annotations (the body reaches the endpoint unchanged)."""
    ctx = mux.context_of(request.scope)
    body = await request.json()
    text = f"tags={ctx.mlx.tags} end_user={ctx.mlx.end_user}"
    return {
        "id": f"chatcmpl-{ctx.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
    }
