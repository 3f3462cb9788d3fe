"""The chat-role methods a state offers: `s.user("Hi")`, or `with s.user(): s += ...`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import ir


class RoleMethods:
    """Mixed into a state class that provides `_add_expr(expr)`."""

    def _add_expr(self, expr: ir.Expr) -> None:
        raise NotImplementedError

    def _role(self, role: str, expr: Any) -> Any:
        if expr is None:
            return self._role_scope(role)
        self._add_expr(ir.ExprList([ir.RoleBegin(role), ir.to_expr(expr), ir.RoleEnd(role)]))
        return None

    @contextlib.contextmanager
    def _role_scope(self, role: str) -> Iterator[None]:
        self._add_expr(ir.RoleBegin(role))
        yield
        self._add_expr(ir.RoleEnd(role))

    def system(self, expr: Any = None) -> Any:
        """Append a system turn, or, without `expr`, open one: `with s.system(): s += ...`."""
        return self._role("system", expr)

    def user(self, expr: Any = None) -> Any:
        """Append a user turn, or, without `expr`, open one: `with s.user(): s += ...`."""
        return self._role("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        """Append an assistant turn, or, without `expr`, open one."""
        return self._role("assistant", expr)
