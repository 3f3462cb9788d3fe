"""RequestLimits: how much one request may ask of the engine, and how many may wait.

Each limit keeps one client from taking what everyone else needs: memory (n, queue),
engine-thread time (stop strings, logprobs), or the process itself (grammar size, nesting
depth: the grammar compilers are native code that recurses). The defaults leave real use
far inside them; every one is an `Engine(max_n=...)` option (or `limits=RequestLimits(...)`) and a flag of
`loomlm serve` (`--max-n`, ...) for deployments that need more.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..utils.checks import check_int
from ..utils.options import option


@dataclass(frozen=True, slots=True)
class RequestLimits:
    # OpenAI's own cap on `n`; one call's samples all queue at once.
    max_n: int = option(128, "most samples (n) one request may ask for")
    # OpenAI's cap on top_logprobs; each is a row of entries per token, on the engine thread.
    max_top_logprobs: int = option(
        20, "most top logprobs per token (top_logprobs_num / top_logprobs)"
    )
    # Stop strings per request and their total length (OpenAI takes 4).
    max_stop_strings: int = option(128, "most stop strings per request")
    max_stop_chars: int = option(16384, "most characters of stop strings per request, all together")
    max_stop_token_ids: int = option(1024, "most stop token ids per request")
    # Requests (each of `n` samples counts) running or waiting; past it a call is refused
    # whole (EngineOverloadedError, HTTP 503 with Retry-After).
    max_queued_requests: int = option(
        4096, "most requests running or waiting (each sample counts); more are refused with 503"
    )
    # A constraint's text (regex, grammar, schema as JSON): the largest of 200 real-world
    # schemas (JSONSchemaBench) is 236 KB.
    max_constraint_chars: int = option(
        1 << 20, "longest regex / grammar / JSON schema, in characters"
    )
    # Nesting of a JSON schema (objects and arrays): the deepest of those 200 is 22.
    max_schema_depth: int = option(64, "deepest nesting of a JSON schema")
    # Rules of an EBNF grammar: a chain of 3,000 overflowed an 8 MiB stack in the grammar
    # compiler; on the 64 MiB stacks it now gets, 10,000 compile.
    max_grammar_rules: int = option(2000, "most rules in an EBNF grammar")

    def __post_init__(self) -> None:
        for f in fields(self):
            check_int(f.name, getattr(self, f.name), low=1)
