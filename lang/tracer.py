"""Finding the text every run of a program starts with, without running it for real.

`run_batch` calls the program once with stand-in arguments and a state that only records
text. The first thing that needs a real value (an argument, a gen, a read) stops the trace;
what was written before it is the prefix every program of the batch shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import ir
from .chat_template import ChatTemplate
from .roles import RoleMethods


class _StopTrace(Exception):
    pass


def _stop(*args: Any, **kwargs: Any) -> Any:
    raise _StopTrace


# What an unknown argument writes when formatted: the shared prefix ends where it appears.
_MARK = "\x1eloomlm-argument\x1e"


class _Argument:
    """A program argument whose value is unknown. Formatted (an f-string, str()) it writes a
    mark where the shared text ends; any other use ends the trace."""

    def __str__(self) -> str:
        return _MARK

    def __format__(self, spec: str) -> str:
        return _MARK

    def __add__(self, other: Any) -> str:
        return _MARK + other if isinstance(other, str) else _stop()

    def __radd__(self, other: Any) -> str:
        return other + _MARK if isinstance(other, str) else _stop()

    __repr__ = __bool__ = __len__ = __iter__ = _stop
    __getattr__ = __getitem__ = __call__ = __mul__ = _stop
    __eq__ = __lt__ = __gt__ = __le__ = __ge__ = __contains__ = __int__ = __index__ = _stop
    __hash__ = None  # type: ignore[assignment]


class _TracerState(RoleMethods):
    def __init__(self, template: ChatTemplate) -> None:
        self.template = template
        self.text = ""
        self.role: str | None = None

    def __iadd__(self, other: Any) -> _TracerState:
        self._add(ir.to_expr(other) if isinstance(other, (str, ir.Expr)) else _stop())
        return self

    def _add_expr(self, expr: ir.Expr) -> None:
        self._add(expr)

    def _add(self, expr: ir.Expr) -> None:
        if isinstance(expr, ir.ExprList):
            for item in expr.items:
                self._add(item)
        elif isinstance(expr, ir.Text):
            self.text += expr.value
            if _MARK in self.text:
                self.text = self.text[: self.text.index(_MARK)]
                raise _StopTrace
        elif isinstance(expr, ir.RoleBegin) and self.role is None and self.template:
            if self.template.default_system_prompt and expr.role != "system" and not self.text:
                raise _StopTrace  # the default system turn: leave it to the real run
            self.text += self.template.prefix_and_suffix(expr.role)[0]
            self.role = expr.role
        elif isinstance(expr, ir.RoleEnd) and self.role == expr.role:
            self.text += self.template.prefix_and_suffix(expr.role)[1]
            self.role = None
        else:
            raise _StopTrace

    def __getattr__(self, name: str) -> Any:
        raise _StopTrace


def trace_prefix(
    func: Callable[..., Any], arg_names: list[str], bound: dict[str, Any], template: ChatTemplate
) -> str:
    """The text `func` writes before it first needs an argument or a result."""
    state = _TracerState(template)
    arguments = {name: bound.get(name, _Argument()) for name in arg_names}
    try:
        func(state, **arguments)
    except Exception:  # _StopTrace, or anything the stand-ins provoked
        pass
    return state.text
