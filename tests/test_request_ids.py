"""Request ids stay unique across every gateway app in one process."""

from __future__ import annotations

import mux

from .asgi_calls import call

CONFIG = mux.parse_config(
    {"providers": [{"name": "openai", "type": "openai", "api_key": "k", "models": ["gpt-4o-mini"]}]}
)


def test_two_gateway_apps_in_one_process_never_hand_out_the_same_request_id():
    first, second = mux.build_app(CONFIG), mux.build_app(CONFIG)
    ids = [
        call(app, method="GET", path="/v1/models").headers["x-mux-request-id"]
        for _ in range(3)
        for app in (first, second)
    ]
    assert all(i.startswith("req_") for i in ids)
    assert len(set(ids)) == len(ids)
