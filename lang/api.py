"""The primitives a program appends to its state: gen, select and the chat roles."""

from __future__ import annotations

from typing import Any

from . import ir
from .backends.resolve import resolve_backend
from .choices import ChoicesMethod, token_length_normalized


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    n: int | None = None,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
    dtype: Any = None,
    choices: list[str] | None = None,
    choices_method: ChoicesMethod | None = None,
    regex: str | None = None,
    json_schema: str | dict | None = None,
) -> ir.Expr:
    """Generate text at this point of the program; `name` makes it a variable (`s[name]`).

    Parameters left None take the run's defaults (`fn.run(temperature=0)`). `regex`,
    `json_schema` and `dtype` (int, float, bool, str) constrain the text; `choices` makes
    this a `select`. With `n` > 1 the variable is a list and the text takes the first.

    Example::

        s += "Answer: " + loomlm.gen("answer", max_tokens=16, stop="\\n")
    """
    if choices is not None:
        return select(name, choices, temperature or 0.0, choices_method or token_length_normalized)
    if sum(x is not None for x in (regex, json_schema)) > 1:
        raise ValueError("gen: give at most one of regex and json_schema")
    params = ir.GenParams(
        max_new_tokens=max_tokens,
        min_new_tokens=min_tokens,
        n=n,
        stop=stop,
        stop_token_ids=stop_token_ids,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        ignore_eos=ignore_eos,
        return_logprob=return_logprob,
        logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs,
        dtype=dtype,
        regex=regex,
        json_schema=json_schema,
    )
    return ir.Gen(name, params)


def gen_int(name: str | None = None, **kwargs: Any) -> ir.Expr:
    """An integer (optionally signed): `gen(name, dtype=int, ...)`."""
    return gen(name, dtype=int, **kwargs)


def gen_string(name: str | None = None, **kwargs: Any) -> ir.Expr:
    """A double-quoted string of word characters and spaces: `gen(name, dtype=str, ...)`."""
    return gen(name, dtype=str, **kwargs)


def select(
    name: str | None = None,
    choices: list[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesMethod = token_length_normalized,
) -> ir.Expr:
    """Append the most likely of `choices`, scored by the model as continuations.

    `choices_method`: `token_length_normalized` (the highest mean logprob per token),
    `greedy_token_selection` (the best first token, then the next...) or
    `unconditional_likelihood_normalized` (the most gain over the choice without context).
    The scores are in `s.get_meta_info(name)`.
    """
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ValueError("select: choices must be a non-empty list of strings")
    for i, c in enumerate(choices):
        if not isinstance(c, str) or not c:
            raise ValueError(f"select: choices[{i}] must be a non-empty string, got {c!r}")
    if not isinstance(choices_method, ChoicesMethod):
        raise ValueError(
            f"select: choices_method must be a loomlm choices method, got {choices_method!r}"
        )
    return ir.Select(name, list(choices), temperature, choices_method)


def _role(role: str, expr: Any) -> ir.Expr:
    if expr is None:
        return ir.ExprList([ir.RoleBegin(role), ir.RoleEnd(role)])
    return ir.ExprList([ir.RoleBegin(role), ir.to_expr(expr), ir.RoleEnd(role)])


def system(expr: Any = None) -> ir.Expr:
    """A system turn around `expr`, in the backend's chat template."""
    return _role("system", expr)


def user(expr: Any = None) -> ir.Expr:
    """A user turn around `expr`: `s += loomlm.user("Hi")`."""
    return _role("user", expr)


def assistant(expr: Any = None) -> ir.Expr:
    """An assistant turn around `expr`: `s += loomlm.assistant(loomlm.gen("reply"))`."""
    return _role("assistant", expr)


def system_begin() -> ir.Expr:
    return ir.RoleBegin("system")


def system_end() -> ir.Expr:
    return ir.RoleEnd("system")


def user_begin() -> ir.Expr:
    return ir.RoleBegin("user")


def user_end() -> ir.Expr:
    return ir.RoleEnd("user")


def assistant_begin() -> ir.Expr:
    return ir.RoleBegin("assistant")


def assistant_end() -> ir.Expr:
    return ir.RoleEnd("assistant")


def flush_cache(backend: Any = None) -> bool:
    """Empty the backend's prefix cache (refused while requests are in flight)."""
    return resolve_backend(backend).flush_cache()


def get_server_info(backend: Any = None) -> dict[str, Any]:
    return resolve_backend(backend).get_server_info()
