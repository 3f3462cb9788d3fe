"""The executor: runs one program state's expressions, in order, on a thread of its own.

`s += expr` only enqueues, so the program's Python code runs ahead and reaches the next
`s += ...`, a fork or another program while the engine works. The program waits only when it
reads a result (`s["x"]`, `s.text()`). Branches of a fork and the programs of a batch each have
an executor, so their requests reach the engine together and are batched there.
"""

from __future__ import annotations

import queue
import sys
import threading
from types import FrameType
from typing import Any

from . import ir
from .backends.base import Backend
from .chat_template import ChatTemplate


class ProgramError(RuntimeError):
    """A primitive of a program failed; the message says which one and where."""


class Executor:
    def __init__(
        self,
        backend: Backend,
        defaults: ir.GenParams,
        chat_template: ChatTemplate,
        stream: bool = False,
        registry: list[Executor] | None = None,
    ) -> None:
        self.backend = backend
        self.defaults = defaults
        self.chat_template = chat_template
        self.stream = stream
        self.text = ""
        self.messages: list[dict[str, str]] = []
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.role: str | None = None
        self.role_start = 0
        self.fork_start = 0
        self.scopes: dict[str, int] = {}
        self._current: ir.Expr | None = None
        # A name is "ready" once its final value is set; streamed names are readable earlier.
        self._ready: dict[str, threading.Event] = {}
        self._changed = threading.Condition()
        self._version = 0
        self._finished = False
        # Every executor of a program, so that the program's end ends its branches too.
        self.registry = registry if registry is not None else []
        self.registry.append(self)
        self._queue: queue.Queue[tuple[ir.Expr, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="loomlm-program", daemon=True)
        self._thread.start()

    # -- the program's side ----------------------------------------------------------------
    def submit(self, expr: ir.Expr) -> None:
        for name in _names(expr):
            self._ready.setdefault(name, threading.Event()).clear()
        self._queue.put((expr, _caller()))

    def sync(self) -> None:
        self._queue.join()
        self.raise_error()

    def get_var(self, name: str) -> Any:
        event = self._ready.get(name)
        if event is None:
            self.sync()
        else:
            event.wait()
            self.raise_error()
        if name not in self.variables:
            raise KeyError(f"no variable {name!r} in this program state")
        return self.variables[name]

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def end(self) -> None:
        """Stop the thread once what was submitted has run."""
        self._queue.put(None)

    def fork(self, size: int) -> list[Executor]:
        self.sync()
        children = []
        for _ in range(size):
            child = Executor(
                self.backend, self.defaults, self.chat_template, self.stream, self.registry
            )
            child.text = self.text
            child.messages = list(self.messages)
            child.variables = dict(self.variables)
            child.meta_info = dict(self.meta_info)
            child.role, child.role_start = self.role, self.role_start
            child.fork_start = len(self.text)
            children.append(child)
        return children

    def wait_change(self, version: int, timeout: float | None = None) -> int:
        """Block until the text changes past `version` (or the executor ends); the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version or self._finished, timeout)
            return self._version

    @property
    def finished(self) -> bool:
        return self._finished

    def is_ready(self, name: str) -> bool:
        event = self._ready.get(name)
        return event is None or event.is_set()

    # -- the thread's side -----------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                break
            expr, where = item
            try:
                if self.error is None:
                    self._execute(expr)
            except Exception as exc:
                self._fail(self._current or expr, where, exc)
            finally:
                self._queue.task_done()
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def _fail(self, expr: ir.Expr, where: str, exc: Exception) -> None:
        what = type(expr).__name__.lower()
        name = getattr(expr, "name", None)
        label = f"{what}({name!r})" if name else what
        error = ProgramError(f"{label} at {where} failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        self.error = error
        for event in self._ready.values():  # wake every reader: they will see the error
            event.set()
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def _append(self, text: str, name: str | None = None) -> None:
        self.text += text
        if name is not None:
            self.variables[name] = self.variables.get(name, "") + text
        self._notify()

    def _set(self, name: str | None, value: Any, meta: Any) -> None:
        if name is None:
            return
        self.variables[name] = value
        self.meta_info[name] = meta
        self._ready.setdefault(name, threading.Event()).set()

    def _execute(self, expr: ir.Expr) -> None:
        if isinstance(expr, ir.ExprList):
            for item in expr.items:
                self._execute(item)
            return
        self._current = expr  # what a failure is reported as
        if isinstance(expr, ir.Text):
            self._append(expr.value)
        elif isinstance(expr, ir.Gen):
            self._gen(expr)
        elif isinstance(expr, ir.Select):
            decision = self.backend.select(self.text, expr.choices, expr.temperature, expr.method)
            self._append(decision.decision)
            self._set(expr.name, decision.decision, decision.meta_info)
        elif isinstance(expr, ir.RoleBegin):
            self._role_begin(expr.role)
        elif isinstance(expr, ir.RoleEnd):
            self._role_end(expr.role)
        elif isinstance(expr, ir.VarScopeBegin):
            self.scopes[expr.name] = len(self.text)
        elif isinstance(expr, ir.VarScopeEnd):
            self._set(expr.name, self.text[self.scopes.pop(expr.name) :], None)
        elif isinstance(expr, ir.ConcatAndAppend):
            for child in expr.executors:
                child.sync()
                self._append(child.text[child.fork_start :])
        else:
            raise TypeError(f"cannot execute {expr!r}")

    def _gen(self, expr: ir.Gen) -> None:
        params = self.defaults.overridden_by(expr.params)
        request = params.request(self.text, self.chat_template.stop_str)
        if not self.stream:
            comp, meta = self.backend.generate(request)
            self._append(comp[0] if isinstance(comp, list) else comp)
            self._set(expr.name, comp, meta)
            return
        last: dict[str, Any] = {}
        if expr.name is not None:
            self.variables[expr.name] = ""
        for chunk, meta in self.backend.generate_stream(request):
            self._append(chunk, expr.name)
            last = meta
        streamed = self.variables.get(expr.name, "") if expr.name is not None else ""
        self._set(expr.name, streamed, last)

    def _role_begin(self, role: str) -> None:
        if self.role is not None:
            raise ValueError(f"role: {role!r} begins inside the {self.role!r} turn")
        template = self.chat_template
        if not self.messages and role != "system" and template.default_system_prompt:
            self._role_begin("system")
            self._append(template.default_system_prompt)
            self._role_end("system")
        self._append(template.prefix_and_suffix(role)[0])
        self.role, self.role_start = role, len(self.text)

    def _role_end(self, role: str) -> None:
        if self.role != role:
            raise ValueError(f"role: {role!r} ends, but the open turn is {self.role!r}")
        content = self.text[self.role_start :]
        self._append(self.chat_template.prefix_and_suffix(role)[1])
        self.messages.append({"role": role, "content": content.lstrip()})
        self.role = None


def _names(expr: ir.Expr) -> list[str]:
    if isinstance(expr, ir.ExprList):
        return [n for item in expr.items for n in _names(item)]
    if isinstance(expr, (ir.Gen, ir.Select, ir.VarScopeEnd)) and expr.name is not None:
        return [expr.name]
    return []


def _caller() -> str:
    """The first frame outside loomlm: the program line that submitted the expression."""
    frame: FrameType | None = sys._getframe(2)
    package = __name__.rsplit(".", 1)[0]
    while frame is not None and frame.f_globals.get("__name__", "").startswith(package + "."):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
