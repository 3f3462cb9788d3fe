"""The exceptions the engine raises to its callers besides ValueError (bad input)."""

from __future__ import annotations


class EngineDeadError(RuntimeError):
    """The engine thread stopped on an internal error: every request in flight fails with
    this, and so does every later call. A server answers 503 and exits non-zero, so that a
    supervisor restarts it."""


class EngineOverloadedError(RuntimeError):
    """More requests are in flight than the engine admits (`max_queued_requests`): nothing
    of the call was queued. Retry later (a server answers 503 with Retry-After)."""
