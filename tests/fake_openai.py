"""A loopback OpenAI-compatible endpoint for tests.

Subclass ``Endpoint``, read the request with ``self.body()``, answer with ``self.send_json``
(any JSON) or ``self.chat`` (a chat completion's text); ``serve(Handler)`` runs it on a free
port of 127.0.0.1 and yields the base URL (``http://127.0.0.1:PORT/v1``)."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer


class Endpoint(BaseHTTPRequestHandler):
    def body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def send_json(self, payload: dict | None, status: int = 200) -> None:
        """``payload`` as JSON with ``status``; ``None``: the status alone, no body."""
        self.send_response(status)
        if payload is None:
            self.end_headers()
            return
        data = json.dumps(payload).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def chat(self, text: str, **extra) -> None:
        """A chat completion whose one choice says ``text``."""
        self.send_json({"choices": [{"message": {"content": text}, "finish_reason": "stop"}], **extra})

    def log_message(self, *args) -> None:  # quiet: pytest shows failures, not access logs
        pass


@contextmanager
def serve(handler: type[Endpoint]) -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
