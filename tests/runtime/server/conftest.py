from __future__ import annotations

import httpx
import pytest
from loomlm.runtime import Engine

from .live_server import LiveServer

# A tiny chat template, for the default model (whose tokenizer ships none).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="package")
def engine():
    with Engine() as e:
        yield e


@pytest.fixture(scope="package")
def server(engine):
    with LiveServer(engine, chat_template=CHAT_TEMPLATE) as s:
        yield s


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
