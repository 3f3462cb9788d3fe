"""GenerateRequest: the one description of a call, as the backends send it over HTTP."""

from __future__ import annotations

from loomlm.runtime import GenerateRequest, SamplingParams
from loomlm.runtime.server.native_request import parse_generate


def test_the_http_body_reads_back_as_the_same_request():
    params = SamplingParams(max_new_tokens=7, temperature=0, stop=["\n"], regex="[0-9]+")
    sent = GenerateRequest(
        text="Once", sampling_params=params, return_logprob=True, top_logprobs_num=2, rid="r1"
    )
    body = sent.to_json()
    # parameters left at their defaults are not sent: an SGLang server applies the same ones
    assert body["sampling_params"] == {
        "max_new_tokens": 7,
        "temperature": 0,
        "stop": ["\n"],
        "regex": "[0-9]+",
    }
    got = parse_generate(body)
    assert SamplingParams.from_dict(got.sampling_params) == params
    assert (got.text, got.return_logprob, got.top_logprobs_num, got.rid) == ("Once", True, 2, "r1")
    assert got.prompt_field == "text" and not got.stream


def test_the_defaults_table_is_the_dataclass_defaults():
    defaults = SamplingParams.defaults()
    assert SamplingParams(**defaults) == SamplingParams()
    assert SamplingParams().to_dict() == {}
    assert defaults["max_new_tokens"] == 128 and defaults["stop"] == []
