"""Connection-level guards: slow headers and slow bodies time out, a duplicated
Authorization header is refused, and the API key can stay out of the process list."""

from __future__ import annotations

import socket
import time

import httpx
from loomlm.runtime.server.args import API_KEY_ENV, ServerArgs, add_arguments, from_namespace

from .bystander import PROMPT, Bystander
from .live_server import LiveServer


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    start = time.perf_counter()
    sock.settimeout(within)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data, time.perf_counter() - start
        data += chunk


def test_slow_headers_and_slow_bodies_time_out(engine):
    """Defect 13: no header or body read timeout: a client trickling bytes held its
    connection for as long as it liked."""
    with LiveServer(engine, header_timeout=1.0, body_timeout=1.0) as s:
        with Bystander(s, engine):
            port = int(s.url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /generate HTTP/1.1\r\nhost: x\r\n")  # and no more
                data, after = read_until_closed(sock, within=10)
            assert data.startswith(b"HTTP/1.1 408") and after < 5
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(
                    b"POST /generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b'content-length: 100\r\n\r\n{"text": '
                )
                data, after = read_until_closed(sock, within=10)
            assert data.startswith(b"HTTP/1.1 408"), data[:200]
            assert b"body: not received within 1 s" in data and after < 5
            with httpx.Client(base_url=s.url) as http:  # a prompt client is unaffected
                r = http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 2}})  # fmt: skip
                assert r.status_code == 200


def test_a_duplicated_authorization_header_is_refused(engine):
    """Defect 13: with two Authorization headers the last one won."""
    with LiveServer(engine, api_key="k3y") as s, httpx.Client(base_url=s.url) as http:
        body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 2}}
        headers = [("authorization", "Bearer wrong"), ("authorization", "Bearer k3y")]
        r = http.post("/generate", json=body, headers=headers)
        assert r.status_code == 400 and "more than once" in r.json()["error"]["message"]
        headers = [("authorization", "Bearer k3y"), ("authorization", "Bearer k3y")]
        assert http.post("/generate", json=body, headers=headers).status_code == 400
        ok = http.post("/generate", json=body, headers={"authorization": "Bearer k3y"})
        assert ok.status_code == 200


def parse(argv: list[str]) -> ServerArgs:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_namespace(parser.parse_args(argv))


def test_the_api_key_from_the_environment_or_a_file(tmp_path, monkeypatch):
    """Defect 13: the key could only be given on the command line, which every user of the
    machine can read in the process list."""
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert parse([]).api_key == "from-env"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert parse(["--api-key-file", str(key_file)]).api_key == "from-file"
    assert parse(["--api-key", "given"]).api_key == "given"
    monkeypatch.delenv(API_KEY_ENV)
    assert parse([]).api_key is None
    key_file.write_text("  \n")
    try:
        parse(["--api-key-file", str(key_file)])
        raise AssertionError("an empty key file was accepted")
    except ValueError as exc:
        assert "api_key_file" in str(exc)
    assert parse(["--max-n", "4"]).limits.max_n == 4
