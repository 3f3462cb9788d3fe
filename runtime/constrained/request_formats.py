"""How the other front ends spell constraints, turned into `sampling_params` keys.

OpenAI's `response_format` (for the server's /v1 endpoints) and SGLang's `gen(dtype=...)`
(for the language) both end up as a `json_schema` or a `regex`.
"""

from __future__ import annotations

from typing import Any

# SGLang's frontend regexes for gen(dtype=...); int and float also stop at a space/newline.
DTYPE_REGEX = {
    "int": r"[-+]?[0-9]+",
    "float": r"[-+]?[0-9]*\.?[0-9]+",
    "bool": r"(True|False)",
    "str": r'"[\w\d\s]*"',
}


def dtype_regex(dtype: Any) -> str:
    """The regex a `gen(dtype=...)` compiles to: int, float, bool or str (the type or its name)."""
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", None)
    if name not in DTYPE_REGEX:
        raise ValueError(f"dtype: {dtype!r}; expected one of int, float, bool, str")
    return DTYPE_REGEX[name]


def response_format_params(response_format: Any) -> dict[str, Any]:
    """OpenAI `response_format` -> sampling_params constraint keys ({} for plain text)."""
    if not isinstance(response_format, dict):
        raise ValueError(f"response_format: expected an object, got {response_format!r}")
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_schema": {"type": "object"}}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ValueError("response_format.json_schema: expected an object with a `schema`")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise ValueError(
                f"response_format.json_schema.schema: expected an object, got {schema!r}"
            )
        return {"json_schema": schema}
    raise ValueError(
        f"response_format.type: {kind!r}; expected 'text', 'json_object' or 'json_schema'"
    )
