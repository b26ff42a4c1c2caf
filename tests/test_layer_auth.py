"""AuthLayer alone: inside a small Starlette app (its own routes, its own lifespan opening the key store), over
a real socket, and around a scripted inner app that records the context it saw."""

from __future__ import annotations

import contextlib
import time

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import mux
from mux.keys.cache import KeyCache
from mux.keys.spec import KeySpec, record_from_spec
from mux.layers.auth import AuthLayer, requested_models
from mux.stores.keys import KeyStoreUnavailable
from mux.stores.keys.memory import MemoryKeyStore
from mux.wire.openai import decode_request
from tests.asgi_calls import ScriptedApp, call
from tests.servers import run, serve

KEY = "starlette-key-0123456789ab"
SECRET = "layer-secret"


async def whoami(request: Request) -> JSONResponse:
    key = mux.context_of(request.scope).key
    return JSONResponse({"key": key.name if key is not None else None})


def starlette_app(store: MemoryKeyStore, **options) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        await store.open()
        yield
        await store.close()

    cache = KeyCache(store, secret=SECRET)
    routes = [
        Route("/v1/whoami", whoami),
        Route("/public", whoami),
        Route("/v1/chat/completions", whoami, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(AuthLayer, cache=cache, **options)])


def with_key(store: MemoryKeyStore, name: str = "svc", **fields) -> None:
    record, _ = record_from_spec(KeySpec(name=name, key=KEY, **fields), secret=SECRET, now=time.time())
    run(store.put(record))


def test_auth_layer_alone_in_a_starlette_app_guards_only_its_prefixes():
    store = MemoryKeyStore()
    with_key(store, models=["openai/gpt-4o-mini"])
    with serve(starlette_app(store)) as url:
        assert httpx.get(url + "/public").json() == {"key": None}
        refused = httpx.get(url + "/v1/whoami")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/whoami", headers={"x-api-key": KEY}).json() == {"key": "svc"}
        assert httpx.get(url + "/v1/whoami", headers={"authorization": f"bearer {KEY}"}).json() == {"key": "svc"}
        denied = httpx.post(
            url + "/v1/chat/completions",
            headers={"x-api-key": KEY},
            json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        )
        assert denied.status_code == 403 and "openai/gpt-4o" in denied.json()["error"]["message"]
        allowed = httpx.post(
            url + "/v1/chat/completions",
            headers={"x-api-key": KEY},
            json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        )
        assert allowed.json() == {"key": "svc"}  # the body still reaches the endpoint after the layer read it


def test_with_no_key_in_the_store_every_request_passes_and_a_presented_key_is_ignored():
    with serve(starlette_app(MemoryKeyStore())) as url:
        assert httpx.get(url + "/v1/whoami").json() == {"key": None}
        assert httpx.get(url + "/v1/whoami", headers={"x-api-key": "anything-at-all-0123"}).json() == {"key": None}


def test_protection_is_decided_on_the_path_below_the_mount_point_never_on_the_host():
    store = MemoryKeyStore()
    with_key(store)
    # behind --root-path /gw, a proxy forwards the client's /gw/v1/whoami as /v1/whoami
    with serve(starlette_app(store, prefixes=("/v1/",)), root_path="/gw") as url:
        assert httpx.get(url + "/v1/whoami").status_code == 401
        assert httpx.get(url + "/v1/whoami", headers={"host": "example.com"}).status_code == 401
        assert httpx.get(url + "/v1/whoami", headers={"x-api-key": KEY}).json() == {"key": "svc"}
        assert httpx.get(url + "/public", headers={"host": "example.com:80"}).json() == {"key": None}


def test_a_store_that_cannot_be_read_fails_closed_with_503():
    class Down(MemoryKeyStore):
        async def by_hash(self, *_):
            raise KeyStoreUnavailable("Key store (Redis) unreachable: ConnectionError.")

        revision = count = by_hash

    inner = ScriptedApp()
    sent = call(
        AuthLayer(inner, cache=KeyCache(Down())),
        method="GET",
        path="/v1/models",
        headers=[(b"x-api-key", KEY.encode())],
    )
    assert sent.status == 503 and sent.json()["error"]["code"] == "key_store_unavailable"
    assert KEY.encode() not in sent.body and inner.seen == []


def test_the_layer_writes_the_key_record_and_passes_other_scopes_through():
    store = MemoryKeyStore()
    with_key(store, team="search")
    inner = ScriptedApp()
    layer = AuthLayer(inner, cache=KeyCache(store, secret=SECRET))
    sent = call(layer, method="GET", path="/api/v1/models", headers=[(b"authorization", f"Bearer {KEY}".encode())])
    assert sent.status == 200 and inner.seen[0]["ctx"].key.name == "svc" and inner.seen[0]["ctx"].key.team == "search"
    assert call(layer, method="GET", path="/api/v1/models").status == 401
    sent = call(layer, scope={"type": "websocket", "path": "/v1/x", "headers": []})
    assert inner.seen[-1]["scope"]["type"] == "websocket"
    assert AuthLayer.writes == frozenset({"key"}) and AuthLayer.reads == frozenset()


def test_requested_models_names_each_parameter():
    request, _ = decode_request(
        b'{"model": "a", "models": ["b", "c"], "fallbacks": ["d"], "messages": [{"role": "user", "content": "x"}]}'
    )
    assert requested_models(request) == [("model", "a"), ("models[0]", "b"), ("models[1]", "c"), ("fallbacks[0]", "d")]
