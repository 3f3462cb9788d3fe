from __future__ import annotations

import loomlm
import pytest
from loomlm.runtime import Engine

from ..runtime.server.live_server import LiveServer


@pytest.fixture(scope="package")
def engine():
    with Engine() as e:
        yield e


@pytest.fixture(scope="package")
def server(engine):
    with LiveServer(engine) as s:
        yield s


@pytest.fixture(scope="package")
def endpoint(server):
    backend = loomlm.RuntimeEndpoint(server.url)
    yield backend
    backend.shutdown()


@pytest.fixture(params=["engine", "http"])
def backend(request, engine):
    """Each primitive's tests run on the in-process engine and over HTTP (`loomlm serve`)."""
    if request.param == "engine":
        return loomlm.EngineBackend(engine)
    return request.getfixturevalue("endpoint")
