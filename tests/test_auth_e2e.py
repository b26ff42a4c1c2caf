"""Virtual keys end to end: the openai SDK (``api_key=...``) and raw httpx with ``x-api-key`` (as the anthropic
SDK sends it) -> mux with keys -> the strict fake OpenAI, over real sockets; and the admin key API.

Every response and every log line the module's gateway writes is kept, and the last test checks that no key,
key hash, key secret or admin token is in any of them.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

import mux
from mux.keys.hashing import hash_key, sha256_hex
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import serve

ADMIN = "admin-token-auth-e2e-0123"
SECRET = "key-secret-auth-e2e-4567"
ACME = "acme-key-0123456789abcdef"  # openai/gpt-4o-mini and @production only
OPEN = "open-key-0123456789abcdef"  # every model
OFF = "off-key-0123456789abcdefgh"  # disabled
OLD = "old-key-0123456789abcdefgh"  # expired
HELLO = [{"role": "user", "content": "hello"}]

SEEN: list[bytes] = []  # every response's status line, headers and body
LOG = io.BytesIO()


def config(fake: FakeOpenAI) -> dict:
    return {
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "base_url": fake.base_url,
                "api_key": "sk-fake-upstream-0123456789abcdef",
                "models": ["gpt-4o-mini", "gpt-4o"],
            }
        ],
        "routes": {"production": {"targets": [{"model": "openai/gpt-4o"}]}},
        "keys": [
            {
                "name": "acme",
                "key": ACME,
                "team": "search",
                "budget_usd": 50,
                "budget_period": "month",
                "rpm": 600,
                "tpm": 200000,
                "models": ["openai/gpt-4o-mini", "@production"],
                "expires_at": "2099-01-01T00:00:00Z",
            },
            {"name": "open", "key": OPEN},
            {"name": "off", "key": OFF, "disabled": True},
            {"name": "old", "key_sha256": sha256_hex(OLD), "expires_at": "2020-01-01T00:00:00Z"},
        ],
        "state": "memory",
        "server": {"admin_token": ADMIN, "key_secret": SECRET},
    }


@pytest.fixture(scope="module")
def url(fake_openai_server: FakeOpenAI) -> Iterator[str]:
    mux.configure_logging(stream=LOG)
    try:
        app = mux.build_app(mux.parse_config(config(fake_openai_server)))
        with serve(app) as base:
            yield base
    finally:
        mux.configure_logging(stream=open(os.devnull, "wb"))


def keep(response: httpx.Response) -> None:
    response.read()
    SEEN.append(f"{response.status_code} {response.headers}".encode() + response.content)


def http(**kwargs) -> httpx.Client:
    return httpx.Client(event_hooks={"response": [keep]}, timeout=10, **kwargs)


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10, http_client=http())


def admin(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    with http() as client:
        return client.request(method, url + path, headers={"authorization": f"Bearer {ADMIN}"}, **kwargs)


def chat(url: str, headers: dict, **body) -> httpx.Response:
    with http() as client:
        return client.post(
            url + "/v1/chat/completions",
            headers=headers,
            json={"model": "openai/gpt-4o-mini", "messages": HELLO, **body},
        )


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_no_key_or_a_wrong_key_is_refused_with_401_invalid_api_key(url, fake_openai):
    for key in ("wrong-key-0123456789abcdef", ACME + "x", ACME[:-1]):
        with pytest.raises(openai.AuthenticationError) as info:
            sdk(url, key).chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    response = chat(url, {})
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
    assert error_of(response)["type"] == "authentication_error" and "x-api-key" in error_of(response)["message"]
    assert response.headers["x-mux-request-id"]
    assert fake_openai.chat_requests == []


def test_an_allowed_model_is_served_through_the_sdk_and_through_x_api_key(url, fake_openai):
    reply = sdk(url, ACME).chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)
    assert reply.choices[0].message.content
    response = chat(url, {"x-api-key": ACME})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
    assert [r.body["model"] for r in fake_openai.chat_requests] == ["gpt-4o-mini", "gpt-4o-mini"]
    for record in fake_openai.chat_requests:  # the client's key never reaches the provider
        assert ACME not in str(record.raw_headers) and record.headers.get("x-api-key") is None


def test_an_allowed_route_and_a_bare_name_resolving_to_an_allowed_model_are_served(url, fake_openai):
    client = sdk(url, ACME)
    assert client.chat.completions.create(model="@production", messages=HELLO).choices
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
    assert [r.body["model"] for r in fake_openai.chat_requests] == ["gpt-4o", "gpt-4o-mini"]


def test_a_model_outside_the_keys_list_is_refused_with_403_naming_it(url, fake_openai):
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk(url, ACME).chat.completions.create(model="openai/gpt-4o", messages=HELLO)
    assert info.value.status_code == 403 and info.value.code == "model_not_allowed"
    assert "openai/gpt-4o" in info.value.message
    response = chat(url, {"x-api-key": ACME}, fallbacks=["openai/gpt-4o-mini", "gpt-4o"])
    assert response.status_code == 403 and error_of(response)["param"] == "fallbacks[1]"
    assert "'gpt-4o'" in error_of(response)["message"]
    response = chat(url, {"authorization": f"Bearer {ACME}"}, models=["openai/gpt-4o"])
    assert response.status_code == 403 and error_of(response)["param"] == "models[0]"
    assert fake_openai.chat_requests == []
    assert sdk(url, OPEN).chat.completions.create(model="openai/gpt-4o", messages=HELLO).choices


def test_a_disabled_key_is_refused_with_403_and_an_expired_one_with_401(url, fake_openai):
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk(url, OFF).chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)
    assert info.value.code == "key_disabled"
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(url, OLD).chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)
    assert info.value.code == "invalid_api_key" and "expired" in info.value.message
    assert fake_openai.chat_requests == []


def test_health_and_readiness_need_no_key_while_the_model_list_does(url):
    with http() as client:
        assert client.get(url + "/healthz").json() == {"status": "ok"}
        ready = client.get(url + "/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        assert client.get(url + "/v1/models").status_code == 401
        assert client.get(url + "/api/v1/models").status_code == 401
        assert client.get(url + "/v1/models", headers={"x-api-key": OPEN}).status_code == 200


def test_the_model_list_shows_a_key_only_the_models_it_may_use(url):
    limited = {m.id for m in sdk(url, ACME).models.list()}
    every = {m.id for m in sdk(url, OPEN).models.list()}
    assert limited == {"openai/gpt-4o-mini", "@production"}
    assert every == {"openai/gpt-4o-mini", "openai/gpt-4o", "@production"}


def test_the_admin_key_api_needs_the_admin_token(url):
    with http() as client:
        assert client.get(url + "/admin/keys").status_code == 401
        assert client.get(url + "/admin/keys", headers={"authorization": f"Bearer {OPEN}"}).status_code == 401
        assert (
            client.post(url + "/admin/keys", json={"name": "x"}, headers={"authorization": "Bearer wrong"}).status_code
            == 401
        )


def test_a_key_created_through_the_admin_api_is_shown_once_and_works_at_once(url, fake_openai):
    created = admin(url, "POST", "/admin/keys", json={"name": "made", "team": "ops", "models": ["gpt-4o-mini"]})
    assert created.status_code == 201
    body = created.json()
    key = body["key"]
    assert key.startswith("mux-") and body["name"] == "made" and body["source"] == "api"
    assert "key_hash" not in body and key[-4:] in body["hint"]
    assert sdk(url, key).chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO).choices
    listed = admin(url, "GET", "/admin/keys").json()
    assert [k["name"] for k in listed["data"]] == ["acme", "made", "off", "old", "open"]
    assert all("key" not in k and "key_hash" not in k and "previous_hash" not in k for k in listed["data"])
    shown = admin(url, "GET", "/admin/keys/made").json()
    assert shown["team"] == "ops" and "key" not in shown
    assert admin(url, "POST", "/admin/keys", json={"name": "made"}).status_code == 409
    assert admin(url, "POST", "/admin/keys", json={"name": "dup", "key": OPEN}).status_code == 409
    bad = admin(url, "POST", "/admin/keys", json={"name": "bad", "rpm": 0})
    assert bad.status_code == 400 and error_of(bad)["param"] == "rpm"
    assert admin(url, "DELETE", "/admin/keys/made").json() == {"name": "made", "deleted": True}


def test_patching_a_key_takes_effect_at_once(url):
    key = admin(url, "POST", "/admin/keys", json={"name": "patched"}).json()["key"]
    try:
        assert chat(url, {"x-api-key": key}).status_code == 200
        patched = admin(url, "PATCH", "/admin/keys/patched", json={"disabled": True, "team": "t"})
        assert patched.status_code == 200 and patched.json()["disabled"] is True
        assert error_of(chat(url, {"x-api-key": key}))["code"] == "key_disabled"
        admin(url, "PATCH", "/admin/keys/patched", json={"disabled": False, "models": ["@production"]})
        refused = chat(url, {"x-api-key": key})
        assert refused.status_code == 403 and error_of(refused)["code"] == "model_not_allowed"
        assert chat(url, {"x-api-key": key}, model="@production").status_code == 200
    finally:
        admin(url, "DELETE", "/admin/keys/patched")


def test_a_rotated_key_is_refused_at_once_and_its_replacement_works(url):
    old = admin(url, "POST", "/admin/keys", json={"name": "rot"}).json()["key"]
    assert chat(url, {"x-api-key": old}).status_code == 200
    rotated = admin(url, "POST", "/admin/keys/rot/rotate")
    assert rotated.status_code == 200
    new = rotated.json()["key"]
    assert new != old and rotated.json()["rotation_grace_until"] is not None
    refused = chat(url, {"x-api-key": old})
    assert refused.status_code == 401 and error_of(refused)["code"] == "invalid_api_key"
    assert "rotated" in error_of(refused)["message"]
    assert chat(url, {"authorization": f"Bearer {new}"}).status_code == 200
    admin(url, "DELETE", "/admin/keys/rot")


def test_a_key_rotated_with_a_grace_period_keeps_working_until_it_ends(url):
    old = admin(url, "POST", "/admin/keys", json={"name": "graced"}).json()["key"]
    started = time.time()
    new = admin(url, "POST", "/admin/keys/graced/rotate", json={"grace_s": 0.5}).json()["key"]
    assert chat(url, {"x-api-key": old}).status_code == 200
    assert chat(url, {"x-api-key": new}).status_code == 200
    time.sleep(max(0.0, started + 0.55 - time.time()))
    assert chat(url, {"x-api-key": old}).status_code == 401
    assert chat(url, {"x-api-key": new}).status_code == 200
    bad = admin(url, "POST", "/admin/keys/graced/rotate", json={"grace_s": -1})
    assert bad.status_code == 400 and error_of(bad)["param"] == "grace_s"
    admin(url, "DELETE", "/admin/keys/graced")


def test_a_deleted_key_is_refused_at_once(url):
    key = admin(url, "POST", "/admin/keys", json={"name": "gone"}).json()["key"]
    assert chat(url, {"x-api-key": key}).status_code == 200
    assert admin(url, "DELETE", "/admin/keys/gone").status_code == 200
    assert chat(url, {"x-api-key": key}).status_code == 401
    assert admin(url, "GET", "/admin/keys/gone").status_code == 404
    assert admin(url, "DELETE", "/admin/keys/gone").status_code == 404


def test_config_keys_cannot_be_patched_rotated_or_deleted_through_the_api(url):
    for method, path, body in (
        ("PATCH", "/admin/keys/acme", {"disabled": True}),
        ("POST", "/admin/keys/acme/rotate", {}),
        ("DELETE", "/admin/keys/acme", None),
    ):
        response = admin(url, method, path, json=body)
        assert response.status_code == 409 and error_of(response)["code"] == "config_key"
        assert "config file" in error_of(response)["message"]
    assert chat(url, {"x-api-key": ACME}).status_code == 200


def test_no_key_hash_secret_or_admin_token_is_in_any_log_line_error_body_or_header(url):
    # a few more ways to fail, then look at everything the module's gateway said
    chat(url, {"x-api-key": "mux-not-a-key-but-looks-like-one-0000"})
    chat(url, {"authorization": f"Bearer {OFF}"})
    admin(url, "POST", "/admin/keys", json={"name": "x", "key": "short"})
    admin(url, "POST", "/admin/keys", json={"name": "y", "key": ACME})
    time.sleep(0.05)  # log lines are written once per event-loop turn
    raw_keys = [ACME, OPEN, OFF, OLD, "mux-not-a-key-but-looks-like-one-0000"]
    secrets = [ADMIN, SECRET, *raw_keys]
    secrets += [hash_key(k, SECRET) for k in raw_keys] + [hash_key(k) for k in raw_keys]
    logs = LOG.getvalue()
    assert b'"event":"request"' in logs and b'"key_created"' in logs
    for secret in secrets:
        assert secret.encode() not in logs
        for seen in SEEN:
            assert secret.encode() not in seen, seen[:200]


def test_a_reload_adds_changes_and_removes_config_keys_at_once(fake_openai_server: FakeOpenAI, fake_openai):
    first = config(fake_openai_server)
    current = {"config": first}
    newcomer = "newcomer-key-0123456789abcdef"
    app = mux.build_app(mux.parse_config(first), source=lambda: mux.parse_config(current["config"]))
    with serve(app) as base:
        sdk(base, OPEN).chat.completions.create(model="gpt-4o", messages=HELLO)
        with pytest.raises(openai.AuthenticationError):
            sdk(base, newcomer).chat.completions.create(model="gpt-4o", messages=HELLO)
        keys = [k for k in first["keys"] if k["name"] != "open"] + [{"name": "newcomer", "key": newcomer}]
        keys = [{**k, "models": ["openai/gpt-4o"]} if k["name"] == "acme" else k for k in keys]
        current["config"] = {**first, "keys": keys}
        assert admin(base, "POST", "/admin/reload").status_code == 200
        with pytest.raises(openai.AuthenticationError):  # removed from the config: refused at once
            sdk(base, OPEN).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert sdk(base, newcomer).chat.completions.create(model="gpt-4o", messages=HELLO).choices
        assert sdk(base, ACME).chat.completions.create(model="gpt-4o", messages=HELLO).choices  # its new models
        with pytest.raises(openai.PermissionDeniedError):
            sdk(base, ACME).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        listed = {k["name"] for k in admin(base, "GET", "/admin/keys").json()["data"]}
        assert "newcomer" in listed and "open" not in listed
