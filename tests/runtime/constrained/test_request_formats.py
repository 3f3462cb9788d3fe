"""OpenAI response_format maps onto sampling_params constraints."""

from __future__ import annotations

import re

import pytest
from loomlm.runtime import SamplingParams
from loomlm.runtime.constrained.request_formats import response_format_params


def test_response_format_maps_to_constraint_keys():
    assert response_format_params({"type": "text"}) == {}
    assert response_format_params({"type": "json_object"}) == {"json_schema": {"type": "object"}}
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    got = response_format_params(
        {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    )
    assert got == {"json_schema": schema}
    SamplingParams.from_dict(got)  # a valid sampling_params fragment


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"schema": []}},
            "response_format.json_schema.schema",
        ),
        ("json", "response_format"),
    ],
)
def test_bad_response_formats_name_the_field(bad, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        response_format_params(bad)
