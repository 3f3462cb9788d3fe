"""The program's expressions: what `s += ...` receives, and the sampling parameters of a gen.

An expression is inert data; the executor (executor.py) gives it meaning. `a + b` of two
expressions (or of an expression and a string) is a list executed in order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(slots=True)
class SamplingParams:
    """A gen's sampling parameters. In a gen, None means "the run's default"; `run()` holds
    the defaults (SGLang's: 128 new tokens, temperature 1.0)."""

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
    def run_defaults(cls, **overrides: Any) -> SamplingParams:
        defaults = cls(
            max_new_tokens=128,
            min_new_tokens=0,
            n=1,
            stop=(),
            stop_token_ids=(),
            temperature=1.0,
            top_p=1.0,
            top_k=-1,
            min_p=0.0,
            frequency_penalty=0.0,
            presence_penalty=0.0,
            ignore_eos=False,
        )
        return defaults.overridden_by(cls(**overrides))

    def overridden_by(self, other: SamplingParams) -> SamplingParams:
        """A copy with every field `other` sets (not None) taken from `other`."""
        merged = dataclasses.replace(self)
        for f in dataclasses.fields(self):
            value = getattr(other, f.name)
            if value is not None:
                setattr(merged, f.name, value)
        return merged

    def request(self, extra_stop: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
        """(sampling_params, logprob options) as the runtime's /generate takes them.

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
        params: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "n": self.n,
            "stop": stop,
            "stop_token_ids": list(self.stop_token_ids or ()),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "ignore_eos": self.ignore_eos,
        }
        if regex is not None:
            params["regex"] = regex
        if self.json_schema is not None:
            params["json_schema"] = self.json_schema
        logprob = {
            k: getattr(self, k)
            for k in (
                "return_logprob",
                "logprob_start_len",
                "top_logprobs_num",
                "return_text_in_logprobs",
            )
            if getattr(self, k) is not None
        }
        return params, logprob


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
    params: SamplingParams = field(default_factory=SamplingParams)


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
