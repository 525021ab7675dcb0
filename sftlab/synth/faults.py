"""A fault-injecting OpenAI-compatible server on loopback, for testing teacher robustness.

It answers ``POST /v1/chat/completions`` with ``respond(messages) -> str`` (None: a refusal,
sent as ``content: null`` the way OpenAI does) and, with the given probabilities (seeded), a
500, a 429, a response slower than the client's timeout, a truncated body, or a non-JSON body. Use it to check that a pipeline completes and that
an interrupted run resumes without duplicates.

    with FaultyServer(respond, error_rate=0.2, seed=0) as server:
        teacher = HTTPTeacher(TeacherConfig(base_url=server.base_url, timeout=0.5))
"""
from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

FAULTS = ("500", "429", "slow", "truncated", "not_json")


class FaultyServer:
    def __init__(self, respond: Callable[[list[dict]], str | None], *, error_rate: float = 0.2,
                 faults: tuple[str, ...] = FAULTS, slow_seconds: float = 1.0, seed: int = 0) -> None:
        self.respond, self.error_rate, self.faults = respond, error_rate, faults
        self.slow_seconds = slow_seconds
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {"ok": 0, **{f: 0 for f in faults}}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "FaultyServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _pick(self) -> str:
        with self.lock:
            fault = self.rng.choice(self.faults) if self.rng.random() < self.error_rate else "ok"
            self.counts[fault] += 1
            return fault

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, b'{"error": {"message": "not found"}}')
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fault = server._pick()
                if fault in ("500", "429"):
                    return self._send(int(fault), b'{"error": {"message": "injected"}}')
                if fault == "slow":
                    threading.Event().wait(server.slow_seconds)
                text = server.respond(body.get("messages", []))
                payload = json.dumps({
                    "id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                }).encode()
                if fault == "truncated":
                    return self._send(200, payload[: len(payload) // 2])
                if fault == "not_json":
                    return self._send(200, b"<html>upstream error</html>")
                self._send(200, payload)

            def _send(self, status: int, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

        return Handler
