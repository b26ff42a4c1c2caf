"""TagsLayer around a scripted inner app: mlx:* fields and headers into ctx.mlx; bad values are 400s."""

from __future__ import annotations

import msgspec
import pytest

from mux.layers import TagsLayer

from .asgi_calls import ScriptedApp, call


def body(**extra) -> bytes:
    return msgspec.json.encode({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra})


def seen_mlx(inner: ScriptedApp):
    return inner.seen[0]["ctx"].mlx


def test_body_fields_become_the_context_annotations_and_the_body_is_replayed():
    inner = ScriptedApp()
    raw = body(
        **{
            "mlx:tags": {"tenant": "acme"},
            "mlx:end_user": "u1",
            "mlx:cache": {"skip": True},
            "mlx:trace": True,
            "session_id": "s1",
        }
    )
    call(TagsLayer(inner), raw)
    mlx = seen_mlx(inner)
    assert mlx.tags == {"tenant": "acme"} and mlx.end_user == "u1" and mlx.session_id == "s1"
    assert mlx.cache.skip is True and mlx.trace is True
    assert inner.seen[0]["body"] == raw


def test_headers_supply_tags_end_user_and_session_and_the_body_wins_on_conflict():
    inner = ScriptedApp()
    headers = [
        (b"x-mux-tags", b"tenant=hdr,feature=sum%20mary"),
        (b"x-mux-end-user", b"hdr-user"),
        (b"x-session-id", b"hdr-session"),
    ]
    call(TagsLayer(inner), body(**{"mlx:tags": {"tenant": "acme"}}), headers=headers)
    mlx = seen_mlx(inner)
    assert mlx.tags == {"tenant": "acme", "feature": "sum mary"}
    assert mlx.end_user == "hdr-user" and mlx.session_id == "hdr-session"


def test_openai_user_is_the_end_user_when_no_mlx_end_user_is_given():
    inner = ScriptedApp()
    call(TagsLayer(inner), body(user="openai-user", metadata={"team": "x"}))
    mlx = seen_mlx(inner)
    assert mlx.end_user == "openai-user" and mlx.tags == {"team": "x"}


@pytest.mark.parametrize(
    ("extra", "headers", "param"),
    [
        ({"mlx:tags": {"a": 1}}, [], "mlx:tags"),
        ({"mlx:tags": ["a"]}, [], "mlx:tags"),
        ({"mlx:end_user": 5}, [], "mlx:end_user"),
        ({"mlx:cache": {"skipp": True}}, [], "mlx:cache"),
        ({"mlx:trace": "yes"}, [], "mlx:trace"),
        ({"session_id": "x" * 129}, [], "session_id"),
        ({}, [(b"x-mux-tags", b"novalue")], "x-mux-tags"),
        ({}, [(b"x-session-id", b"y" * 200)], "x-session-id"),
        ({"mlx:tags": {f"k{i}": "v" for i in range(40)}}, [], "mlx:tags"),
    ],
)
def test_malformed_annotations_are_refused_with_a_400_naming_the_parameter(extra, headers, param):
    inner = ScriptedApp()
    result = call(TagsLayer(inner), body(**extra), headers=headers)
    assert result.status == 400
    assert result.json()["error"]["param"] == param
    assert inner.seen == []


def test_other_paths_and_methods_pass_through_without_reading_the_body():
    inner = ScriptedApp()
    call(TagsLayer(inner), b"not json", method="POST", path="/elsewhere")
    ctx = inner.seen[0]["ctx"]
    assert ctx.body is None and ctx.request is None and inner.seen[0]["body"] == b"not json"
    assert ctx.mlx.tags == {} and ctx.mlx.end_user is None


def test_an_apps_own_route_gets_the_header_annotations_without_a_chat_body():
    inner = ScriptedApp()
    headers = [(b"x-mux-tags", b"team=search,tenant=acme"), (b"x-mux-end-user", b"u9"), (b"x-session-id", b"s1")]
    call(TagsLayer(inner), b"", method="GET", path="/reports", headers=headers)
    ctx = inner.seen[0]["ctx"]
    assert ctx.mlx.tags == {"team": "search", "tenant": "acme"}
    assert (ctx.mlx.end_user, ctx.mlx.session_id) == ("u9", "s1") and ctx.body is None


def test_a_malformed_tag_header_on_an_apps_own_route_is_refused():
    inner = ScriptedApp()
    result = call(TagsLayer(inner), b"", method="GET", path="/reports", headers=[(b"x-mux-tags", b"novalue")])
    assert result.status == 400 and result.json()["error"]["param"] == "x-mux-tags" and inner.seen == []
