"""What other threads send the engine loop: each message is handled between two steps."""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..scheduler.request import Request


@dataclass(frozen=True, slots=True)
class AddRequest:
    req: Request


@dataclass(frozen=True, slots=True)
class Abort:
    rid: str


@dataclass(frozen=True, slots=True)
class AbortAll:
    message: str


@dataclass(frozen=True, slots=True)
class CallResult:
    ok: bool
    value: Any  # what the function returned, or the exception it raised


@dataclass(frozen=True, slots=True)
class Call:
    """Run `fn` on the engine thread; its result (or exception) goes to `done`."""

    fn: Callable[[], Any]
    done: queue.SimpleQueue[CallResult]


Message = AddRequest | Abort | AbortAll | Call
