"""The language's expressions: gen(dtype=...) regexes and how sampling parameters merge."""

from __future__ import annotations

import re

import loomlm
import pytest
from loomlm.ir import GenParams, dtype_regex


@pytest.mark.parametrize(
    "dtype, good, bad",
    [(int, "-42", "4.2"), (float, "3.25", "3."), (bool, "True", "true"), (str, '"a b 1"', "a")],
)
def test_dtype_regexes(dtype, good, bad):
    rx = dtype_regex(dtype)
    assert re.fullmatch(rx, good) and not re.fullmatch(rx, bad)
    assert dtype_regex(dtype.__name__) == rx
    with pytest.raises(ValueError, match="dtype"):
        dtype_regex(list)


def test_gen_parameters_override_run_defaults_and_dtype_becomes_a_regex():
    defaults = GenParams.run_defaults(max_new_tokens=64, temperature=0.5, stop=["\n"])
    gen = loomlm.gen("x", max_tokens=8, dtype=int)
    request = defaults.overridden_by(gen.params).request("text", extra_stop=("<|end|>",))
    params = request.sampling_params
    assert params.max_new_tokens == 8 and params.temperature == 0.5
    assert params.regex == dtype_regex(int)
    assert params.stop == ["\n", " ", "<|end|>"]
    assert not request.return_logprob and request.top_logprobs_num is None
    doc = loomlm.gen("y", json_schema={"type": "object"}).params.request("text").sampling_params
    assert doc.json_schema == '{"type": "object"}' and doc.regex is None
    with pytest.raises(ValueError, match="at most one"):
        loomlm.gen("z", regex="a", json_schema={})
