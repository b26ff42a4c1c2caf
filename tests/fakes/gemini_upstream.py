"""A strict fake of Google's Gemini Developer API (``generateContent`` / ``streamGenerateContent`` /
``batchEmbedContents``), a pure ASGI app.

Serve it with ``tests.servers.serve(FakeGemini(...))`` and point a ``type: gemini`` provider at the URL.

As strict as the real API where mux could get things wrong:
- ``x-goog-api-key`` is required: without it a 403 ``PERMISSION_DENIED`` "Method doesn't allow unregistered
  callers ...", with a wrong one a 400 ``INVALID_ARGUMENT`` "API key not valid. Please pass a valid API key."
  with an ``ErrorInfo`` reason ``API_KEY_INVALID`` (both bodies as reported verbatim in public issues:
  PublicAffairs/openai-gemini#92, gunpal5/Google_GenerativeAI#15; continuedev/continue#8516).
- Unknown fields anywhere in the request are a 400 "Invalid JSON payload received. Unknown name "x" at
  'generation_config': Cannot find field." (python-genai#425, janhq/jan#5927, mnfst/llm-gateway#1858); the
  accepted fields are those of the v1beta protos (GenerateContentRequest, Content, Part, Tool,
  FunctionDeclaration, ToolConfig, GenerationConfig, ThinkingConfig, Schema: ``@google-ai/generativelanguage``
  v1beta ISchema/IGenerationConfig, js-genai ``types``). camelCase and snake_case names are both accepted, as
  by the proto JSON parser.
- In ``functionDeclarations[].parameters`` and ``generationConfig.responseSchema`` only ``Schema`` keywords are
  accepted (so ``additionalProperties``, ``$ref``, ``$schema``, ``const`` ... are refused); types must be
  ``Type`` enum names; string formats only ``enum``/``date-time`` ("otherwise requests will fail", Firebase AI
  Logic SchemaShared), integer ``int32``/``int64``, number ``float``/``double``; enum values strings; arrays
  need ``items``; ``required`` names must be declared properties.
- ``contents`` is required and non-empty, roles are ``user``/``model``, every part has exactly one data field
  (an empty text is no field), ``functionCall.args``/``functionResponse.response`` are objects,
  ``inlineData.data`` is base64, ``systemInstruction`` parts are text only, function names follow Google's
  pattern, ``allowedFunctionNames`` only with mode ANY, thinkingBudget and thinkingLevel not both.
- ``:streamGenerateContent`` answers SSE only with ``alt=sse``; each event is ``data: {json}\\r\\n\\r\\n`` (CRLF
  framing: Routstr/routstr-core's Gemini test, nyro#265), every chunk a whole GenerateContentResponse with
  ``modelVersion``/``responseId`` and a running ``usageMetadata`` (as in the recordings of
  junjihashimoto/louter test-data/gemini); no ``[DONE]``. Without ``alt=sse`` it answers one JSON array of
  chunks, and its errors are JSON arrays too (continuedev/continue#8516 shows such a body).
- Unknown models are a 404 ``NOT_FOUND`` "models/x is not found for API version v1beta, or is not supported for
  generateContent. Call ListModels ...".

- ``:batchEmbedContents`` (Google's reference page "Embeddings", ai.google.dev/api/embeddings, as copied in
  public repositories and found with the search tool; the ``google.ai.generativelanguage_v1beta`` protos
  BatchEmbedContentsRequest/EmbedContentRequest): the body is ``{"requests": [EmbedContentRequest]}``, each with
  ``model`` ("must match the model specified BatchEmbedContentsRequest.model", i.e. ``models/{model}`` of the
  URL), ``content`` ("Only the parts.text fields will be counted"), optional ``taskType``, ``title`` and
  ``outputDimensionality`` ("excessive values in the output embedding are truncated from the end"); unknown
  names are the usual "Unknown name" 400. The documented response is ``{"embeddings": [{"values": [number]}]}``
  and nothing else: the Developer API's BatchEmbedContentsResponse carries no ``usageMetadata`` (the reference
  page's JSON representation; the v1beta protos, google-cloud Dart ``BatchEmbedContentsResponse({embeddings})``;
  js-genai marks the embed response's ``metadata`` "Vertex API only"). So the fake sends none, unless a
  ``Reply(usage=...)`` asks for one (some newer surfaces are said to add ``usageMetadata.promptTokenCount``).
  Chat models are a 404 there ("... is not supported for batchEmbedContents"), embedding models a 404 on
  ``generateContent``.

It records every request and is scripted per request (``FakeGemini.script(Reply(...))``): text in pieces,
thoughts, (parallel) function calls with an optional thought signature, any finishReason (SAFETY ...), a
promptFeedback block, HTTP errors with Google's bodies (400, 401, 403, 404, 429 with RetryInfo, 500, 503), a stream
that ends without a finishReason or whose connection is cut.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from mux.asgi import answer_lifespan

API_KEY = "test-gemini-key"
# Embedding model -> the length of its vectors (gemini-embedding-001: 3072; text-embedding-004: 768).
EMBEDDING_MODELS = {"gemini-embedding-001": 3072, "text-embedding-004": 768}
MODELS = frozenset(
    {
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.0-flash",
        "gemini-2.0-flash-lite",
        "gemini-3-pro-preview",
        "gemini-3-flash-preview",
    }
)

# --- the accepted request shape (v1beta protos) ---------------------------------------------------------------
# field -> (kind, repeated). kind: a message name below, "struct" (any object), "value" (any JSON), or a scalar
# ("string", "bool", "int", "number", "bytes"), or "enum:<Name>".
_STRING, _BOOL, _INT, _NUM = ("string", False), ("bool", False), ("int", False), ("number", False)
MESSAGES: dict[str, dict[str, tuple[str, bool]]] = {
    "GenerateContentRequest": {
        "model": _STRING,
        "contents": ("Content", True),
        "tools": ("Tool", True),
        "toolConfig": ("ToolConfig", False),
        "safetySettings": ("SafetySetting", True),
        "systemInstruction": ("Content", False),
        "generationConfig": ("GenerationConfig", False),
        "cachedContent": _STRING,
    },
    "Content": {"role": _STRING, "parts": ("Part", True)},
    "Part": {
        "text": _STRING,
        "inlineData": ("Blob", False),
        "functionCall": ("FunctionCall", False),
        "functionResponse": ("FunctionResponse", False),
        "fileData": ("FileData", False),
        "executableCode": ("struct", False),
        "codeExecutionResult": ("struct", False),
        "videoMetadata": ("struct", False),
        "thought": _BOOL,
        "thoughtSignature": ("bytes", False),
        "partMetadata": ("struct", False),
        "mediaResolution": ("struct", False),
    },
    "Blob": {"mimeType": _STRING, "data": ("bytes", False)},
    "FileData": {"mimeType": _STRING, "fileUri": _STRING},
    "FunctionCall": {"id": _STRING, "name": _STRING, "args": ("struct", False)},
    "FunctionResponse": {
        "id": _STRING,
        "name": _STRING,
        "response": ("struct", False),
        "parts": ("struct", True),
        "willContinue": _BOOL,
        "scheduling": ("enum:Scheduling", False),
    },
    "Tool": {
        "functionDeclarations": ("FunctionDeclaration", True),
        "googleSearchRetrieval": ("struct", False),
        "codeExecution": ("struct", False),
        "googleSearch": ("struct", False),
        "urlContext": ("struct", False),
        "computerUse": ("struct", False),
        "fileSearch": ("struct", False),
        "googleMaps": ("struct", False),
    },
    "FunctionDeclaration": {
        "name": _STRING,
        "description": _STRING,
        "parameters": ("Schema", False),
        "parametersJsonSchema": ("value", False),
        "response": ("Schema", False),
        "responseJsonSchema": ("value", False),
        "behavior": ("enum:Behavior", False),
    },
    "ToolConfig": {"functionCallingConfig": ("FunctionCallingConfig", False), "retrievalConfig": ("struct", False)},
    "FunctionCallingConfig": {"mode": ("enum:Mode", False), "allowedFunctionNames": ("string", True)},
    "SafetySetting": {"category": ("enum:HarmCategory", False), "threshold": ("enum:Threshold", False)},
    "GenerationConfig": {
        "stopSequences": ("string", True),
        "responseMimeType": _STRING,
        "responseSchema": ("Schema", False),
        "responseJsonSchema": ("value", False),
        "responseModalities": ("enum:Modality", True),
        "candidateCount": _INT,
        "maxOutputTokens": _INT,
        "temperature": _NUM,
        "topP": _NUM,
        "topK": _INT,
        "seed": _INT,
        "presencePenalty": _NUM,
        "frequencyPenalty": _NUM,
        "responseLogprobs": _BOOL,
        "logprobs": _INT,
        "enableEnhancedCivicAnswers": _BOOL,
        "speechConfig": ("struct", False),
        "thinkingConfig": ("ThinkingConfig", False),
        "imageConfig": ("struct", False),
        "mediaResolution": ("enum:MediaResolution", False),
    },
    "BatchEmbedContentsRequest": {"model": _STRING, "requests": ("EmbedContentRequest", True)},
    "EmbedContentRequest": {
        "model": _STRING,
        "content": ("Content", False),
        "taskType": ("enum:TaskType", False),
        "title": _STRING,
        "outputDimensionality": _INT,
    },
    "ThinkingConfig": {
        "includeThoughts": _BOOL,
        "thinkingBudget": _INT,
        "thinkingLevel": ("enum:ThinkingLevel", False),
    },
    "Schema": {
        "type": ("enum:Type", False),
        "format": _STRING,
        "title": _STRING,
        "description": _STRING,
        "nullable": _BOOL,
        "enum": ("string", True),
        "maxItems": _INT,
        "minItems": _INT,
        "properties": ("map:Schema", False),
        "required": ("string", True),
        "minProperties": _INT,
        "maxProperties": _INT,
        "minLength": _INT,
        "maxLength": _INT,
        "pattern": _STRING,
        "example": ("value", False),
        "anyOf": ("Schema", True),
        "propertyOrdering": ("string", True),
        "default": ("value", False),
        "items": ("Schema", False),
        "minimum": _NUM,
        "maximum": _NUM,
    },
}
SCHEMA_KEYWORDS = frozenset(MESSAGES["Schema"])
ENUMS = {
    "TaskType": {
        "TASK_TYPE_UNSPECIFIED",
        "RETRIEVAL_QUERY",
        "RETRIEVAL_DOCUMENT",
        "SEMANTIC_SIMILARITY",
        "CLASSIFICATION",
        "CLUSTERING",
        "QUESTION_ANSWERING",
        "FACT_VERIFICATION",
        "CODE_RETRIEVAL_QUERY",
    },
    "Type": {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"},
    "Mode": {"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"},
    "ThinkingLevel": {"THINKING_LEVEL_UNSPECIFIED", "MINIMAL", "LOW", "MEDIUM", "HIGH"},
    "Modality": {"MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "AUDIO"},
    "Behavior": {"UNSPECIFIED", "BLOCKING", "NON_BLOCKING"},
    "Scheduling": {"SCHEDULING_UNSPECIFIED", "SILENT", "WHEN_IDLE", "INTERRUPT"},
    "MediaResolution": {
        "MEDIA_RESOLUTION_UNSPECIFIED",
        "MEDIA_RESOLUTION_LOW",
        "MEDIA_RESOLUTION_MEDIUM",
        "MEDIA_RESOLUTION_HIGH",
    },
    "HarmCategory": {
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
        "HARM_CATEGORY_CIVIC_INTEGRITY",
    },
    "Threshold": {
        "HARM_BLOCK_THRESHOLD_UNSPECIFIED",
        "BLOCK_LOW_AND_ABOVE",
        "BLOCK_MEDIUM_AND_ABOVE",
        "BLOCK_ONLY_HIGH",
        "BLOCK_NONE",
        "OFF",
    },
}
SCHEMA_FORMATS = {"STRING": {"enum", "date-time"}, "INTEGER": {"int32", "int64"}, "NUMBER": {"float", "double"}}
_DATA_FIELDS = (
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
)
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_MIME_TYPES = {"text/plain", "application/json", "application/xml", "application/yaml", "text/x.enum"}
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _SNAKE.sub("_", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class _Path:
    """A proto field path as Google prints it: ``contents[0].parts[1].function_call``."""

    @staticmethod
    def join(path: str, name: str) -> str:
        return f"{path}.{_snake(name)}" if path else _snake(name)


def shape_errors(value: Any, message: str = "GenerateContentRequest", path: str = "") -> list[str]:
    """Answer Google's messages for unknown fields and wrongly typed values in ``value`` (a ``message``)."""
    errors: list[str] = []
    _check_message(value, message, path, errors)
    return errors


def _check_message(value: Any, message: str, path: str, errors: list[str]) -> None:
    if not isinstance(value, dict):
        errors.append(
            f"Invalid value at '{path}' (type.googleapis.com/google.ai.generativelanguage.v1beta."
            f"{message}), {json.dumps(value)}"
        )
        return
    fields = MESSAGES[message]
    for raw_name, child in value.items():
        name = raw_name if raw_name in fields else _camel(raw_name)
        if name not in fields:
            where = f" at '{path}'" if path else ""
            errors.append(f'Invalid JSON payload received. Unknown name "{raw_name}"{where}: Cannot find field.')
            continue
        kind, repeated = fields[name]
        child_path = _Path.join(path, name)
        if repeated:
            if not isinstance(child, list):
                errors.append(
                    f"Invalid value at '{child_path}', {json.dumps(child)}: Proto field is not repeating, "
                    "cannot start list."
                )
                continue
            for i, item in enumerate(child):
                _check_value(item, kind, f"{child_path}[{i}]", errors)
        else:
            _check_value(child, kind, child_path, errors)


def _check_value(value: Any, kind: str, path: str, errors: list[str]) -> None:
    def bad(expected: str) -> None:
        errors.append(f"Invalid value at '{path}' ({expected}), {json.dumps(value)}")

    if kind in MESSAGES:
        _check_message(value, kind, path, errors)
    elif kind.startswith("map:"):
        if not isinstance(value, dict):
            bad("map")
            return
        for key, item in value.items():
            _check_message(item, kind[4:], f"{path}[{key}].value", errors)
    elif kind.startswith("enum:"):
        allowed = ENUMS[kind[5:]]
        if not (isinstance(value, str) and value.upper() in allowed and value != "null"):
            bad(f"type.googleapis.com/google.ai.generativelanguage.v1beta.{kind[5:]}")
    elif kind == "struct":
        if not isinstance(value, dict):
            bad("type.googleapis.com/google.protobuf.Struct")
    elif kind == "string":
        if not isinstance(value, str):
            bad("TYPE_STRING")
    elif kind == "bytes":
        if not isinstance(value, str):
            bad("TYPE_BYTES")
        else:
            try:
                base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            except (binascii.Error, ValueError):
                bad("TYPE_BYTES")
    elif kind == "bool":
        if not isinstance(value, bool):
            bad("TYPE_BOOL")
    elif kind == "int":
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())
        ):
            bad("TYPE_INT32")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad("TYPE_FLOAT")
    # "value": any JSON


def _norm(value: Any) -> Any:
    """The request with snake_case field names turned camelCase (outside free-form structs it is all fields)."""
    if isinstance(value, dict):
        return {(_camel(k) if "_" in k and not k.startswith("$") else k): v for k, v in value.items()}
    return value


def schema_errors(schema: Any, path: str) -> list[str]:
    """Answer what Gemini refuses in a ``Schema``: unknown keywords, bad types, formats, enums, items, required."""
    errors = shape_errors(schema, "Schema", path)
    if errors:
        return errors
    _check_schema(_norm(schema), path, errors)
    return errors


def _check_schema(schema: dict[str, Any], path: str, errors: list[str]) -> None:
    schema = _norm(schema)
    kind = str(schema.get("type", "")).upper()
    fmt = schema.get("format")
    if fmt is not None and fmt not in SCHEMA_FORMATS.get(kind, ()):
        errors.append(
            f"* GenerateContentRequest.{path}.format: only 'enum' and 'date-time' are supported for "
            f"STRING type; int32/int64 for INTEGER, float/double for NUMBER (got '{fmt}' for {kind or 'no type'})"
        )
    if kind == "ARRAY" and "items" not in schema:
        errors.append(f"* GenerateContentRequest.{path}.items: missing field.")
    properties = schema.get("properties") or {}
    for i, name in enumerate(schema.get("required") or ()):
        if name not in properties:
            errors.append(f"* GenerateContentRequest.{path}.required[{i}]: property is not defined")
    for name, sub in properties.items():
        _check_schema(sub, f"{path}.properties[{name}].value", errors)
    if "items" in schema:
        _check_schema(schema["items"], f"{path}.items", errors)
    for i, sub in enumerate(schema.get("anyOf") or ()):
        _check_schema(sub, f"{path}.any_of[{i}]", errors)


def semantic_errors(body: dict[str, Any]) -> list[str]:
    """Answer the field violations Gemini reports for a well-formed request (Google's ``* Request.path: msg``)."""
    errors: list[str] = []
    body = _norm(body)
    contents = body.get("contents") or []
    if not contents:
        errors.append("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        content = _norm(content)
        role = content.get("role")
        if role is not None and role not in ("user", "model"):
            errors.append(f"Please use a valid role: user, model. (contents[{i}].role: {role!r})")
        errors.extend(_parts_errors(content.get("parts") or [], f"contents[{i}]"))
    system = body.get("systemInstruction")
    if system is not None:
        parts = _norm(system).get("parts") or []
        errors.extend(_parts_errors(parts, "system_instruction"))
        # "Developer set system instruction(s). Currently, text only." (the v1beta GenerateContentRequest /
        # CachedContent reference, as in google_cloud_ai_generativelanguage_v1beta's docs; Vertex's Node SDK:
        # "only text should be used in parts of Content"; search tool, docs corpus). The wording is a paraphrase.
        for j, part in enumerate(parts):
            if isinstance(part, dict) and any(_norm(part).get(f) is not None for f in _DATA_FIELDS[1:]):
                errors.append(
                    f"* GenerateContentRequest.system_instruction.parts[{j}]: only text parts are "
                    "supported in a system instruction."
                )
    for t, tool in enumerate(body.get("tools") or ()):
        for d, decl in enumerate(_norm(tool).get("functionDeclarations") or ()):
            decl = _norm(decl)
            where = f"tools[{t}].function_declarations[{d}]"
            if not _FUNCTION_NAME.match(decl.get("name") or ""):
                errors.append(
                    f"* GenerateContentRequest.{where}.name: Invalid function name. Must start with a "
                    "letter or an underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, colons "
                    "and dashes, with a maximum length of 64."
                )
            if "parameters" in decl:
                errors.extend(schema_errors(decl["parameters"], f"{where}.parameters"))
            if "parameters" in decl and "parametersJsonSchema" in decl:
                errors.append(
                    f"* GenerateContentRequest.{where}: parameters and parameters_json_schema are mutually exclusive"
                )
    calling = _norm(_norm(body.get("toolConfig") or {}).get("functionCallingConfig") or {})
    if calling.get("allowedFunctionNames") and str(calling.get("mode", "")).upper() not in ("ANY", "VALIDATED"):
        errors.append(
            "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
            "allowed_function_names can only be set when mode is ANY or VALIDATED"
        )
    config = _norm(body.get("generationConfig") or {})
    if "responseSchema" in config:
        errors.extend(schema_errors(config["responseSchema"], "generation_config.response_schema"))
        if config.get("responseMimeType") not in ("application/json", "text/x.enum"):
            errors.append(
                "* GenerateContentRequest.generation_config.response_mime_type: response_schema needs "
                "response_mime_type application/json or text/x.enum"
            )
    if "responseSchema" in config and "responseJsonSchema" in config:
        errors.append(
            "* GenerateContentRequest.generation_config: response_schema and response_json_schema are "
            "mutually exclusive"
        )
    mime = config.get("responseMimeType")
    if mime is not None and mime not in _MIME_TYPES:
        errors.append(
            f"* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are "
            f"{', '.join(sorted(_MIME_TYPES))}, got {mime!r}"
        )
    count = config.get("candidateCount")
    if isinstance(count, int) and not 1 <= count <= 8:
        errors.append("* GenerateContentRequest.generation_config.candidate_count: must be between 1 and 8")
    temperature = config.get("temperature")
    if isinstance(temperature, (int, float)) and not 0 <= temperature <= 2:
        errors.append("* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0]")
    thinking = _norm(config.get("thinkingConfig") or {})
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        errors.append(
            "* GenerateContentRequest.generation_config.thinking_config: thinking_budget and "
            "thinking_level cannot both be set"
        )
    return errors


def embedding_errors(body: dict[str, Any], model: str, dimensions: int | None) -> list[str]:
    """Answer the violations Gemini reports for a well-formed ``BatchEmbedContentsRequest`` to ``model`` (whose
    vectors have ``dimensions`` values, if it is an embedding model)."""
    errors: list[str] = []
    body = _norm(body)
    name = f"models/{model}"
    if body.get("model") not in (None, name):
        errors.append(f"* BatchEmbedContentsRequest.model: does not match the model of the URL, {name}")
    requests = body.get("requests") or []
    if not requests:
        errors.append("* BatchEmbedContentsRequest.requests: requests is not specified")
    for i, request in enumerate(requests):
        request = _norm(request)
        where = f"* BatchEmbedContentsRequest.requests[{i}]"
        if request.get("model") != name:
            errors.append(
                f"{where}.model: The model in each of these requests must match the model specified "
                f"BatchEmbedContentsRequest.model ({name}), got {request.get('model')!r}"
            )
        content = _norm(request.get("content") or {})
        if "content" not in request:
            errors.append(f"{where}.content: content is not specified")
        parts = content.get("parts") or []
        if "content" in request and not parts:
            errors.append(f"{where}.content.parts: contents.parts must not be empty.")
        for j, part in enumerate(parts):
            part = _norm(part)
            if not isinstance(part.get("text"), str) or not part["text"]:
                errors.append(f"{where}.content.parts[{j}].text: only non-empty text parts can be embedded")
        size = request.get("outputDimensionality")
        if size is not None and dimensions is not None and not 1 <= int(size) <= dimensions:
            errors.append(f"{where}.output_dimensionality: must be between 1 and {dimensions}, got {size}")
    return errors


def embedding_values(text: str, dimensions: int) -> list[float]:
    """The deterministic vector of ``text``: values in [-1, 1) from SHA-256 of the text, each exactly a float32 (so
    a base64 float32 re-encoding decodes to the same numbers). A shorter ``dimensions`` is a prefix, as Google
    truncates ``outputDimensionality`` vectors from the end."""
    values: list[float] = []
    block = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(text.encode() + b"|gemini|" + block.to_bytes(4, "little")).digest()
        for offset in range(0, len(digest), 2):
            raw = int.from_bytes(digest[offset : offset + 2], "little")
            values.append(struct.unpack("<f", struct.pack("<f", raw / 32768.0 - 1.0))[0])
        block += 1
    return values[:dimensions]


def _parts_errors(parts: list[Any], where: str) -> list[str]:
    errors = []
    if not parts:
        errors.append(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    for j, part in enumerate(parts):
        part = _norm(part)
        present = [f for f in _DATA_FIELDS if part.get(f) not in (None, "")]
        if len(present) != 1:
            errors.append(
                f"* GenerateContentRequest.{where}.parts[{j}].data: required oneof field 'data' must have "
                "one initialized field"
            )
        blob = _norm(part.get("inlineData") or {})
        if part.get("inlineData") is not None and not blob.get("mimeType"):
            errors.append(f"* GenerateContentRequest.{where}.parts[{j}].inline_data.mime_type: missing field.")
        for key in ("functionCall", "functionResponse"):
            if part.get(key) is not None and not _norm(part[key]).get("name"):
                errors.append(f"* GenerateContentRequest.{where}.parts[{j}].{_snake(key)}.name: Name cannot be empty.")
    return errors


# --- scripted replies -----------------------------------------------------------------------------------------

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    # A credential that is not an API key (an OAuth token, say, sent as a bearer) is a 401, verbatim in public
    # reports: Xposed-Modules-Repo/com.niki914.zafiro#9, musistudio/claude-code-router#1011, xalgorix/xalgorix#2.
    401: (
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
    ),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: (
        "NOT_FOUND",
        "models/{model} is not found for API version v1beta, or is not supported for generateContent. "
        "Call ListModels to see the list of available models and their supported methods.",
    ),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For "
        "more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    ),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}


def error_body(
    status: int,
    message: str | None = None,
    google_status: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Google's error object for ``status``, with its usual message."""
    default_status, default_message = _ERRORS.get(status, ("UNKNOWN", "Unknown error."))
    error: dict[str, Any] = {
        "code": status,
        "message": message or default_message,
        "status": google_status or default_status,
    }
    if details is None and status == 429:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count",
                        "quotaId": "GenerateContentPaidTierInputTokensPerModelPerMinute",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"},
        ]
    if details:
        error["details"] = details
    return {"error": error}


@dataclass
class Reply:
    """How the fake answers one valid request. Defaults: a short text answer that finishes with STOP.

    ``text`` pieces are streamed one chunk each; ``thoughts`` come first (as ``thought: true`` parts, only when
    the request asked for ``includeThoughts``); ``calls`` are ``(name, args)`` function calls in one chunk (the
    first carries ``signature`` as its ``thoughtSignature``); ``finish`` is the last chunk's ``finishReason``
    (``None``: the stream ends without one); ``block`` answers a ``promptFeedback.blockReason`` and no
    candidates; ``status`` >= 400 answers ``error`` (default: Google's body for the status); ``cut_after``
    closes the connection abruptly after that many chunks; ``usage`` overrides ``usageMetadata``."""

    text: str | list[str] = "Hello from Gemini."
    thoughts: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    signature: str | None = None
    finish: str | None = "STOP"
    block: str | None = None
    usage: dict[str, int] | None = None
    model_version: str | None = None
    response_id: str = "fakeResp0123456789"
    status: int = 200
    error: dict[str, Any] | None = None
    cut_after: int | None = None
    logprobs: bool = False


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class _Abort(Exception):
    """Raised inside the app to make the server drop the connection mid-body."""


class FakeGemini:
    """The fake API. ``requests`` holds what it received; ``script`` queues replies (FIFO, then the default)."""

    def __init__(
        self, *, api_key: str = API_KEY, models: frozenset[str] = MODELS, embedding_models: dict[str, int] | None = None
    ) -> None:
        self.api_key = api_key
        self.models = models
        self.embedding_models = dict(EMBEDDING_MODELS if embedding_models is None else embedding_models)
        self.requests: list[Recorded] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._replies.clear()
            self.requests.clear()

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def _next(self) -> Reply:
        with self._lock:
            return self._replies.popleft() if self._replies else Reply()

    # --- ASGI --------------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode())
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body
        self.requests.append(Recorded(scope["method"], scope["path"], query, headers, parsed))
        try:
            await self._handle(scope["method"], scope["path"], query, headers, body, send)
        except _Abort:
            raise RuntimeError("fake Gemini: connection cut on purpose") from None

    async def _handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes, send: Any
    ) -> None:
        match = re.fullmatch(
            r"/v1beta/models/([^/:]+):(generateContent|streamGenerateContent|batchEmbedContents)", path
        )
        stream = bool(match) and match.group(2) == "streamGenerateContent"
        sse = stream and query.get("alt") == ["sse"]
        wrap = stream and not sse  # the JSON-array stream endpoint wraps errors in a list too

        async def fail(status: int, error: dict[str, Any]) -> None:
            await _json(send, status, [error] if wrap else error)

        if not match:
            return await fail(404, error_body(404, f"Method not found: {path}"))
        if method != "POST":
            return await fail(405, error_body(400, f"{method} is not allowed", "INVALID_ARGUMENT"))
        key = headers.get("x-goog-api-key") or (query.get("key") or [None])[0]
        if not key:
            return await fail(
                403,
                error_body(
                    403,
                    "Method doesn't allow unregistered callers (callers without "
                    "established identity). Please use API Key or other form of API "
                    "consumer identity to call this API.",
                ),
            )
        if key != self.api_key:
            return await fail(
                400,
                error_body(
                    400,
                    "API key not valid. Please pass a valid API key.",
                    details=[
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com",
                            "metadata": {"service": "generativelanguage.googleapis.com"},
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                            "locale": "en-US",
                            "message": "API key not valid. Please pass a valid API key.",
                        },
                    ],
                ),
            )
        try:
            request = json.loads(body)
        except ValueError:
            return await fail(400, error_body(400, "Invalid JSON payload received. Unexpected token."))
        if match.group(2) == "batchEmbedContents":
            return await self._embed(match.group(1), request, send)
        errors = shape_errors(request)
        if not errors:
            errors = semantic_errors(request)
        if errors:
            violations = [{"description": e} for e in errors]
            return await fail(
                400,
                error_body(
                    400,
                    "\n".join(errors),
                    details=[{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}],
                ),
            )
        model = match.group(1)
        if model not in self.models:
            return await fail(404, error_body(404, _ERRORS[404][1].format(model=model)))
        reply = self._next()
        if reply.status >= 400:
            return await fail(reply.status, reply.error or error_body(reply.status))
        chunks = _chunks(reply, model, _norm(request))
        if not stream:
            return await _json(send, 200, _merged(chunks))
        if not sse:
            return await _json(send, 200, chunks)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"x-fake", b"gemini")],
            }
        )
        for i, chunk in enumerate(chunks):
            if reply.cut_after is not None and i >= reply.cut_after:
                raise _Abort()
            await send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n",
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _embed(self, model: str, request: Any, send: Any) -> None:
        """``:batchEmbedContents``: validate like Google, answer one vector per request."""
        dimensions = self.embedding_models.get(model)
        errors = shape_errors(request, "BatchEmbedContentsRequest")
        if not errors:
            errors = embedding_errors(request, model, dimensions)
        if errors:
            violations = [{"description": e} for e in errors]
            return await _json(
                send,
                400,
                error_body(
                    400,
                    "\n".join(errors),
                    details=[{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}],
                ),
            )
        if dimensions is None:
            message = _ERRORS[404][1].format(model=model).replace("generateContent", "batchEmbedContents")
            return await _json(send, 404, error_body(404, message))
        reply = self._next()
        if reply.status >= 400:
            return await _json(send, reply.status, reply.error or error_body(reply.status))
        embeddings = []
        for item in _norm(request)["requests"]:
            item = _norm(item)
            text = "".join(_norm(part)["text"] for part in _norm(item["content"])["parts"])
            size = int(item.get("outputDimensionality") or dimensions)
            embeddings.append({"values": embedding_values(text, size)})
        answer: dict[str, Any] = {"embeddings": embeddings}
        if reply.usage is not None:
            answer["usageMetadata"] = reply.usage
        await _json(send, 200, answer)


async def _json(send: Any, status: int, value: Any) -> None:
    body = json.dumps(value, indent=2).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json; charset=UTF-8")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _chunks(reply: Reply, model: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream of GenerateContentResponse chunks for ``reply``; ``usageMetadata`` runs on every chunk."""
    config = _norm(request.get("generationConfig") or {})
    include_thoughts = bool(_norm(config.get("thinkingConfig") or {}).get("includeThoughts"))
    candidates = int(config.get("candidateCount") or 1)
    prompt = sum(_words(json.dumps(c)) for c in request.get("contents", []))
    meta = {"modelVersion": reply.model_version or model, "responseId": reply.response_id}
    if reply.block:
        return [
            {
                "promptFeedback": {"blockReason": reply.block},
                "usageMetadata": reply.usage or {"promptTokenCount": prompt, "totalTokenCount": prompt},
                **meta,
            }
        ]
    pieces = [reply.text] if isinstance(reply.text, str) else list(reply.text)
    steps: list[list[dict[str, Any]]] = []
    thoughts = sum(_words(t) for t in reply.thoughts)
    if include_thoughts:
        steps.extend([{"text": t, "thought": True}] for t in reply.thoughts)
    steps.extend([{"text": p}] for p in pieces if p)
    if reply.calls:
        calls = [{"functionCall": {"name": name, "args": args}} for name, args in reply.calls]
        if reply.signature:
            calls[0]["thoughtSignature"] = reply.signature
        steps.append(calls)
    if not steps:
        steps.append([])
    chunks = []
    produced = 0
    for i, parts in enumerate(steps):
        produced += sum(_words(p.get("text", "")) for p in parts if not p.get("thought"))
        last = i == len(steps) - 1
        usage = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": produced,
            "totalTokenCount": prompt + produced + thoughts,
        }
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        if last and reply.usage is not None:
            usage = reply.usage
        cands = []
        for index in range(candidates):
            cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": index}
            if last and reply.finish:
                cand["finishReason"] = reply.finish
            if reply.logprobs and parts and "text" in parts[0]:
                tokens = parts[0]["text"].split()
                cand["logprobsResult"] = {
                    "topCandidates": [{"candidates": [{"token": t, "logProbability": -0.1}]} for t in tokens],
                    "chosenCandidates": [{"token": t, "logProbability": -0.1} for t in tokens],
                }
            cands.append(cand)
        chunks.append({"candidates": cands, "usageMetadata": usage, **meta})
    return chunks


def _merged(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A non-streamed answer: the chunks' parts joined per candidate (adjacent texts of one kind merged)."""
    last = chunks[-1]
    if "candidates" not in last:
        return last
    merged = []
    for index, cand in enumerate(last["candidates"]):
        parts: list[dict[str, Any]] = []
        chosen: list[Any] = []
        top: list[Any] = []
        for chunk in chunks:
            for part in chunk["candidates"][index]["content"]["parts"]:
                if (
                    parts
                    and "text" in part
                    and "text" in parts[-1]
                    and bool(part.get("thought")) == bool(parts[-1].get("thought"))
                ):
                    parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
                else:
                    parts.append(dict(part))
            result = chunk["candidates"][index].get("logprobsResult")
            if result:
                chosen += result["chosenCandidates"]
                top += result["topCandidates"]
        out = {**cand, "content": {"parts": parts, "role": "model"}}
        if chosen:
            out["logprobsResult"] = {"topCandidates": top, "chosenCandidates": chosen}
        merged.append(out)
    return {**last, "candidates": merged}
