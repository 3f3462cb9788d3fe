"""SamplingParams: how one request samples and when it stops; validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .constrained.constraint import Constraint, check_constraint_fields

GREEDY_BELOW = 1e-6  # a temperature under this means greedy, as in SGLang


@dataclass(slots=True)
class SamplingParams:
    """Sampling and stopping rules for one request (SGLang's names and defaults).

    Example::

        SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=64, stop=["\\n\\n"], seed=7)
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: the whole vocabulary
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    seed: int | None = None
    # Constraints (at most one): the output must match a regex, validate against a JSON
    # schema (a dict or its JSON text), derive from an EBNF / Lark grammar, or be one of
    # `choices`.
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None
    ebnf: str | None = None
    choices: list[str] | None = None
    constraint: Constraint | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        _check_int("max_new_tokens", self.max_new_tokens, low=0)
        _check_int("min_new_tokens", self.min_new_tokens, low=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens: {self.min_new_tokens} must be <= max_new_tokens "
                f"({self.max_new_tokens})"
            )
        _check_float("temperature", self.temperature, low=0.0)
        _check_float("top_p", self.top_p, low=0.0, low_open=True, high=1.0)
        _check_int("top_k", self.top_k, low=-1)
        if self.top_k == 0:
            raise ValueError("top_k: 0 keeps no token; expected -1 (all) or a positive integer")
        _check_float("min_p", self.min_p, low=0.0, high=1.0)
        _check_float("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0)
        _check_float("presence_penalty", self.presence_penalty, low=-2.0, high=2.0)
        _check_float(
            "repetition_penalty", self.repetition_penalty, low=0.0, low_open=True, high=2.0
        )
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop: {s!r} is not a non-empty string")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids", t, low=0)
        _check_int("n", self.n, low=1)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0)
        self.constraint = check_constraint_fields(
            self.regex, self.json_schema, self.ebnf, self.choices
        )

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        return (
            self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        """Build from a JSON-style dict; unknown keys are an error that names them."""
        d = dict(d or {})
        known = {f.name for f in fields(cls) if f.init}
        if "sampling_seed" in d:  # SGLang's name for the per-request seed
            d["seed"] = d.pop("sampling_seed")
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"sampling_params: unknown key(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        return cls(**d)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name}: must be >= {low}, got {value}")


def _check_float(
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if value != value:  # NaN
        raise ValueError(f"{name}: expected a number, got NaN")
    if (value <= low) if low_open else (value < low):
        raise ValueError(f"{name}: must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: must be <= {high}, got {value}")
