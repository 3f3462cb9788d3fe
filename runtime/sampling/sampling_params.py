"""SamplingParams: how one request samples and when it stops; validated on construction."""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any

from ..constrained.constraint import Constraint, check_constraint_fields
from ..utils.checks import check_bool, check_float, check_int, shown
from .stop_strings import StopStrings, stop_strings_for

GREEDY_BELOW = 1e-6  # a temperature under this means greedy, as in SGLang
LOGPROBS_MODES = ("raw", "processed")


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
    # Added to the logits before sampling, per token id (OpenAI's logit_bias: -100 to 100,
    # where -100 bans a token and 100 all but forces it). JSON keys are strings; ids here.
    logit_bias: dict[int, float] | None = None
    # Which distribution a returned logprob is under (with return_logprob): "raw", the
    # model's own softmax; "processed", the one the token was drawn from (penalties,
    # temperature, min-p / top-k / top-p and their renormalisation; greedy requests: the
    # softmax after penalties). `return_kept_mass` adds, per output token, the log of the
    # probability mass min-p / top-k / top-p kept, so that a trainer can renormalise its own
    # full-vocabulary logprobs over the same support.
    logprobs_mode: str = "raw"
    return_kept_mass: bool = False
    # Constraints (at most one): the output must match a regex, validate against a JSON
    # schema (a dict or its JSON text), derive from an EBNF / Lark grammar, or be one of
    # `choices`.
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None
    ebnf: str | None = None
    choices: list[str] | None = None
    constraint: Constraint | None = field(default=None, init=False, repr=False, compare=False)
    # stop_token_ids as a set, for the per-token membership tests
    stop_id_set: frozenset[int] = field(default=frozenset(), init=False, repr=False, compare=False)
    _stop_strings: StopStrings | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stop = _string_list("stop", self.stop)
        self.stop_token_ids = _id_list("stop_token_ids", self.stop_token_ids)
        self.stop_id_set = frozenset(self.stop_token_ids)
        check_int("max_new_tokens", self.max_new_tokens, low=0)
        check_int("min_new_tokens", self.min_new_tokens, low=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens: {self.min_new_tokens} must be <= max_new_tokens "
                f"({self.max_new_tokens})"
            )
        check_float("temperature", self.temperature, low=0.0)
        check_float("top_p", self.top_p, low=0.0, low_open=True, high=1.0)
        check_int("top_k", self.top_k, low=-1)
        if self.top_k == 0:
            raise ValueError("top_k: 0 keeps no token; expected -1 (all) or a positive integer")
        check_float("min_p", self.min_p, low=0.0, high=1.0)
        check_float("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0)
        check_float("presence_penalty", self.presence_penalty, low=-2.0, high=2.0)
        check_float("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True, high=2.0)
        check_bool("ignore_eos", self.ignore_eos)
        check_bool("skip_special_tokens", self.skip_special_tokens)
        check_bool("no_stop_trim", self.no_stop_trim)
        check_int("n", self.n, low=1)
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"logprobs_mode: {shown(self.logprobs_mode)} is not one of {', '.join(LOGPROBS_MODES)}"
            )
        check_bool("return_kept_mass", self.return_kept_mass)
        self.logit_bias = _bias_map(self.logit_bias)
        if self.seed is not None:
            check_int("seed", self.seed, low=0, high=(1 << 64) - 1)
        self.constraint = check_constraint_fields(
            self.regex, self.json_schema, self.ebnf, self.choices
        )

    @property
    def stop_strings(self) -> StopStrings:
        """The automaton that finds `stop` in generated text (built on first use, then
        shared by every request that stops on the same strings). The engine builds it in
        the caller's thread, once the limits on `stop` are checked."""
        if self._stop_strings is None:
            self._stop_strings = stop_strings_for(tuple(self.stop))
        return self._stop_strings

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
    def defaults(cls) -> dict[str, Any]:
        """Every parameter's default: the one table of them (a program's run defaults, and
        what `to_dict` leaves out, come from here)."""
        return {f.name: _default_of(f) for f in fields(cls) if f.init}

    def to_dict(self) -> dict[str, Any]:
        """The parameters set to other than their defaults, as `from_dict` takes them."""
        defaults = self.defaults()
        return {k: v for k, v in ((k, getattr(self, k)) for k in defaults) if v != defaults[k]}

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


def _default_of(f: Field[Any]) -> Any:
    factory = f.default_factory
    return factory() if callable(factory) else f.default


def _string_list(name: str, value: Any) -> list[str]:
    """A string or a list of non-empty strings, as a list (None: empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: expected a string or a list of strings, got {shown(value)}")
    for i, s in enumerate(value):
        if not isinstance(s, str) or not s:
            raise ValueError(f"{name}[{i}]: expected a non-empty string, got {shown(s)}")
    return list(value)


def _bias_map(value: Any) -> dict[int, float] | None:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"logit_bias: expected an object of token id -> bias, got {shown(value)}")
    out: dict[int, float] = {}
    for key, bias in value.items():
        token = int(key) if isinstance(key, str) and key.isdigit() else key
        check_int(f"logit_bias key {shown(key)}", token, low=0)
        check_float(f"logit_bias[{token}]", bias, low=-100.0, high=100.0)
        out[token] = float(bias)
    return out


def _id_list(name: str, value: Any) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: expected a list of token ids, got {shown(value)}")
    for i, t in enumerate(value):
        check_int(f"{name}[{i}]", t, low=0)
    return list(value)
