from __future__ import annotations

import pytest
from loomlm.runtime import SamplingParams


def test_defaults_follow_sglang():
    p = SamplingParams()
    assert (p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == (128, 1.0, 1.0, -1, 0.0)
    assert not p.is_greedy and SamplingParams(temperature=0).is_greedy


def test_stop_accepts_a_string():
    assert SamplingParams(stop="\n").stop == ["\n"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"n": 0}, "n"),
        ({"seed": -1}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-5]}, "stop_token_ids"),
        ({"min_new_tokens": 5, "max_new_tokens": 2}, "min_new_tokens"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        SamplingParams(**kwargs)


def test_from_dict_rejects_unknown_keys_and_maps_sglang_names():
    with pytest.raises(ValueError, match="sampling_params: unknown key.*max_tokens"):
        SamplingParams.from_dict({"max_tokens": 3})
    assert SamplingParams.from_dict({"sampling_seed": 5}).seed == 5
