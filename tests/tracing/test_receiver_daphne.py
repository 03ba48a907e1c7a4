"""Body limits on the real server: daphne refuses oversized and stalled bodies before buffering.

Raw sockets, since what is tested is what well-behaved HTTP clients never
send: a Content-Length the body never reaches, a chunked body without end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.tracing.spans import agent_run, protobuf_body, record

LIMIT = 1_000_000
BODY_TIMEOUT = 2


@dataclass
class Daphne:
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def daphne(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daphne]:
    data = tmp_path_factory.mktemp("daphne-limits")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{data / 'db.sqlite3'}",
        "LOOMVIEW_DATA_DIR": str(data),
        "LOOMVIEW_OTLP_MAX_BODY_BYTES": str(LIMIT),
        "LOOMVIEW_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=ROOT, check=True)
    port = free_port()
    log = data / "daphne.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
             "dashboard.asgi:application"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"daphne did not start:\n{log.read_text()}") from None
            time.sleep(0.2)
    try:
        yield Daphne(port, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _connect(daphne: Daphne) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daphne.port), timeout=10)
    return sock


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        None,
    )  # fmt: skip
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def _ingest(daphne: Daphne, body: bytes) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daphne.port}/v1/traces",
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_declared_length_over_the_limit_is_refused_before_the_body(daphne: Daphne) -> None:
    with _connect(daphne) as sock:
        started = time.monotonic()
        head = {"Content-Type": "application/x-protobuf", "Content-Length": "20971520"}
        sock.sendall(_head("/v1/traces", head) + b"x" * 100)
        status, body = _response(sock)
        assert status == 413
        assert time.monotonic() - started < BODY_TIMEOUT
        assert "exceeds 1000000 bytes" in json.loads(body)["message"]
    assert _ingest(daphne, protobuf_body(record(agent_run))) == 200


def test_a_chunked_body_is_cut_off_at_the_limit(daphne: Daphne) -> None:
    rss_before = _rss_kib(daphne.process.pid)
    sent = 0
    with _connect(daphne) as sock:
        head = {"Content-Type": "application/x-protobuf", "Transfer-Encoding": "chunked"}
        sock.sendall(_head("/v1/traces", head))
        chunk = b"x" * 65536
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        try:
            for _ in range(4 * 1024):  # up to 256 MiB, far past the limit
                sock.sendall(framed)
                sent += len(chunk)
        except OSError:
            pass  # the server closed the connection: what this test wants
        status, body = _response(sock)
    assert status == 413
    assert "exceeds 1000000 bytes" in json.loads(body)["message"]
    assert sent < 64 * 1024 * 1024
    # Nothing near the body's size was buffered.
    assert _rss_kib(daphne.process.pid) - rss_before < 50 * 1024
    assert _ingest(daphne, protobuf_body(record(agent_run))) == 200


def test_a_stalled_body_is_answered_408(daphne: Daphne) -> None:
    with _connect(daphne) as sock:
        started = time.monotonic()
        head = {"Content-Type": "application/x-protobuf", "Content-Length": "1000"}
        sock.sendall(_head("/v1/traces", head) + b"x" * 10)
        status, body = _response(sock)
        waited = time.monotonic() - started
    assert status == 408
    assert "not received within" in json.loads(body)["message"]
    assert BODY_TIMEOUT - 0.5 <= waited < BODY_TIMEOUT + 5
    assert _ingest(daphne, protobuf_body(record(agent_run))) == 200


def test_a_multipart_body_is_415_with_a_message(daphne: Daphne) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n--b--\r\n'
    with _connect(daphne) as sock:
        head = {
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(len(body)),
        }
        sock.sendall(_head("/v1/traces", head) + body)
        status, answer = _response(sock)
    assert status == 415
    assert "multipart/form-data" in json.loads(answer)["message"]


def test_expect_100_continue_over_the_limit_gets_only_the_413(daphne: Daphne) -> None:
    with _connect(daphne) as sock:
        head = {
            "Content-Type": "application/x-protobuf",
            "Content-Length": str(LIMIT + 1),
            "Expect": "100-continue",
        }
        sock.sendall(_head("/v1/traces", head))
        status, _ = _response(sock)
        assert status == 413
        sock.settimeout(2)
        rest = b""
        try:
            while chunk := sock.recv(65536):
                rest += chunk
        except OSError:
            pass
        assert b"100 Continue" not in rest
