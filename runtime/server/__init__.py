"""loomlm.runtime.server: SGLang's native HTTP protocol and the OpenAI API over an Engine.

`loomlm serve` runs it; `create_app(engine, ServerArgs(...))` gives the ASGI app.
"""

from __future__ import annotations

from .app import create_app
from .args import ServerArgs

__all__ = ["ServerArgs", "create_app"]
