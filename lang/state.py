"""ProgramState: the `s` a program writes to, and the group of states a fork returns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from . import ir
from .executor import Executor
from .roles import RoleMethods


class ProgramState(RoleMethods):
    """The state of one running program: its text, chat messages and named results.

    Example::

        @loomlm.function
        def qa(s, question):
            s += loomlm.user(question)
            s += loomlm.assistant(loomlm.gen("answer", max_tokens=32))

        state = qa.run(question="What is 1 + 1?")
        state["answer"], state.text(), state.messages()
    """

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self.ret_value: Any = None

    # -- writing ---------------------------------------------------------------------------
    def __iadd__(self, other: Any) -> ProgramState:
        self._executor.submit(ir.to_expr(other))
        return self

    def _add_expr(self, expr: ir.Expr) -> None:
        self._executor.submit(expr)

    @contextlib.contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """Everything appended inside the block becomes the variable `name`."""
        self._executor.submit(ir.VarScopeBegin(name))
        yield
        self._executor.submit(ir.VarScopeEnd(name))

    def fork(self, size: int = 1) -> ProgramStateGroup:
        """`size` copies of this state that continue independently from its current text.

        The copies' first requests reach the engine together, which computes the shared text
        once. `group.join()` waits for them; their variables come back as lists.
        """
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"fork: size must be a positive integer, got {size!r}")
        return ProgramStateGroup([ProgramState(e) for e in self._executor.fork(size)], self)

    @contextlib.contextmanager
    def copy(self) -> Iterator[ProgramState]:
        """A one-branch fork for a block: `with s.copy() as c: c += ...`."""
        group = self.fork(1)
        yield group[0]
        group.join()

    # -- reading ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self._executor.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        self.sync()
        return name in self._executor.variables

    def get_var(self, name: str) -> Any:
        return self._executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.sync()
        self._executor.variables[name] = value

    def get_meta_info(self, name: str) -> Any:
        """What the runtime reported for the gen or select `name` (token counts, cached
        tokens, finish reason, logprobs; a select's scores)."""
        self._executor.get_var(name)
        return self._executor.meta_info.get(name)

    def text(self) -> str:
        self.sync()
        return self._executor.text

    def messages(self) -> list[dict[str, str]]:
        """The chat so far, in OpenAI's format (closed turns only)."""
        self.sync()
        return list(self._executor.messages)

    def sync(self) -> None:
        """Wait for everything submitted so far; raises the program's error, if any."""
        self._executor.sync()

    def error(self) -> BaseException | None:
        """The error that stopped this program (in `run_batch` or a stream), or None."""
        return self._executor.error

    # -- streaming -------------------------------------------------------------------------
    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Yield text as it is generated: the whole program's, or one variable's.

        Chunks may join up several tokens; their concatenation is the final text.
        """
        sent, version = 0, -1
        while True:
            chunk, done = self._next_chunk(var_name, sent)
            if chunk:
                sent += len(chunk)
                yield chunk
                continue  # look again at once: more may have come meanwhile
            if done:
                return
            version = self._executor.wait_change(version, timeout=0.5)

    async def text_async_iter(
        self, var_name: str | None = None, return_meta_data: bool = False
    ) -> AsyncIterator[Any]:
        """`text_iter` for asyncio: `async for chunk in state.text_async_iter("answer")`."""
        sent, version = 0, -1
        while True:
            chunk, done = self._next_chunk(var_name, sent)
            if chunk:
                sent += len(chunk)
                if return_meta_data and var_name is not None:
                    yield chunk, self._executor.meta_info.get(var_name)
                else:
                    yield chunk
                continue
            if done:
                return
            version = await asyncio.to_thread(self._executor.wait_change, version, 0.5)

    def _next_chunk(self, var_name: str | None, sent: int) -> tuple[str, bool]:
        """The text past `sent`, and whether no more will come (raising the program's error
        once it has ended)."""
        done = self._done(var_name)
        chunk = self._current(var_name)[sent:]
        if done and not chunk:
            self._executor.raise_error()
        return chunk, done and not chunk

    def _done(self, var_name: str | None) -> bool:
        executor = self._executor
        if executor.error is not None or executor.finished:
            return True
        return (
            var_name is not None
            and executor.is_ready(var_name)
            and (var_name in executor.variables)
        )

    def _current(self, var_name: str | None) -> str:
        if var_name is None:
            return self._executor.text
        value = self._executor.variables.get(var_name, "")
        return value if isinstance(value, str) else ""

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ProgramStateGroup:
    """The states a fork returns: index them, iterate them, `+=` to all of them at once."""

    def __init__(self, states: list[ProgramState], parent: ProgramState) -> None:
        self.states = states
        self.parent = parent

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        # `forks[i] += expr` appends to the branch, then assigns it back to its own slot.
        if value is not self.states[i]:
            raise TypeError("fork: a branch cannot be replaced; append to it with +=")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> ProgramStateGroup:
        """The same expression to every branch; a list gives one per branch; a callable
        is called with the branch index."""
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"fork: {len(other)} expressions for {len(self.states)} branches")
            parts: Callable[[int], Any] = lambda i: other[i]  # noqa: E731
        elif callable(other) and not isinstance(other, ir.Expr):
            parts = other
        else:
            parts = lambda i: other  # noqa: E731
        for i, state in enumerate(self.states):
            state += parts(i)
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """Wait for the branches and bring their results back to the parent.

        "gather_variable": each variable that the branches made becomes a list in the
        parent, in branch order. "concate_and_append": the branches' new text is appended
        to the parent's, in branch order.
        """
        if mode == "gather_variable":
            for state in self.states:
                state.sync()
            parent = self.parent._executor
            parent.sync()
            made = dict.fromkeys(n for s in self.states for n in s._executor.variables)
            for name in made:
                if name not in parent.variables:
                    parent.variables[name] = [s._executor.variables.get(name) for s in self.states]
        elif mode == "concate_and_append":
            self.parent += ir.ConcatAndAppend([s._executor for s in self.states])
        else:
            raise ValueError(
                f"join: mode must be 'gather_variable' or 'concate_and_append', got {mode!r}"
            )
