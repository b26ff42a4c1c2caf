"""The three ways to use mux: standalone, the stack around an existing app, one layer alone."""

from __future__ import annotations

import contextlib

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import mux
from mux.gateway import StackError, check_stack, stack
from mux.layers import RouterLayer, TagsLayer, TraceLayer

from .servers import serve

CONFIG = mux.parse_config(
    {"providers": [{"name": "openai", "type": "openai", "api_key": "k", "models": ["gpt-4o-mini"]}]}
)


def test_default_stack_passes_the_field_check():
    check_stack(stack(CONFIG))


def test_a_layer_reading_a_field_written_only_inside_it_is_refused():
    class NeedsPlan:
        reads = frozenset({"plan"})
        writes: frozenset[str] = frozenset()

    layers = stack(CONFIG)
    router_at = next(i for i, (cls, _) in enumerate(layers) if cls is RouterLayer)
    with pytest.raises(StackError, match="NeedsPlan reads"):
        check_stack(layers[:router_at] + [(NeedsPlan, {})] + layers[router_at:])
    check_stack(layers + [(NeedsPlan, {})])


def test_wrap_serves_mux_paths_and_leaves_the_rest_and_the_lifespan_to_the_app():
    events = []

    async def hello(request: Request):
        return JSONResponse({"hello": "world"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        yield
        events.append("shutdown")

    user_app = Starlette(routes=[Route("/hello", hello)], lifespan=lifespan)
    with serve(mux.wrap(user_app, CONFIG)) as url:
        assert httpx.get(f"{url}/hello").json() == {"hello": "world"}
        assert "x-mux-request-id" not in httpx.get(f"{url}/hello").headers
        models = httpx.get(f"{url}/v1/models")
        assert models.json()["data"][0]["id"] == "openai/gpt-4o-mini"
        assert models.headers["x-mux-request-id"].startswith("req_")
        bad = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    assert events == ["startup", "shutdown"]


def test_one_layer_alone_inside_a_starlette_app_annotates_the_request():
    seen = {}

    async def endpoint(request: Request):
        ctx = request.scope["mux"]
        seen["tags"], seen["end_user"] = ctx.mlx.tags, ctx.mlx.end_user
        seen["body"] = await request.json()  # the body is replayed to the app
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/v1/chat/completions", endpoint, methods=["POST"])],
        middleware=[Middleware(TraceLayer), Middleware(TagsLayer)],
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "mlx:tags": {"team": "a"}}
    with serve(app) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-mux-end-user": "u7"})
        assert response.status_code == 200 and "x-mux-request-id" in response.headers
        refused = httpx.post(f"{url}/v1/chat/completions", json={**body, "mlx:tags": {"team": 5}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "mlx:tags"
    assert seen == {"tags": {"team": "a"}, "end_user": "u7", "body": body}


def test_standalone_app_answers_health_and_models_over_a_socket():
    with serve(mux.build_app(CONFIG)) as url:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        listed = msgspec.json.decode(httpx.get(f"{url}/api/v1/models").content)
        assert listed == {
            "object": "list",
            "data": [{"id": "openai/gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"}],
        }


def test_check_stack_checks_reads_after_against_the_whole_stack():
    class LogsTheKey:
        reads: frozenset[str] = frozenset()
        reads_after = frozenset({"key"})
        writes: frozenset[str] = frozenset()

    with pytest.raises(StackError, match=r"LogsTheKey reads \['key'\] after answering"):
        check_stack(stack(CONFIG) + [(LogsTheKey, {})])

    class WritesTheKey:
        reads: frozenset[str] = frozenset()
        writes = frozenset({"key"})

    check_stack([(LogsTheKey, {}), *stack(CONFIG), (WritesTheKey, {})])  # written inside it: fine after answering


def test_every_working_order_of_the_default_layers_passes_the_check():
    import itertools

    layers = stack(CONFIG)
    for order in itertools.permutations(layers):
        check_stack(list(order))  # no default layer needs another's field before calling inward


def test_importing_one_layer_imports_a_small_part_of_mux():
    import subprocess
    import sys

    probe = "import sys, mux.layers.tags; print(len([m for m in sys.modules if m == 'mux' or m.startswith('mux.')]))"
    alone = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    probe_all = (
        "import sys, mux, mux.gateway; print(len([m for m in sys.modules if m == 'mux' or m.startswith('mux.')]))"
    )
    everything = int(
        subprocess.run([sys.executable, "-c", probe_all], capture_output=True, text=True, check=True).stdout
    )
    assert alone * 4 <= everything, (alone, everything)
