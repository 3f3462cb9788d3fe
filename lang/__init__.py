"""loomlm: a structured LLM programming language embedded in Python.

The language lives in this package; the serving runtime lives in ``loomlm.runtime`` and is
imported lazily, so that ``import loomlm`` never pulls in torch.

Example::

    from loomlm.runtime import Engine, SamplingParams

    with Engine() as engine:  # the built-in TinyStories 260K model
        out = engine.generate("Once upon a time", SamplingParams(max_new_tokens=20))
        print(out.text)
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
