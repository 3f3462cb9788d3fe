"""Building outlines-core indexes in a child process, with a memory cap and a time limit.

outlines-core compiles ahead of time, and both of its steps can explode on a client's
constraint: its JSON-schema-to-regex translation multiplies with nesting (3 levels of
objects with 20 properties each made a 405 MB regex and took 1.2 GB; 4 levels would kill the
server), and the regex's DFA crossed with the vocabulary can grow without bound. Neither can
be interrupted from Python. So each compile runs in a fresh interpreter that imports only
outlines-core, under an address-space limit, and is killed past its time: a constraint too
large for it fails alone, as a ValueError naming the field. The index comes back pickled.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

MEMORY_BYTES = 2 << 30  # the child's address space
SECONDS = 60.0  # the child's time (the caller's own compile timeout is usually shorter)

_CHILD = """
import pickle, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import outlines_core
from outlines_core.json_schema import build_regex_from_schema
kind, text, vocabulary = pickle.loads(sys.stdin.buffer.read())
try:
    regex = build_regex_from_schema(text, r"[ ]?") if kind == "json_schema" else text
    result = ("ok", outlines_core.Index(regex, vocabulary))
except MemoryError:
    result = ("error", "too large to compile (over the memory limit)")
except Exception as exc:
    result = ("error", str(exc))
sys.stdout.buffer.write(pickle.dumps(result))
"""


def build_index(kind: str, text: str, vocabulary: Any) -> Any:
    """The outlines-core Index of a regex (or of a JSON schema's regex); ValueError naming
    `kind` if it is invalid, too large, or takes too long."""
    payload = pickle.dumps((kind, text, vocabulary))
    command = [sys.executable, "-I", "-c", _CHILD, str(MEMORY_BYTES)]
    try:
        done = subprocess.run(command, input=payload, capture_output=True, timeout=SECONDS)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{kind}: outlines-core took over {SECONDS:g} s to compile it") from None
    if done.returncode != 0 or not done.stdout:
        raise ValueError(
            f"{kind}: too large for the outlines backend (its compiler stopped, exit status "
            f"{done.returncode}, within {MEMORY_BYTES >> 30} GiB); llguidance compiles lazily"
        )
    status, value = pickle.loads(done.stdout)  # our own child's answer
    if status != "ok":
        raise ValueError(f"{kind}: {value}")
    return value
