"""A tiny HTTP worker for tests: answers every request 200 and appends `METHOD PATH` to a
file, so a test can see exactly which requests reached the worker.

    python tests/path_recorder.py PORT RECORD_FILE
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    port, record = int(sys.argv[1]), Path(sys.argv[2])

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            if self.path != "/health":
                with record.open("a") as f:
                    f.write(f"{self.command} {self.path}\n")
            body = json.dumps({"object": "list", "data": [], "path": self.path}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
