"""mux under a mount point: inside ``Mount("/gw", ...)`` of a Starlette app, and behind ``--root-path``. Paths are
matched relative to ``root_path``, so the layers and the endpoints do their work there too.

Behind ``--root-path /edge`` a proxy strips the prefix: the client's ``/edge/v1/...`` reaches uvicorn as ``/v1/...``
and the app sees ``path="/edge/v1/..."`` with ``root_path="/edge"``; the tests send what the proxy would forward."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import mux
from mux.layers import TagsLayer, TraceLayer
from tests.conftest import FAKE_OPENAI_KEY
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve

HELLO = [{"role": "user", "content": "hello"}]


def config(fake: FakeOpenAI) -> mux.Config:
    return mux.parse_config(
        {
            "providers": [
                {
                    "name": "openai",
                    "type": "openai",
                    "base_url": fake.base_url,
                    "api_key": FAKE_OPENAI_KEY,
                    "models": ["gpt-4o-mini"],
                }
            ]
        }
    )


@pytest.fixture
def mounted(fake_openai: FakeOpenAI) -> Iterator[str]:
    async def home(request: Request) -> JSONResponse:
        return JSONResponse({"home": True})

    app = Starlette(routes=[Route("/", home), Mount("/gw", app=mux.build_app(config(fake_openai)))])
    with serve(app) as url:
        yield url


def test_the_gateway_mounted_under_a_prefix_serves_chat_through_the_sdk(mounted, fake_openai):
    with openai.OpenAI(base_url=mounted + "/gw/v1", api_key="client", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, extra_body={"mlx:tags": {"team": "search"}}
        )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-mux-request-id"].startswith("req_") and raw.headers["x-mux-provider"] == "openai"
    assert "mlx:tags" not in fake_openai.last.body  # TagsLayer recognised the request and kept its fields home
    assert httpx.get(mounted + "/").json() == {"home": True}
    assert httpx.get(mounted + "/gw/healthz").json() == {"status": "ok"}


def test_a_mounted_gateway_validates_and_answers_bad_input_in_its_shape(mounted):
    response = httpx.post(mounted + "/gw/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    assert httpx.get(mounted + "/gw/v1/chat/completions").status_code == 405


def test_behind_root_path_the_gateway_serves_its_routes(fake_openai):
    with serve(mux.build_app(config(fake_openai)), root_path="/edge") as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="client", max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
            assert raw.parse().choices[0].message.content and raw.headers["x-mux-provider"] == "openai"
            listed = client.models.list()
        assert [m.id for m in listed.data] == ["openai/gpt-4o-mini"]


def test_the_wrapped_stack_traces_its_own_paths_under_root_path_and_leaves_the_apps_alone(fake_openai):
    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    app = mux.wrap(Starlette(routes=[Route("/hello", hello)]), config(fake_openai))
    with serve(app, root_path="/edge") as url:
        own = httpx.get(url + "/hello")
        assert own.json() == {"hello": "world"} and "x-mux-request-id" not in own.headers
        answer = httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO})
        assert answer.status_code == 200 and "x-mux-request-id" in answer.headers


def test_layers_alone_in_a_mounted_app_act_on_its_llm_route():
    seen = {}

    async def endpoint(request: Request) -> JSONResponse:
        ctx = mux.context_of(request.scope)
        seen["tags"], seen["model"] = ctx.mlx.tags, ctx.request.model
        return JSONResponse({"ok": True})

    inner = TraceLayer(TagsLayer(Starlette(routes=[Route("/v1/chat/completions", endpoint, methods=["POST"])])))
    with serve(Starlette(routes=[Mount("/gw", app=inner)])) as url:
        body = {"model": "m", "messages": HELLO, "mlx:tags": {"team": "a"}}
        response = httpx.post(url + "/gw/v1/chat/completions", json=body)
        assert response.status_code == 200 and "x-mux-request-id" in response.headers
        refused = httpx.post(url + "/gw/v1/chat/completions", json={**body, "mlx:tags": {"team": 5}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "mlx:tags"
    assert seen == {"tags": {"team": "a"}, "model": "m"}
