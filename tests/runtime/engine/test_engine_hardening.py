"""The Python API under hostile input: every bad field is a ValueError naming it, one
failing request never takes its batch or the engine with it, a dead engine raises instead
of hanging, and the queue is bounded."""

from __future__ import annotations

import math
import time

import pytest
from loomlm.runtime import (
    Engine,
    EngineDeadError,
    EngineOverloadedError,
    GenerateRequest,
    RequestLimits,
    SamplingParams,
)

from ..helpers import assert_pool_whole

PROMPT = "Once upon a time"
GREEDY = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine():
    with Engine() as e:
        yield e


BAD_PARAMS = [
    ({"stop": 5}, "stop"),
    ({"stop": [["a"]]}, "stop[0]"),
    ({"stop_token_ids": 5}, "stop_token_ids"),
    ({"stop_token_ids": [1, "2"]}, "stop_token_ids[1]"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_p": -math.inf}, "top_p"),
    ({"frequency_penalty": 10**400}, "frequency_penalty"),
    ({"skip_special_tokens": 0}, "skip_special_tokens"),
    ({"skip_special_tokens": None}, "skip_special_tokens"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"no_stop_trim": 1}, "no_stop_trim"),
    ({"seed": 1 << 70}, "seed"),
    ({"n": 129}, "n"),
    ({"stop": [f"s{i}" for i in range(129)]}, "stop"),
    ({"stop": ["x" * 20_000]}, "stop"),
    ({"stop_token_ids": list(range(1025))}, "stop_token_ids"),
    ({"json_schema": {"$ref": "http://127.0.0.1:9/x"}}, "$ref"),
    ({"json_schema": "[" * 100_000}, "json_schema"),
]


@pytest.mark.parametrize("params,field", BAD_PARAMS, ids=[f for _, f in BAD_PARAMS])
def test_a_bad_field_is_a_value_error_naming_it(engine, params, field):
    with pytest.raises(ValueError) as info:
        engine.generate(PROMPT, {"max_new_tokens": 4, **params})
    assert field in str(info.value)
    assert len(str(info.value)) < 400  # the value is shown cut short, never whole


BAD_CALLS = [
    ({"rid": 5}, "rid"),
    ({"rid": ["a", "a"]}, "rid"),
    ({"top_logprobs_num": 600, "return_logprob": True}, "top_logprobs_num"),  # vocab is 512
    ({"top_logprobs_num": 21, "return_logprob": True}, "top_logprobs_num"),
    ({"return_logprob": "yes"}, "return_logprob"),
    ({"logprob_start_len": 2.5, "return_logprob": True}, "logprob_start_len"),
]


@pytest.mark.parametrize("kwargs,field", BAD_CALLS, ids=[f for _, f in BAD_CALLS])
def test_bad_call_arguments_are_value_errors(engine, kwargs, field):
    with pytest.raises(ValueError) as info:
        engine.generate(PROMPT, {"max_new_tokens": 4}, **kwargs)
    assert field in str(info.value)


def test_a_deeply_nested_value_is_refused_not_a_recursion_error(engine):
    nested: list = ["stop"]
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=nested)
    schema: dict = {"type": "string"}
    for _ in range(2000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(ValueError, match="json_schema: nested"):
        engine.generate(PROMPT, {"json_schema": schema})
    shallow: dict = {"type": "string"}
    for _ in range(80):  # past max_schema_depth (64), under the hard cap
        shallow = {"type": "array", "items": shallow}
    with pytest.raises(ValueError, match="max_schema_depth"):
        engine.generate(PROMPT, {"json_schema": shallow})


def poisoned(engine, method: str, marker: str = "poison"):
    """Make `engine.<method>` raise for requests whose id contains `marker`."""
    target = engine.runner if method == "forward" else engine.outputs
    original = getattr(target, method)

    def hook(*args, **kwargs):
        items = args[0] if method == "forward" else [args[0]]
        if any(marker in item.req.rid for item in items):
            raise RuntimeError("injected fault")
        return original(*args, **kwargs)

    return target, method, hook, original


@pytest.mark.parametrize("method", ["forward", "apply"])
def test_a_request_that_fails_fails_alone(engine, method):
    """A fault in the batched forward (or in applying one request's results) aborts that
    request with an internal error; the requests batched with it finish exactly as alone."""
    prompts = [PROMPT, "The dog", "Lily"]
    alone = [engine.generate(p, GREEDY) for p in prompts]
    target, name, hook, original = poisoned(engine, method)
    setattr(target, name, hook)
    try:
        outs = engine.generate(
            [*prompts, "One day"], GREEDY, rid=["ok-0", "ok-1", "ok-2", "poison-3"]
        )
    finally:
        setattr(target, name, original)
    assert [o.output_ids for o in outs[:3]] == [a.output_ids for a in alone]
    failed = outs[3].finish_reason
    assert failed.type == "abort" and failed.status_code == 500
    assert "injected fault" in failed.message
    assert engine.alive
    assert_pool_whole(engine)


def test_a_detokenizer_that_raises_fails_its_request_alone(engine, monkeypatch):
    import loomlm.runtime.engine.engine as engine_module

    class Broken:
        def decode(self, *args, **kwargs):
            raise TypeError("injected decode fault")

    make_request = engine_module.make_request

    def broken_detokenizer(spec, *args, **kwargs):
        req = make_request(spec, *args, **kwargs)
        if spec.rid.startswith("poison"):
            req.detokenizer.tokenizer = Broken()
        return req

    monkeypatch.setattr(engine_module, "make_request", broken_detokenizer)
    alone = engine.generate(PROMPT, GREEDY)
    outs = engine.generate(
        ["The dog", PROMPT], {**GREEDY, "stop": ["zz"]}, rid=["poison-1", "ok-1"]
    )
    assert outs[0].finish_reason.type == "abort" and outs[0].finish_reason.status_code == 500
    assert "injected decode fault" in outs[0].finish_reason.message
    assert outs[1].output_ids == alone.output_ids
    assert_pool_whole(engine)


def test_a_dead_engine_raises_instead_of_hanging():
    engine = Engine()
    try:
        stream = engine.stream(PROMPT, {"max_new_tokens": 400, "ignore_eos": True})
        next(stream)

        def die(*args, **kwargs):
            raise RuntimeError("injected engine fault")

        engine.scheduler.schedule = die  # outside any one request: the thread dies
        with pytest.raises(EngineDeadError, match="injected engine fault"):
            list(stream)  # in flight: raises, promptly
        assert not engine.alive and "injected" in str(engine.error)
        with pytest.raises(EngineDeadError):
            engine.generate(PROMPT, {"max_new_tokens": 2})  # submitted after: at once
        with pytest.raises(EngineDeadError):
            engine.stats()
    finally:
        engine.shutdown()


def test_the_queue_is_bounded_and_refuses_a_call_whole():
    with Engine(limits=RequestLimits(max_queued_requests=6)) as engine:
        with pytest.raises(ValueError, match="max_queued_requests"):
            engine.generate(PROMPT, {"n": 7, "max_new_tokens": 2})
        long = {"max_new_tokens": 400, "ignore_eos": True}
        streams = [engine.stream(PROMPT, long) for _ in range(4)]
        for s in streams:
            next(s)
        with pytest.raises(EngineOverloadedError, match="max_queued_requests"):
            engine.generate([PROMPT, "Lily", "Tom"], {"max_new_tokens": 2})
        assert engine.stats()["num_in_flight"] == 4  # nothing of the refused call queued
        assert len(engine.generate([PROMPT, "Lily"], {"max_new_tokens": 2})) == 2
        for s in streams:
            s.close()
        assert_pool_whole(engine)


def test_aborting_thirty_thousand_waiting_requests_is_quick():
    """Aborts find their request by id: 30,000 of them one by one used to scan the queue
    each (minutes of engine time), blocking every other request meanwhile."""
    count = 30_000
    with Engine(limits=RequestLimits(max_queued_requests=count + 10)) as engine:
        specs, _ = engine.prepare(
            GenerateRequest(input_ids=[[1, 5, 9]] * count, sampling_params={"max_new_tokens": 1})
        )
        finished = []
        engine.submit(specs, False, finished.append)
        for spec in specs:
            engine.abort(spec.rid)
        start = time.perf_counter()
        canary = engine.generate(PROMPT, {"max_new_tokens": 4, "temperature": 0})
        assert canary.completion_tokens == 4
        assert time.perf_counter() - start < 20, "the engine stalled on the aborts"
        deadline = time.time() + 20
        while len(finished) < count and time.time() < deadline:
            time.sleep(0.05)
        assert len(finished) == count
        assert engine.stats()["num_in_flight"] == 0
        assert_pool_whole(engine)
