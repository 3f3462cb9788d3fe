"""EngineConfig: one declaration per option, from which Engine's keywords, `loomlm serve`'s
flags and /server_info's report all come."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from loomlm.runtime import Engine, EngineConfig, RequestLimits
from loomlm.runtime.scheduler.config import SchedulerConfig
from loomlm.runtime.server.args import ServerArgs, add_arguments, from_namespace
from loomlm.runtime.utils.options import leaves


def parse(argv: list[str]) -> ServerArgs:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_namespace(parser.parse_args(argv))


def test_options_by_name_or_by_group_land_in_their_group():
    config = EngineConfig.from_options(
        None, schedule_policy="fcfs", max_n=4, grammar_cache_bytes=1 << 20, seed=7
    )
    assert config.scheduler.schedule_policy == "fcfs"
    assert config.limits.max_n == 4
    assert config.constraints.grammar_cache_bytes == 1 << 20
    assert config.seed == 7
    assert config.scheduler.max_running_requests == SchedulerConfig().max_running_requests
    grouped = EngineConfig.from_options(
        "some/dir", limits=RequestLimits(max_n=3, max_stop_strings=5), max_n=9
    )
    # a single option wins over the group it belongs to, the group's other values stay
    assert grouped.limits.max_n == 9 and grouped.limits.max_stop_strings == 5
    assert grouped.model == "some/dir"


def test_an_unknown_option_names_the_nearest_valid_one():
    with pytest.raises(ValueError, match="'schedule_polcy'.*did you mean 'schedule_policy'"):
        EngineConfig.from_options(None, schedule_polcy="fcfs")
    with pytest.raises(ValueError, match="'max_runing_requests'.*'max_running_requests'"):
        EngineConfig.from_options(None, max_runing_requests=4)
    with pytest.raises(ValueError, match="'frobnicate'"):
        EngineConfig.from_options(None, frobnicate=True)
    with pytest.raises(ValueError, match="scheduler: expected a SchedulerConfig"):
        EngineConfig.from_options(None, scheduler={"schedule_policy": "fcfs"})


def test_the_engine_refuses_an_unknown_option_before_loading_anything():
    with pytest.raises(ValueError, match="did you mean 'disable_radix_cache'"):
        Engine(disable_radix=True)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"schedule_policy": "random"}, "schedule_policy"),
        ({"max_running_requests": 0}, "max_running_requests"),
        ({"chunked_prefill_size": 0}, "chunked_prefill_size"),
        ({"mem_fraction": 1.5}, "mem_fraction"),
        ({"max_total_tokens": 1}, "max_total_tokens"),
        ({"grammar_backend": "regexp"}, "grammar_backend"),
        ({"grammar_compile_timeout": 0}, "grammar_compile_timeout"),
        ({"context_length": 1}, "context_length"),
        ({"max_n": 0}, "max_n"),
        ({"seed": -1}, "seed"),
    ],
)
def test_each_option_is_validated_where_it_is_declared(options, field):
    with pytest.raises(ValueError, match=field):
        EngineConfig.from_options(None, **options)


def test_every_option_with_a_flag_is_a_serve_flag_with_the_fields_default():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {s for action in parser._actions for s in action.option_strings}
    for leaf in leaves(EngineConfig):
        if leaf.field.metadata.get("cli", True):
            assert "--" + leaf.name.replace("_", "-") in flags, leaf.name
    # SGLang's spellings are aliases of the same options
    assert {"--model-path", "--mem-fraction-static", "--random-seed"} <= flags
    defaults = parse([])
    assert defaults.engine == EngineConfig()
    given = parse(["--schedule-policy", "fcfs", "--max-n", "4", "--chunked-prefill-size", "-1",
                   "--disable-radix-cache", "--random-seed", "3", "--model-path", "m"])  # fmt: skip
    assert given.engine.scheduler == dataclasses.replace(
        SchedulerConfig(), schedule_policy="fcfs", chunked_prefill_size=-1
    )
    assert given.engine.cache.disable_radix_cache and given.engine.seed == 3
    assert given.engine.model == "m" and given.limits.max_n == 4
    with pytest.raises(SystemExit):  # argparse refuses a policy that is not one
        parse(["--schedule-policy", "random"])


def test_server_info_reports_every_option_and_never_the_key():
    args = ServerArgs(api_key="sekrit")
    config = EngineConfig().for_device("cpu")
    info = args.public(config)
    for leaf in leaves(EngineConfig):
        assert leaf.name in info, leaf.name
    assert info["chunked_prefill_size"] == 64  # the by-device default, as in force
    assert info["api_key"] == "set" and "sekrit" not in str(info)
