"""JSON Schema -> the OpenAPI subset Gemini's ``Schema`` accepts, for function parameters and response schemas.

``convert_schema`` translates what has a Gemini form (``$ref`` inlined, nullable types, unions as ``anyOf``,
``const`` as a one-value enum, ...) and drops what Gemini would refuse, listing each dropped keyword with its
path so the caller can put it in the decision trace. Pure; used by the Gemini adapter only. Sources: see
``mux.providers.gemini``.
"""

from __future__ import annotations

from typing import Any

# The fields of v1beta ``Schema`` (generativelanguage protos ISchema). Anything else is a 400 "Unknown name".
SCHEMA_FIELDS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)
_TYPES = {
    "string": "STRING",
    "number": "NUMBER",
    "integer": "INTEGER",
    "boolean": "BOOLEAN",
    "array": "ARRAY",
    "object": "OBJECT",
}
# Formats the Developer API accepts, by type; any other format fails the request.
SCHEMA_FORMATS = {
    "STRING": frozenset({"enum", "date-time"}),
    "INTEGER": frozenset({"int32", "int64"}),
    "NUMBER": frozenset({"float", "double"}),
}
_TEXT_KEYS = ("title", "description", "pattern")
_NUMBER_KEYS = ("minimum", "maximum")
_COUNT_KEYS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_ANY_KEYS = ("default", "example")
_DEFS_KEYS = ("$defs", "definitions")
_KEYWORDS_BY_TYPE = {
    "STRING": ("enum", "format", "minLength", "maxLength", "pattern"),
    "NUMBER": ("format", "minimum", "maximum"),
    "INTEGER": ("format", "minimum", "maximum"),
    "ARRAY": ("items", "minItems", "maxItems"),
    "OBJECT": ("properties", "required", "minProperties", "maxProperties", "propertyOrdering"),
}
_MAX_REF_DEPTH = 32


def convert_schema(schema: Any, path: str = "$") -> tuple[dict[str, Any], list[str]]:
    """Answer ``schema`` (JSON Schema) as a Gemini ``Schema`` and what had to be dropped (``"<path>: <keyword>"``).

    Rules: ``$ref`` is inlined from ``$defs``/``definitions`` (a recursive one becomes a bare OBJECT);
    ``type: [X, "null"]``, ``{"type": "null"}`` branches and ``null`` in ``enum`` become ``nullable``; several
    types become ``anyOf``; ``oneOf`` becomes ``anyOf``; a single-branch ``anyOf`` is merged into its parent;
    ``allOf`` is merged; a string ``const`` becomes a one-value ``enum``; type names are upper-cased; formats
    Gemini does not accept are dropped; non-string enums are dropped; ``required`` keeps only declared
    properties; an array without ``items`` gets string items. Everything outside ``SCHEMA_FIELDS``
    (``additionalProperties``, ``$schema``, ``strict``, ``examples``, ``not``, ...) is dropped."""
    converter = _SchemaConverter(schema)
    return converter.convert(schema, path, ()), converter.dropped


class _SchemaConverter:
    __slots__ = ("root", "dropped")

    def __init__(self, root: Any) -> None:
        self.root = root
        self.dropped: list[str] = []

    def drop(self, path: str, what: str) -> None:
        self.dropped.append(f"{path}: {what}")

    def resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return None
        node = self.root
        for token in ref[1:].split("/")[1:] if ref != "#" else []:
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return None
        return node

    def convert(self, node: Any, path: str, refs: tuple[str, ...]) -> dict[str, Any]:
        if node is True or node is None:
            return {}
        if not isinstance(node, dict):
            self.drop(path, "schema (not an object)")
            return {}
        if "$ref" in node:
            ref = node["$ref"]
            target = self.resolve(ref)
            rest = {k: v for k, v in node.items() if k != "$ref"}
            if target is None:
                self.drop(path, f"$ref {ref!r} (unresolvable)")
                base: dict[str, Any] = {}
            elif ref in refs or len(refs) >= _MAX_REF_DEPTH:
                self.drop(path, f"$ref {ref!r} (recursive)")
                base = {"type": "OBJECT"} if isinstance(target, dict) and _looks_object(target) else {}
            else:
                base = self.convert(target, path, refs + (ref,))
            return _finish(_merge(base, self.convert(rest, path, refs)) if rest else base)

        out: dict[str, Any] = {}
        nullable = node.get("nullable") is True
        if "nullable" in node and not isinstance(node["nullable"], bool):
            self.drop(path, "nullable")

        # allOf: merge the branches; the node's own keywords win.
        if "allOf" in node:
            branches = node["allOf"] if isinstance(node["allOf"], list) else []
            if not branches:
                self.drop(path, "allOf")
            for i, sub in enumerate(branches):
                out = _merge(out, self.convert(sub, f"{path}.allOf[{i}]", refs))

        # type, possibly a list with "null"
        names: list[str] = []
        raw_type = node.get("type")
        for t in raw_type if isinstance(raw_type, list) else ([raw_type] if raw_type is not None else []):
            if t == "null":
                nullable = True
            elif isinstance(t, str) and t.lower() in _TYPES:
                name = _TYPES[t.lower()]
                if name not in names:
                    names.append(name)
            else:
                self.drop(path, f"type {t!r}")

        # anyOf / oneOf; {"type": "null"} branches become nullable
        variants: list[dict[str, Any]] = [{"type": n} for n in names] if len(names) > 1 else []
        for key in ("anyOf", "oneOf"):
            if key not in node:
                continue
            subs = node[key] if isinstance(node[key], list) else []
            if not subs:
                self.drop(path, key)
            for i, sub in enumerate(subs):
                if isinstance(sub, dict) and sub.get("type") == "null" and set(sub) <= {"type", "description", "title"}:
                    nullable = True
                    continue
                variants.append(self.convert(sub, f"{path}.{key}[{i}]", refs))
        typed = variants[: len(names)] if len(names) > 1 else []  # one branch per type of a type list
        if len(names) == 1:
            out["type"] = names[0]
        if len(variants) == 1:
            out = _merge(out, variants[0])
        elif variants:
            out["anyOf"] = variants

        # object keywords
        if "properties" in node:
            props = node["properties"]
            if isinstance(props, dict):
                converted = {str(k): self.convert(v, f"{path}.properties.{k}", refs) for k, v in props.items()}
                if converted:
                    out["properties"] = {**out.get("properties", {}), **converted}
            else:
                self.drop(path, "properties")
        if "required" in node:
            required = node["required"]
            if isinstance(required, list) and all(isinstance(r, str) for r in required):
                known = out.get("properties", {})
                kept = [r for r in required if r in known]
                if len(kept) < len(required):
                    self.drop(path, "required (names not in properties)")
                if kept:
                    out["required"] = list(dict.fromkeys(out.get("required", []) + kept))
            else:
                self.drop(path, "required")

        # array keywords
        if "items" in node:
            items = node["items"]
            if isinstance(items, list):
                self.drop(path, "items (tuple form)")
                items = items[0] if items else True
            if items is False:
                self.drop(path, "items (false)")
            else:
                out["items"] = self.convert(items, f"{path}.items", refs)

        # enum / const
        if "enum" in node:
            values = node["enum"]
            if isinstance(values, list) and None in values:
                nullable = True
                values = [v for v in values if v is not None]
            if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
                out["enum"] = values
                if not typed:
                    out.setdefault("type", "STRING")
            elif values != []:
                self.drop(path, "enum (non-string values)")
        if "const" in node:
            value = node["const"]
            if isinstance(value, str):
                out["enum"] = [value]
                if not typed:
                    out.setdefault("type", "STRING")
            elif value is None:
                nullable = True
            else:
                self.drop(path, "const (non-string)")

        # annotations and bounds, kept when well-typed
        for key in _TEXT_KEYS:
            if key in node:
                if isinstance(node[key], str):
                    out[key] = node[key]
                else:
                    self.drop(path, key)
        for key in _NUMBER_KEYS:
            if key in node:
                if isinstance(node[key], (int, float)) and not isinstance(node[key], bool):
                    out[key] = node[key]
                else:
                    self.drop(path, key)
        for key in _COUNT_KEYS:
            if key in node:
                if isinstance(node[key], int) and not isinstance(node[key], bool) and node[key] >= 0:
                    out[key] = node[key]
                else:
                    self.drop(path, key)
        for key in _ANY_KEYS:
            if key in node:
                out[key] = node[key]
        if "propertyOrdering" in node:
            order = node["propertyOrdering"]
            if isinstance(order, list) and all(isinstance(o, str) for o in order):
                out["propertyOrdering"] = order
            else:
                self.drop(path, "propertyOrdering")

        if "format" in node:
            fmt = node["format"]
            types = [b["type"] for b in typed] or [out.get("type", "")]
            if isinstance(fmt, str) and any(fmt in SCHEMA_FORMATS.get(t, ()) for t in types):
                out["format"] = fmt
            else:
                self.drop(path, f"format {fmt!r}")
        for branch in typed:  # a type list: each type's keywords go to that type's branch
            for key in _KEYWORDS_BY_TYPE.get(branch["type"], ()):
                if key in out:
                    branch[key] = out[key]
            _finish(branch)
        for key in {k for b in typed for k in _KEYWORDS_BY_TYPE.get(b["type"], ())}:
            out.pop(key, None)

        handled = SCHEMA_FIELDS | {"allOf", "oneOf", "const", *_DEFS_KEYS}
        for key in node:
            if key not in handled:
                self.drop(path, key)

        if nullable:
            out["nullable"] = True
        if out.get("type") == "ARRAY" and "items" not in out:
            self.drop(path, "items (missing; string items assumed)")
            out["items"] = {"type": "STRING"}
        return _finish(out)


def _looks_object(node: dict[str, Any]) -> bool:
    return node.get("type") == "object" or "properties" in node


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Merge two converted schemas; ``b`` wins, properties and required are united."""
    out = dict(a)
    for key, value in b.items():
        if key == "properties" and key in out:
            out[key] = {**out[key], **value}
        elif key == "required" and key in out:
            out[key] = list(dict.fromkeys(out[key] + value))
        else:
            out[key] = value
    return out


def _finish(out: dict[str, Any]) -> dict[str, Any]:
    """Keep a converted schema consistent after merges: ``required`` only names declared properties, formats
    match the type, arrays have items."""
    if "required" in out:
        known = out.get("properties", {})
        kept = [r for r in out["required"] if r in known]
        if kept:
            out["required"] = kept
        else:
            del out["required"]
    if "format" in out and out["format"] not in SCHEMA_FORMATS.get(out.get("type", ""), ()):
        del out["format"]
    if out.get("type") == "ARRAY" and "items" not in out:
        out["items"] = {"type": "STRING"}
    return out
