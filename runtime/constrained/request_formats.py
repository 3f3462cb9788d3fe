"""OpenAI's `response_format` (for the server's /v1 endpoints) as `sampling_params` keys.

(The language's `gen(dtype=...)` regexes live with the language, in `loomlm.ir`.)
"""

from __future__ import annotations

from typing import Any

from ..utils.checks import shown


def response_format_params(response_format: Any) -> dict[str, Any]:
    """OpenAI `response_format` -> sampling_params constraint keys ({} for plain text)."""
    if not isinstance(response_format, dict):
        raise ValueError(f"response_format: expected an object, got {shown(response_format)}")
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
                f"response_format.json_schema.schema: expected an object, got {shown(schema)}"
            )
        return {"json_schema": schema}
    raise ValueError(
        f"response_format.type: {shown(kind)}; expected 'text', 'json_object' or 'json_schema'"
    )
