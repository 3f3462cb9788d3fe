"""The program's expressions: what `s += ...` receives, and the sampling parameters of a gen.

An expression is inert data; the executor (executor.py) gives it meaning. `a + b` of two
expressions (or of an expression and a string) is a list executed in order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .runtime.sampling.generate_request import GenerateRequest
from .runtime.sampling.sampling_params import SamplingParams

# SGLang's frontend regexes for gen(dtype=...). int and float also stop at a space or a
# newline, so that "42 apples" yields "42".
DTYPE_REGEX = {
    "int": r"[-+]?[0-9]+",
    "float": r"[-+]?[0-9]*\.?[0-9]+",
    "bool": r"(True|False)",
    "str": r'"[\w\d\s]*"',
}
_DTYPE_STOPS = {"int": (" ", "\n"), "float": (" ", "\n")}


def dtype_regex(dtype: Any) -> str:
    """The regex a `gen(dtype=...)` compiles to: int, float, bool or str (the type or its name)."""
    return DTYPE_REGEX[_dtype_name(dtype)]


def _dtype_name(dtype: Any) -> str:
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", None)
    if name not in DTYPE_REGEX:
        raise ValueError(f"dtype: {dtype!r}; expected one of int, float, bool, str")
    return name


# The options of a gen that are not sampling parameters: which logprobs come back.
LOGPROB_OPTIONS = (
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
)


@dataclass(slots=True)
class GenParams:
    """What a gen asks for. None means "the run's default"; `run()` holds the defaults, which
    are the runtime's (`SamplingParams.defaults()`: 128 new tokens, temperature 1.0...)."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    n: int | None = None
    stop: str | list[str] | tuple[str, ...] | None = None
    stop_token_ids: list[int] | tuple[int, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    dtype: Any = None
    regex: str | None = None
    json_schema: str | dict | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None:
            _dtype_name(self.dtype)
        if isinstance(self.json_schema, dict):
            import json

            self.json_schema = json.dumps(self.json_schema)

    @classmethod
    def run_defaults(cls, **overrides: Any) -> GenParams:
        """The runtime's defaults for every sampling parameter a gen has, then `overrides`."""
        table = SamplingParams.defaults()
        defaults = cls(**{k: table[k] for k in SAMPLING_ARGS if k in table})
        return defaults.overridden_by(cls(**overrides))

    def overridden_by(self, other: GenParams) -> GenParams:
        """A copy with every field `other` sets (not None) taken from `other`."""
        merged = dataclasses.replace(self)
        for f in dataclasses.fields(self):
            value = getattr(other, f.name)
            if value is not None:
                setattr(merged, f.name, value)
        return merged

    def request(self, text: str, extra_stop: tuple[str, ...] = ()) -> GenerateRequest:
        """The runtime's request to continue `text` (its parameters checked here).

        `dtype` becomes a regex (overriding any given one, as in SGLang); `extra_stop` (the
        chat template's end-of-turn strings) is added to `stop`.
        """
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        regex = self.regex
        if self.dtype is not None:
            name = _dtype_name(self.dtype)
            regex = DTYPE_REGEX[name]
            stop += [s for s in _DTYPE_STOPS.get(name, ()) if s not in stop]
        stop += [s for s in extra_stop if s not in stop]
        given = {
            k: getattr(self, k)
            for k in SAMPLING_ARGS
            if k not in LOGPROB_OPTIONS and getattr(self, k) is not None
        }
        given.update(stop=stop, regex=regex, json_schema=self.json_schema)
        given["stop_token_ids"] = list(self.stop_token_ids or ())
        return GenerateRequest(
            text=text,
            sampling_params=SamplingParams(**given),
            return_logprob=bool(self.return_logprob),
            logprob_start_len=self.logprob_start_len,
            top_logprobs_num=self.top_logprobs_num,
            return_text_in_logprobs=bool(self.return_text_in_logprobs),
        )


# What `run()` and `run_batch()` take as the defaults of every gen.
SAMPLING_ARGS = tuple(
    f.name for f in dataclasses.fields(GenParams) if f.name not in ("dtype", "regex", "json_schema")
)


class Expr:
    """Something a program appends to its state with `s += expr`."""

    def __add__(self, other: Any) -> ExprList:
        return ExprList([self, to_expr(other)])

    def __radd__(self, other: Any) -> ExprList:
        return ExprList([to_expr(other), self])


def to_expr(value: Any) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Text(value)
    raise TypeError(
        f"a program appends strings and loomlm expressions (gen, select, roles...), "
        f"not {type(value).__name__}: {value!r}"
    )


@dataclass(eq=False)
class ExprList(Expr):
    items: list[Expr]

    def __add__(self, other: Any) -> ExprList:
        return ExprList([*self.items, to_expr(other)])


@dataclass(eq=False)
class Text(Expr):
    value: str


@dataclass(eq=False)
class Gen(Expr):
    name: str | None
    params: GenParams = field(default_factory=GenParams)


@dataclass(eq=False)
class Select(Expr):
    name: str | None
    choices: list[str]
    temperature: float
    method: Any  # a ChoicesMethod (choices.py)


@dataclass(eq=False)
class RoleBegin(Expr):
    role: str


@dataclass(eq=False)
class RoleEnd(Expr):
    role: str


@dataclass(eq=False)
class VarScopeBegin(Expr):
    name: str


@dataclass(eq=False)
class VarScopeEnd(Expr):
    name: str


@dataclass(eq=False)
class ConcatAndAppend(Expr):
    """join(mode="concate_and_append"): the branches' new text, appended in fork order."""

    executors: list[Any]
