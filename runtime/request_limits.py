"""RequestLimits: how much one request may ask of the engine, and how many may wait.

Each limit keeps one client from taking what everyone else needs: memory (n, queue),
engine-thread time (stop strings, logprobs), or the process itself (grammar size, nesting
depth: the grammar compilers are native code that recurses). The defaults leave real use
far inside them; every one is an `Engine(limits=RequestLimits(...))` field and a flag of
`loomlm serve` (`--max-n`, ...) for deployments that need more.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .checks import check_int


@dataclass(frozen=True, slots=True)
class RequestLimits:
    # OpenAI's own cap on `n`; one call's samples all queue at once.
    max_n: int = 128
    # OpenAI's cap on top_logprobs; each is a row of entries per token, on the engine thread.
    max_top_logprobs: int = 20
    # Stop strings per request and their total length (OpenAI takes 4).
    max_stop_strings: int = 128
    max_stop_chars: int = 16384
    max_stop_token_ids: int = 1024
    # Requests (each of `n` samples counts) running or waiting; past it a call is refused
    # whole (EngineOverloadedError, HTTP 503 with Retry-After).
    max_queued_requests: int = 4096
    # A constraint's text (regex, grammar, schema as JSON): the largest of 200 real-world
    # schemas (JSONSchemaBench) is 236 KB.
    max_constraint_chars: int = 1 << 20
    # Nesting of a JSON schema (objects and arrays): the deepest of those 200 is 22.
    max_schema_depth: int = 64
    # Rules of an EBNF grammar: a chain of 3,000 overflowed an 8 MiB stack in the grammar
    # compiler; on the 64 MiB stacks it now gets, 10,000 compile.
    max_grammar_rules: int = 2000

    def __post_init__(self) -> None:
        for f in fields(self):
            check_int(f.name, getattr(self, f.name), low=1)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each limit's flag help (for `loomlm serve`)."""
        return {
            "max_n": "most samples (n) one request may ask for",
            "max_top_logprobs": "most top logprobs per token (top_logprobs_num / top_logprobs)",
            "max_stop_strings": "most stop strings per request",
            "max_stop_chars": "most characters of stop strings per request, all together",
            "max_stop_token_ids": "most stop token ids per request",
            "max_queued_requests": "most requests running or waiting (each sample counts); "
            "more are refused with 503",
            "max_constraint_chars": "longest regex / grammar / JSON schema, in characters",
            "max_schema_depth": "deepest nesting of a JSON schema",
            "max_grammar_rules": "most rules in an EBNF grammar",
        }
