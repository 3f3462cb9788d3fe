"""loomlm: a structured LLM programming language embedded in Python.

A program is a Python function whose first argument, `s`, is the program state. It appends
text and primitives to it; the runtime runs many programs and their branches at once, sharing
the prefixes they have in common. SGLang programs run with `import loomlm as sgl`.

Example::

    import loomlm
    from loomlm.runtime import Engine

    @loomlm.function
    def story(s, hero):
        s += f"Once upon a time, {hero}"
        s += loomlm.gen("plot", max_tokens=32, stop=".")
        s += ". The moral was that " + loomlm.select("moral", ["sharing", "kindness"])

    loomlm.set_default_backend(Engine())  # the built-in TinyStories 260K model
    state = story.run(hero="a little dog", temperature=0)
    print(state["plot"], state["moral"])

`import loomlm` never imports torch; the runtime (`loomlm.runtime`) is imported by whoever
builds an engine.
"""

from __future__ import annotations

from typing import Any

from .api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    select,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from .backends.base import Backend
from .backends.resolve import get_default_backend, set_default_backend
from .backends.runtime_endpoint import RuntimeEndpoint
from .chat_template import ChatTemplate
from .choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from .executor import ProgramError
from .program import Function, function
from .state import ProgramState, ProgramStateGroup

__version__ = "0.1.0"
__all__ = [
    "Backend",
    "ChatTemplate",
    "Engine",
    "EngineBackend",
    "Function",
    "ProgramError",
    "ProgramState",
    "ProgramStateGroup",
    "RuntimeEndpoint",
    "__version__",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_default_backend",
    "get_server_info",
    "greedy_token_selection",
    "select",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
]


def __getattr__(name: str) -> Any:
    # The engine pulls in torch, so it is imported only when asked for.
    if name == "Engine":
        from .runtime import Engine

        return Engine
    if name == "EngineBackend":
        from .backends.engine_backend import EngineBackend

        return EngineBackend
    raise AttributeError(f"module 'loomlm' has no attribute {name!r}")
