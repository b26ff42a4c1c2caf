"""Cascade checks: whether a cheaper target's answer should be escalated to the next target.

Reads a dialect-neutral view of the answer (finish reason, text, refusal, tool calls), decoded once from the
internal answer body, so the checks hold whichever front door the client used and whichever provider answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from mux.config import CascadeConfig, load_validator
from mux.wire.openai import JsonObjectFormat, JsonSchemaFormat


class _Message(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[Any] | None = None


class _Choice(msgspec.Struct, gc=False):
    message: _Message = msgspec.field(default_factory=_Message)
    finish_reason: str | None = None


class AnswerView(msgspec.Struct, gc=False):
    """What the checks read of an answer."""

    choices: list[_Choice]


_view = msgspec.json.Decoder(AnswerView)


class Cascade:
    """Runs a route's checks; validators (``module:function``) are imported once."""

    def __init__(self) -> None:
        self._validators: dict[str, Callable[..., bool]] = {}

    def failure(self, cascade: CascadeConfig, request: Any, body: bytes) -> str | None:
        """Answer why the answer ``body`` should be escalated, or ``None`` if it passes every check."""
        try:
            choice = _view.decode(body).choices[0]
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError):
            return "error"
        message = choice.message
        checks = cascade.checks
        if "refusal" in checks and (message.refusal or choice.finish_reason == "content_filter"):
            return "refusal"
        if "length" in checks and choice.finish_reason == "length":
            return "length"
        wants_json = isinstance(getattr(request, "response_format", None), (JsonObjectFormat, JsonSchemaFormat))
        if "invalid_json" in checks and wants_json and not message.tool_calls:
            try:
                msgspec.json.decode((message.content or "").encode())
            except msgspec.DecodeError:
                return "invalid_json"
        if cascade.validator and not self._validator(cascade.validator)(request, msgspec.json.decode(body)):
            return "validator"
        return None

    def _validator(self, path: str) -> Callable[..., bool]:
        validator = self._validators.get(path)
        if validator is None:
            validator = self._validators[path] = load_validator(path)
        return validator
