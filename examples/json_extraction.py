"""JSON extraction with a schema: each story becomes a record that validates against it.

python examples/json_extraction.py
"""

from __future__ import annotations

import json
from typing import Any

import loomlm

CHARACTER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "animal": {"type": "string", "enum": ["cat", "dog", "bird", "fish", "person"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "happy": {"type": "boolean"},
    },
    "required": ["name", "animal", "age", "happy"],
}

STORIES = [
    "Max was a big brown dog. He was five years old and loved to run in the park.",
    "Lily was a little girl. She was three and she was very happy with her new toy.",
    "Tweet was a small bird. She was sad because she could not find her nest.",
    "Tom the cat was old. He liked to sleep in the sun all day.",
]


@loomlm.function
def extract(s, story: str) -> None:
    s += "Read the story and fill in the record about its main character.\n\n"
    s += "Story: " + story + "\n"
    s += "Record: " + loomlm.gen("record", json_schema=CHARACTER, max_tokens=64)


def main(backend: Any = None) -> None:
    engine = None
    if backend is None:
        from loomlm.runtime import Engine

        backend = engine = Engine()
    try:
        states = extract.run_batch([{"story": t} for t in STORIES], temperature=0, backend=backend)
        for story, state in zip(STORIES, states):
            record = json.loads(state["record"])  # always valid: the schema constrained it
            print(f"{story}\n  -> {json.dumps(record)}\n")
    finally:
        if engine is not None:
            engine.shutdown()


if __name__ == "__main__":
    main()
