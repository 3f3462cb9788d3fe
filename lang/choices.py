"""How `select` turns the model's logprobs of each choice into a decision.

Each method gets, per choice, the logprob entries (`[logprob, token_id, text]`) of the
choice's own tokens in context, and returns a `ChoicesDecision`. The three methods are
SGLang's; scores are plain means, so they can be checked against the engine's logprobs.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class ChoicesDecision(NamedTuple):
    decision: str
    meta_info: dict[str, Any]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("-inf")


def _values(entries: list[list]) -> list[float]:
    """The logprobs of a choice's entries, skipping a null one (a token with no context)."""
    return [e[0] for e in entries if e[0] is not None]


def _argmax(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


class ChoicesMethod:
    """A rule for picking one choice. `requires_unconditional_logprobs` asks the backend
    for each choice's logprobs without the program's text as well."""

    requires_unconditional_logprobs = False
    name = "base"

    def __call__(
        self,
        choices: list[str],
        token_logprobs: list[list[list]],
        unconditional_token_logprobs: list[list[list]] | None = None,
    ) -> ChoicesDecision:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class TokenLengthNormalized(ChoicesMethod):
    """The choice with the highest mean logprob per token."""

    name = "token_length_normalized"

    def __call__(
        self,
        choices: list[str],
        token_logprobs: list[list[list]],
        unconditional_token_logprobs: list[list[list]] | None = None,
    ) -> ChoicesDecision:
        scores = [_mean(_values(e)) for e in token_logprobs]
        return ChoicesDecision(
            choices[_argmax(scores)],
            {"normalized_prompt_logprobs": scores, "input_token_logprobs": token_logprobs},
        )


class GreedyTokenSelection(ChoicesMethod):
    """Token by token: keep the choices whose logprob at this position is the highest, until
    one is left. A choice that has run out of tokens stands in with its own mean, so a
    choice that is a prefix of a longer one is compared fairly."""

    name = "greedy_token_selection"

    def __call__(
        self,
        choices: list[str],
        token_logprobs: list[list[list]],
        unconditional_token_logprobs: list[list[list]] | None = None,
    ) -> ChoicesDecision:
        rows = [_values(e) for e in token_logprobs]
        width = max(len(r) for r in rows)
        matrix = [r + [_mean(r)] * (width - len(r)) for r in rows]
        remaining = list(range(len(choices)))
        for column in range(width):
            best = max(matrix[i][column] for i in remaining)
            remaining = [i for i in remaining if matrix[i][column] == best]
            if len(remaining) == 1:
                break
        return ChoicesDecision(
            choices[remaining[0]],
            {
                "normalized_prompt_logprobs": [_mean(r) for r in rows],
                "input_token_logprobs": token_logprobs,
                "greedy_logprob_matrix": matrix,
            },
        )


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    """The choice whose tokens gain the most, on average, from the program's text: the mean
    of (logprob in context - logprob without it). A token with no unconditional logprob (the
    first, when the model has no BOS) counts its unconditional logprob as 0."""

    name = "unconditional_likelihood_normalized"
    requires_unconditional_logprobs = True

    def __call__(
        self,
        choices: list[str],
        token_logprobs: list[list[list]],
        unconditional_token_logprobs: list[list[list]] | None = None,
    ) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional logprobs")
        scores = []
        for cond, uncond in zip(token_logprobs, unconditional_token_logprobs):
            gains = [
                c[0] - (u[0] or 0.0) for c, u in zip(cond, uncond, strict=True) if c[0] is not None
            ]
            scores.append(_mean(gains))
        return ChoicesDecision(
            choices[_argmax(scores)],
            {
                "normalized_prompt_logprobs": [_mean(_values(e)) for e in token_logprobs],
                "input_token_logprobs": token_logprobs,
                "unconditional_token_logprobs": unconditional_token_logprobs,
                "normalized_unconditional_prompt_logprobs": scores,
            },
        )


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
