"""The token-level matcher interface every grammar backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .constraint import Constraint


class Matcher(ABC):
    """The state of one constrained generation over token ids.

    Invariants: `fill_bitmask` describes exactly the tokens `consume` would accept next (EOS
    ids are allowed only where the constraint is satisfied); `consume` of a token outside the
    mask returns False and leaves the matcher in an error state (`error` says why);
    `rollback(n)` undoes the last n consumed tokens; `fork` gives an independent matcher in
    the same state.
    """

    @abstractmethod
    def consume(self, token: int) -> bool: ...

    def validate(self, tokens: list[int]) -> int:
        """How many of `tokens` would be accepted in a row, without consuming any."""
        probe = self.fork()
        for i, t in enumerate(tokens):
            if not probe.consume(t):
                return i
        return len(tokens)

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed tokens into `bitmask[row]` (int32, bit t%32 of word t//32)."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None: ...

    @abstractmethod
    def fork(self) -> Matcher: ...

    @abstractmethod
    def forced_tokens(self) -> list[int]:
        """Tokens that must come next whatever the model says (canonically tokenized); []
        when more than one continuation is possible."""

    @abstractmethod
    def is_accepting(self) -> bool:
        """The constraint is satisfied by what was consumed (EOS may come next)."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """The constraint is satisfied and nothing but EOS may follow."""

    @property
    @abstractmethod
    def error(self) -> str | None:
        """Why the matcher can go no further (a rejected token, a dead end), or None."""

    # Re-tokenizing at jump-forward boundaries (jump_forward.py); None where unsupported.
    def tokenize_bytes(self, data: bytes) -> list[int] | None:
        """Canonical tokens of `data` as it would appear mid-text."""
        return None

    def token_bytes(self, tokens: list[int]) -> bytes | None:
        return None


class CompiledGrammar(ABC):
    """A constraint compiled against one tokenizer; cheap to instantiate matchers from."""

    exact: bool = True  # False: the grammar approximates the constraint (see schema_check)

    @abstractmethod
    def matcher(self) -> Matcher: ...


class GrammarBackend(ABC):
    """Compiles constraints for one tokenizer. `compile` raises ValueError naming the
    constraint's field for an invalid constraint; it may be slow, and runs off the engine
    loop (see grammar_compiler)."""

    name: str
    vocab_size: int  # bitmask width in tokens (the model's vocabulary, padding included)

    @abstractmethod
    def compile(self, constraint: Constraint) -> CompiledGrammar: ...
